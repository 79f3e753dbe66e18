"""fairseq models of fedhubert (registered on import)."""

from fedhubert_plugin.models import fed_hubert_ctc  # noqa: F401
