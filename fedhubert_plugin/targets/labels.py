"""A client's k-means label files: ``labels/{train,valid}.km``, ``dict.km.txt`` and ``labels.json``.

Features are computed from the client's own audio on first use and cached in its folder
(``features/``) until ``fedhubert prepare`` has written every client's labels, so that a
prepare resumed after a kill reuses the clients whose features were done. An utterance whose
audio does not decode is dropped from the client's manifest before any label is written,
and listed with the reason in ``labels/unusable.json`` (``fedhubert prepare`` reports it).
"""

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

import numpy as np

from fedhubert_plugin.checkpoints import cluster_dictionary
from fedhubert_plugin.data.manifest import read_manifest, write_manifest
from fedhubert_plugin.files import atomic_write, atomic_write_json
from fedhubert_plugin.targets.feature_files import FeatureFile, read_feature_file, write_features
from fedhubert_plugin.targets.features import FeatureExtractor
from fedhubert_plugin.targets.kmeans import nearest

logger = logging.getLogger(__name__)

FEATURES_DIR = "features"
UNUSABLE = "unusable.json"  # in labels/: utterances dropped because their audio does not decode
SPLITS = ("train", "valid")


def write_labels(path: Path, groups: Iterable[Tuple[np.ndarray, np.ndarray]]) -> None:
    """One line of space-separated cluster ids per utterance (fairseq's ``.km`` format), written as they come.

    ``groups`` yields (frames per utterance, those utterances' labels, concatenated).
    """

    def write(tmp: Path) -> None:
        with tmp.open("w") as f:
            for lengths, labels in groups:
                for utterance in np.split(labels, np.cumsum(lengths)[:-1]):
                    f.write(" ".join(map(str, utterance.tolist())) + "\n")

    atomic_write(path, write)


def write_dictionary(path: Path, n_clusters: int) -> None:
    """fairseq's ``dict.km.txt`` of the cluster ids ``0 .. n_clusters-1``."""
    atomic_write(path, lambda tmp: cluster_dictionary(n_clusters).save(str(tmp)))


def unusable_utterances(folder: Path) -> List[Dict[str, str]]:
    """The utterances this client's feature extraction dropped (path, split, reason)."""
    path = folder / "labels" / UNUSABLE
    return json.loads(path.read_text()) if path.is_file() else []


def drop_unusable(folder: Path, split: str, unusable: List[Dict[str, str]]) -> bool:
    """Remove ``unusable`` utterances from ``<split>.tsv`` and list them in ``labels/unusable.json``;
    whether the manifest changed."""
    if not unusable:
        return False
    manifest = folder / f"{split}.tsv"
    root, rows = read_manifest(manifest)
    bad = {row["path"] for row in unusable}
    kept = [(rel, samples) for rel, samples in rows if str(root / rel) not in bad]
    if len(kept) < len(rows):
        write_manifest(manifest, root, kept)
    listed = unusable_utterances(folder)
    listed_paths = {row["path"] for row in listed}
    new = [{**row, "split": split} for row in unusable if row["path"] not in listed_paths]
    if new:
        atomic_write_json(folder / "labels" / UNUSABLE, listed + new)
    return len(kept) < len(rows)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cached_features(folder: Path, split: str, extractor: FeatureExtractor, threads: int = 1) -> FeatureFile:
    """A client's features of one split, computed on first use (on ``threads`` threads) and kept until
    ``fedhubert prepare`` ends.

    The cache records the manifest and the extractor it was made from: a later run with the
    same ones (``prepare`` resumed after a kill) reuses it, any other recomputes it. Utterances
    whose audio does not decode are removed from ``<split>.tsv`` and added to ``labels/unusable.json``.
    """
    manifest = folder / f"{split}.tsv"
    frames_path = folder / FEATURES_DIR / f"{split}.{extractor.name}.f32"
    record_path = frames_path.with_suffix(".json")
    manifest_sha256 = file_sha256(manifest)
    record = json.loads(record_path.read_text()) if record_path.is_file() and frames_path.is_file() else {}
    fresh = record.get("extractor") != extractor.identity or manifest_sha256 not in record.get("manifests_sha256", [])
    if not fresh:
        features = read_feature_file(frames_path, extractor.dim)
    else:
        start = time.monotonic()
        features, unusable = write_features(manifest, extractor, frames_path, f"{folder.name} {split}", threads)
        seconds, hours = time.monotonic() - start, features.frames / extractor.label_rate / 3600
        logger.info(
            "%s %s: %.2f h of audio in %.0f s (%.1f h/min)",
            folder.name,
            split,
            hours,
            seconds,
            60 * hours / max(seconds, 1e-9),
        )
        record = {"extractor": extractor.identity, "manifests_sha256": [manifest_sha256], "unusable": unusable}
    rewritten = drop_unusable(folder, split, record["unusable"])
    if rewritten:  # the manifest as it is now also matches the cache
        record["manifests_sha256"] = sorted({*record["manifests_sha256"], file_sha256(manifest)})
    if fresh or rewritten:
        atomic_write_json(record_path, record)
    return features


def remove_cached_features(folder: Path) -> None:
    """Delete a client's feature cache (once its labels are written)."""
    shutil.rmtree(folder / FEATURES_DIR, ignore_errors=True)


def label_client(
    folder: Path, codebook: np.ndarray, extractor: FeatureExtractor, dictionary_size: int, threads: int = 1
) -> Dict[str, int]:
    """Write ``labels/{train,valid}.km`` and a ``dictionary_size`` ``labels/dict.km.txt``."""
    frames = {}
    for split in SPLITS:
        features = cached_features(folder, split, extractor, threads)
        groups = ((lengths, nearest(chunk, codebook)[0]) for lengths, chunk in features.utterance_groups())
        write_labels(folder / "labels" / f"{split}.km", groups)
        frames[split] = features.frames
    write_dictionary(folder / "labels" / "dict.km.txt", dictionary_size)
    return frames
