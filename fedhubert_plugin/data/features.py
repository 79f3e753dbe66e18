"""MFCC features with torchaudio, in the two presets k-means targets are made from.

- ``hubert``: HuBERT iteration 1. Kaldi-compatible MFCC (13 coefficients, 25 ms window,
  10 ms hop, no energy) plus deltas and delta-deltas: 39 dims at 100 Hz, label rate 100.
- ``seed``: the original design. 13 MFCC, n_fft 400, 40 mel bands, hop 320, window 400,
  not centred: 13 dims at 50 Hz, label rate 50 (the model's own frame rate).

The frame count of an utterance of ``n`` samples is ``1 + (n - 400) // hop``: the count
fairseq's HuBERT dataset expects for that label rate (within its 0.1 s tolerance).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import soundfile as sf
import torch
import torchaudio
from tqdm import tqdm

WINDOW = 400


@dataclass(frozen=True)
class FeaturePreset:
    """How MFCC frames are computed, and the label rate their k-means labels have."""

    name: str
    dim: int
    hop: int

    @property
    def label_rate(self) -> int:
        return 16_000 // self.hop


PRESETS: Dict[str, FeaturePreset] = {
    "hubert": FeaturePreset("hubert", dim=39, hop=160),
    "seed": FeaturePreset("seed", dim=13, hop=320),
}


def num_frames(samples: int, preset: FeaturePreset) -> int:
    """Frames (= labels) for an utterance of ``samples`` samples."""
    return max(0, 1 + (samples - WINDOW) // preset.hop)


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


def read_manifest(manifest: Path) -> Tuple[Path, List[Tuple[str, int]]]:
    """The audio root and the (relative path, samples) rows of a fairseq manifest."""
    lines = Path(manifest).read_text().splitlines()
    rows = [(rel, int(samples)) for rel, samples in (line.split("\t") for line in lines[1:] if line)]
    return Path(lines[0]), rows


def manifest_features(manifest: Path, preset: FeaturePreset, desc: str = "mfcc") -> Tuple[np.ndarray, np.ndarray]:
    """Features of every utterance of a manifest, concatenated, and frames per utterance."""
    root, rows = read_manifest(manifest)
    lengths = np.array([num_frames(samples, preset) for _, samples in rows], dtype=np.int64)
    feats = np.empty((int(lengths.sum()), preset.dim), dtype=np.float32)
    offset = 0
    for (rel, samples), length in zip(tqdm(rows, desc=desc, unit="utt", leave=False), lengths):
        wav, _ = sf.read(root / rel, dtype="float32")
        if len(wav) != samples:
            raise ValueError(f"{root / rel} has {len(wav)} samples but {manifest} says {samples}; re-run `fedhubert prepare`")
        utt_feats = mfcc(wav, preset)
        if len(utt_feats) != length:
            raise RuntimeError(f"{root / rel}: {len(utt_feats)} MFCC frames, expected {length}")
        feats[offset : offset + length] = utt_feats
        offset += length
    return feats, lengths
