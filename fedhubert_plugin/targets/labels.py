"""A client's k-means label files: ``labels/{train,valid}.km``, ``dict.km.txt`` and ``labels.json``.

Features are computed from the client's own audio on first use, cached in its folder while
k-means runs (``features/``), and deleted once the labels are written.
"""

import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from fedhubert_plugin.checkpoints import cluster_dictionary
from fedhubert_plugin.files import atomic_save_array, atomic_write, atomic_write_text
from fedhubert_plugin.targets.features import FeatureExtractor, manifest_features
from fedhubert_plugin.targets.kmeans import nearest

FEATURES_DIR = "features"
SPLITS = ("train", "valid")


def write_labels(path: Path, labels: np.ndarray, lengths: np.ndarray) -> None:
    """One line of space-separated cluster ids per utterance (fairseq's ``.km`` format)."""
    lines: List[str] = []
    offset = 0
    for length in lengths:
        lines.append(" ".join(map(str, labels[offset : offset + length].tolist())))
        offset += int(length)
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_dictionary(path: Path, n_clusters: int) -> None:
    """fairseq's ``dict.km.txt`` of the cluster ids ``0 .. n_clusters-1``."""
    atomic_write(path, lambda tmp: cluster_dictionary(n_clusters).save(str(tmp)))


def cached_features(folder: Path, split: str, preset: FeatureExtractor) -> Tuple[np.ndarray, np.ndarray]:
    """A client's features of one split, computed on first use and kept until labelling."""
    feats_path = folder / FEATURES_DIR / f"{split}.{preset.name}.npy"
    lengths_path = folder / FEATURES_DIR / f"{split}.{preset.name}.lengths.npy"
    if not (feats_path.is_file() and lengths_path.is_file()):
        feats, lengths = manifest_features(folder / f"{split}.tsv", preset, desc=f"{folder.name} {split} {preset.name}")
        atomic_save_array(feats_path, feats)
        atomic_save_array(lengths_path, lengths)
    return np.load(feats_path, mmap_mode="r"), np.load(lengths_path)


def label_client(folder: Path, codebook: np.ndarray, preset: FeatureExtractor, dictionary_size: int) -> Dict[str, int]:
    """Write ``labels/{train,valid}.km`` and a ``dictionary_size`` ``labels/dict.km.txt``; drop the cached features."""
    frames = {}
    for split in SPLITS:
        feats, lengths = cached_features(folder, split, preset)
        labels, _ = nearest(feats, codebook)
        write_labels(folder / "labels" / f"{split}.km", labels, lengths)
        frames[split] = int(lengths.sum())
    write_dictionary(folder / "labels" / "dict.km.txt", dictionary_size)
    shutil.rmtree(folder / FEATURES_DIR, ignore_errors=True)
    return frames
