"""fairseq tasks registered by the plugin."""

from fedhubert_plugin.tasks.fed_hubert_pretraining import (  # noqa: F401
    FedHubertPretrainingConfig,
    FedHubertPretrainingTask,
)
