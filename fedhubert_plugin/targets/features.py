"""Frame features that k-means targets are made from: MFCC presets, or a HuBERT checkpoint's layer.

- ``hubert``: HuBERT iteration 1. Kaldi-compatible MFCC (13 coefficients, 25 ms window,
  10 ms hop, no energy) plus deltas and delta-deltas: 39 dims at 100 Hz, label rate 100.
- ``seed``: the original design. 13 MFCC, n_fft 400, 40 mel bands, hop 320, window 400,
  not centred: 13 dims at 50 Hz, label rate 50 (the model's own frame rate).
- ``checkpoint``: HuBERT iteration 2. The output of encoder layer L of a (global) HuBERT
  checkpoint, at the model's frame rate (50 Hz for every recipe here).

For MFCC, the frame count of an utterance of ``n`` samples is ``1 + (n - 400) // hop``: the count
fairseq's HuBERT dataset expects for that label rate (within its 0.1 s tolerance).
"""

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch
import torchaudio

from fedhubert_plugin.targets import FEATURES

WINDOW = 400


@dataclass(frozen=True)
class FeaturePreset:
    """How MFCC frames are computed, and the label rate their k-means labels have."""

    name: str
    dim: int
    hop: int
    threaded = True  # utterances may be featurized on several threads at once

    @property
    def label_rate(self) -> int:
        return 16_000 // self.hop

    @property
    def identity(self) -> str:
        """What the features depend on (a feature cache made with another identity is stale)."""
        return f"{self.name} MFCC, {self.dim} dims, hop {self.hop}"

    def num_frames(self, samples: int) -> int:
        """Frames (= labels) for an utterance of ``samples`` samples."""
        return max(0, 1 + (samples - WINDOW) // self.hop)

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        return mfcc(wav, self)


PRESETS: Dict[str, FeaturePreset] = {
    "hubert": FeaturePreset("hubert", dim=39, hop=160),
    "seed": FeaturePreset("seed", dim=13, hop=320),
}


_SEED_MFCC = torchaudio.transforms.MFCC(
    sample_rate=16_000,
    n_mfcc=13,
    melkwargs={"n_fft": 400, "n_mels": 40, "hop_length": 320, "win_length": WINDOW, "center": False},
)


@torch.no_grad()
def mfcc(wav: np.ndarray, preset: FeaturePreset) -> np.ndarray:
    """``(frames, dim)`` float32 features of 16 kHz mono float audio."""
    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
    if preset.name == "hubert":
        coeffs = torchaudio.compliance.kaldi.mfcc(x.view(1, -1), sample_frequency=16_000, use_energy=False).T
        deltas = torchaudio.functional.compute_deltas(coeffs)
        feats = torch.cat([coeffs, deltas, torchaudio.functional.compute_deltas(deltas)], dim=0).T
    else:
        feats = _SEED_MFCC(x).T
    return feats.contiguous().numpy()


class CheckpointFeatures:
    """Encoder layer ``layer`` (1-based) of a HuBERT checkpoint (either format), on the GPU when there is one.

    Utterances go through one at a time, as fairseq's ``dump_hubert_feature.py`` does: the
    conv extractor's group norm spans the whole utterance, so padding them into a batch
    would change their features.
    """

    threaded = False  # the model's forward pass uses torch's own threads

    def __init__(self, checkpoint: Union[str, Path], layer: int, device: Optional[str] = None):
        from fedhubert_plugin.checkpoints import load_hubert_model

        model, task_cfg = load_hubert_model(checkpoint)
        layers = len(model.encoder.layers)
        if not 1 <= layer <= layers:
            raise ValueError(f"--layer {layer}: {checkpoint} has encoder layers 1 to {layers}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.eval().to(self.device)
        self.layer, self.normalize = layer, bool(task_cfg.normalize)
        self.name = f"layer{layer}"
        stat = Path(checkpoint).stat()
        self.identity = (
            f"layer {layer} of {Path(checkpoint).resolve()} ({stat.st_size} bytes, mtime {stat.st_mtime_ns})"
        )
        self.dim = int(model.encoder.embedding_dim)
        self.convs = [(c[0].kernel_size[0], c[0].stride[0]) for c in model.feature_extractor.conv_layers]
        self.label_rate = 16_000 // int(np.prod([stride for _, stride in self.convs]))

    def num_frames(self, samples: int) -> int:
        """Frames (= labels) for an utterance of ``samples`` samples: the conv extractor's output length."""
        for kernel, stride in self.convs:
            samples = (samples - kernel) // stride + 1
        return max(0, samples)

    @torch.no_grad()
    def __call__(self, wav: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)).to(self.device).view(1, -1)
        if self.normalize:
            x = torch.nn.functional.layer_norm(x, x.shape)
        feats, _ = self.model.extract_features(x, padding_mask=None, mask=False, output_layer=self.layer)
        return feats[0].float().cpu().numpy()


FeatureExtractor = Union[FeaturePreset, CheckpointFeatures]


@functools.lru_cache(maxsize=2)
def feature_extractor(features: str, checkpoint: str = "", layer: int = 0) -> FeatureExtractor:
    """The extractor named by ``fedhubert prepare --features`` (a checkpoint's is loaded once per process)."""
    if features == "checkpoint":
        if not checkpoint or not layer:
            raise ValueError(
                "--features checkpoint needs --checkpoint CKPT (the iteration-1 global model) and --layer L"
            )
        return CheckpointFeatures(checkpoint, layer)
    if features not in PRESETS:
        raise ValueError(f"unknown --features {features!r}; choose one of {', '.join(FEATURES)}")
    return PRESETS[features]
