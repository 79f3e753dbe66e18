"""SUPERB upstream of a HuBERT pretrained with fedhubert: s3prl's own HuBERT expert on ``model.pt``.

Needs torch and s3prl only. ``model.pt`` (beside this file) is in s3prl's converted HuBERT
format; it holds plain containers and tensors, so torch reads it with ``weights_only=True``.
The hidden states are s3prl's HuBERT hooks: the input of every encoder layer and the encoder
output, 50 frames per second of 16 kHz audio (downsample rate 320).
"""

from pathlib import Path
from typing import Optional

from s3prl.upstream.hubert.expert import UpstreamExpert as S3prlHubertExpert

MODEL = Path(__file__).resolve().with_name("model.pt")


class UpstreamExpert(S3prlHubertExpert):
    """``UpstreamExpert(ckpt)``: ``ckpt`` defaults to the ``model.pt`` beside this file."""

    def __init__(self, ckpt: Optional[str] = None, model_config: Optional[str] = None, **kwargs):
        super().__init__(str(ckpt or MODEL), **kwargs)
