"""torch.hub entry of the ``hubert_local`` upstream (s3prl's hubconf convention)."""

from pathlib import Path
from typing import Union

from .expert import UpstreamExpert


def hubert_local(ckpt: Union[str, Path], *args, **kwargs) -> UpstreamExpert:
    """HuBERT upstream from a local fedhubert checkpoint (s3prl or fairseq format, teacher or student).

    ``ckpt``: ``SAVE/server/best_global_model.pt``, ``SAVE/server/checkpoint_best.pt`` or any
    ``checkpoint_*.pt`` of ``fairseq-hydra-train`` with a HuBERT model.
    """
    return UpstreamExpert(ckpt, **kwargs)
