"""A split's features on disk, written and read in bounded memory.

Layout: ``<name>.f32`` holds float32 frames row after row (``dim`` columns), and
``<name>.lengths.npy`` the frames per utterance. Reading goes through plain file reads, chunk
by chunk, so a process's memory does not grow with the corpus (a memory map would count
every page it touched).

Each utterance is decoded exactly once, here: audio that cannot be decoded, or that decodes
to fewer samples than the manifest (the scan read only its header) is not written, and is
returned with the reason so that the caller can drop it from the manifest and report it.
"""

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Deque, Dict, Iterable, Iterator, List, Optional, Tuple, TypeVar

import numpy as np
import soundfile as sf

from fedhubert_plugin.console import progress_bar
from fedhubert_plugin.data.manifest import ManifestRow, read_manifest
from fedhubert_plugin.files import atomic_save_array, atomic_write
from fedhubert_plugin.targets.features import FeatureExtractor

CHUNK_FRAMES = 65_536  # frames read at once (10 MB of 39-dim MFCC)
T, R = TypeVar("T"), TypeVar("R")


def decode(path: Path, samples: int) -> Tuple[Optional[np.ndarray], str]:
    """The audio at ``path`` as float32, or None and why it cannot be used (the manifest says ``samples``)."""
    try:
        wav, _ = sf.read(path, dtype="float32")
    except Exception as err:  # libsndfile reports corruption with several exception types
        return None, f"unreadable or corrupted: {err}"
    if len(wav) != samples:
        return None, f"truncated or corrupted: decoded {len(wav)} samples where its header says {samples}"
    return wav, ""


def in_order(work: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """``work`` applied to each item on ``threads`` threads, results in order, at most ``4 * threads`` pending."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: Deque = deque()
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) >= 4 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def utterance_features(
    manifest: Path, extractor: FeatureExtractor, desc: str = "features", threads: int = 1
) -> Iterator[Tuple[ManifestRow, Optional[np.ndarray], str]]:
    """Each manifest row with its ``(frames, dim)`` features, or with None and why its audio is unusable.

    Audio is decoded and featurized on ``threads`` threads (decoding and torch release the GIL)
    when the extractor allows it.
    """
    root, rows = read_manifest(manifest)

    def featurize(row: ManifestRow) -> Tuple[ManifestRow, Optional[np.ndarray], str]:
        rel, samples = row
        wav, reason = decode(root / rel, samples)
        if wav is None:
            return row, None, reason
        feats = extractor(wav)
        expected = extractor.num_frames(samples)
        if len(feats) != expected:
            raise RuntimeError(f"{root / rel}: {len(feats)} {extractor.name} frames, expected {expected}")
        return row, feats, ""

    results = in_order(featurize, rows, threads if extractor.threaded else 1)
    yield from progress_bar(results, total=len(rows), desc=desc, unit="utt", leave=False)


@dataclass
class FeatureFile:
    """Features of one split on disk: ``frames_path`` (float32 rows of ``dim``) and frames per utterance."""

    frames_path: Path
    dim: int
    lengths: np.ndarray

    @property
    def frames(self) -> int:
        return int(self.lengths.sum())

    def utterance_groups(self, max_frames: int = CHUNK_FRAMES) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Consecutive utterances, about ``max_frames`` frames at a time: (their lengths, their frames)."""
        with self.frames_path.open("rb") as f:
            start = 0
            while start < len(self.lengths):
                stop = start + 1
                total = int(self.lengths[start])
                while stop < len(self.lengths) and total + self.lengths[stop] <= max_frames:
                    total += int(self.lengths[stop])
                    stop += 1
                frames = np.fromfile(f, dtype=np.float32, count=total * self.dim).reshape(total, self.dim)
                yield self.lengths[start:stop], frames
                start = stop

    def chunks(self, max_frames: int = CHUNK_FRAMES) -> Iterator[np.ndarray]:
        """All frames, about ``max_frames`` at a time."""
        for _, frames in self.utterance_groups(max_frames):
            yield frames

    def sample(self, count: int, seed: int) -> np.ndarray:
        """About ``count`` frames drawn uniformly without replacement (all of them when there are fewer)."""
        keep = min(1.0, count / max(1, self.frames))
        rng = np.random.default_rng(seed)
        return np.concatenate([chunk[rng.random(len(chunk)) < keep] for chunk in self.chunks()])


def write_features(
    manifest: Path, extractor: FeatureExtractor, frames_path: Path, desc: str = "features", threads: int = 1
) -> Tuple[FeatureFile, List[Dict[str, str]]]:
    """Extract and store a manifest's features: the file, and the utterances left out with the reasons."""
    root, _ = read_manifest(manifest)
    unusable: List[Dict[str, str]] = []
    lengths: List[int] = []

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            for row, feats, reason in utterance_features(manifest, extractor, desc, threads):
                if feats is None:
                    unusable.append({"path": str(root / row[0]), "reason": reason})
                    continue
                f.write(np.ascontiguousarray(feats, dtype=np.float32).tobytes())
                lengths.append(len(feats))

    atomic_write(frames_path, write)
    lengths_array = np.array(lengths, dtype=np.int64)
    atomic_save_array(lengths_path(frames_path), lengths_array)
    return FeatureFile(frames_path, extractor.dim, lengths_array), unusable


def lengths_path(frames_path: Path) -> Path:
    """Where the frames per utterance of ``frames_path`` are kept."""
    return frames_path.with_suffix(".lengths.npy")


def read_feature_file(frames_path: Path, dim: int) -> FeatureFile:
    """A feature file written by :func:`write_features`."""
    return FeatureFile(frames_path, dim, np.load(lengths_path(frames_path)))
