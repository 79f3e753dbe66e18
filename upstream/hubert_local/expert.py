"""s3prl upstream expert for fedhubert checkpoints.

It accepts every HuBERT checkpoint fedhubert writes: ``best_global_model.pt`` (s3prl's
converted format), the server's fairseq-format ``checkpoint_*.pt`` and checkpoints of
``fairseq-hydra-train``, for teachers and distilled students of any width and depth. The
file is read with ``weights_only=True`` and fedhubert's allow-list, converted in memory,
and handed to s3prl's own HuBERT expert, so the model, the hooks (the input of every
encoder layer plus the encoder output) and the forward pass are exactly s3prl's.
"""

import io
from pathlib import Path
from typing import Union

import torch
from s3prl.upstream.hubert.expert import UpstreamExpert as S3prlHubertExpert

from fedhubert_plugin.checkpoints import as_s3prl_state, load_checkpoint


class UpstreamExpert(S3prlHubertExpert):
    """s3prl's HuBERT expert on any fedhubert or fairseq HuBERT checkpoint (downsample rate 320)."""

    def __init__(self, ckpt: Union[str, Path], **kwargs):
        state = as_s3prl_state(load_checkpoint(ckpt), ckpt)
        # s3prl's expert reads its checkpoint with torch.load, which takes a file object too.
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        super().__init__(buffer, **kwargs)
