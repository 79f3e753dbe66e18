"""fairseq criterions of fedhubert (registered on import)."""

from fedhubert_plugin.criterions import hubert_distillation  # noqa: F401
