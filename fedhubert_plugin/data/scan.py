"""Scan LibriSpeech subsets into an utterance table, deciding on purpose about every bad file.

Only each ``.flac``'s header is read here: a file that is empty, whose header is unreadable,
that is shorter than ``min_seconds`` or sampled below 16 kHz is skipped; a stereo file or one
sampled above 16 kHz is decoded and down-mixed / resampled into ``converted_dir``. Each
decision is in the report with the file and the reason, so nothing is dropped silently.
Audio is decoded once, where its features are made (``targets.feature_files``): a file whose
data turns out corrupted is dropped and reported there.
"""

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
import torch
import torchaudio

from fedhubert_plugin.console import progress_bar
from fedhubert_plugin.files import atomic_write

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
UTTERANCE_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)$")


@dataclass(frozen=True)
class Utterance:
    """One usable utterance: 16 kHz mono audio at ``path``."""

    id: str
    speaker: str
    chapter: str
    subset: str
    path: str
    samples: int

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE


@dataclass
class ScanReport:
    """What the scan skipped, converted or noticed, each with the file and the reason."""

    skipped: List[Dict[str, str]] = field(default_factory=list)
    converted: List[Dict[str, str]] = field(default_factory=list)
    chapters_without_transcript: List[str] = field(default_factory=list)
    ignored_files: List[str] = field(default_factory=list)


def resample_mono(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """Down-mix ``(samples, channels)`` audio to mono and resample it to 16 kHz."""
    mono = torch.from_numpy(wav.mean(axis=1))
    if sample_rate != SAMPLE_RATE:
        mono = torchaudio.functional.resample(mono, sample_rate, SAMPLE_RATE)
    return mono.numpy()


def convert(flac: Path, to: Path) -> Tuple[int, Dict[str, str]]:
    """Write ``flac`` down-mixed to mono and resampled to 16 kHz at ``to``: its samples and the conversion record."""
    wav, sample_rate = sf.read(flac, dtype="float32", always_2d=True)
    reasons = []
    if wav.shape[1] != 1:
        reasons.append(f"down-mixed {wav.shape[1]} channels to mono")
    if sample_rate != SAMPLE_RATE:
        reasons.append(f"resampled {sample_rate} Hz to 16 kHz")
    mono = resample_mono(wav, sample_rate)
    atomic_write(to, lambda tmp: sf.write(tmp, mono, SAMPLE_RATE, format="FLAC", subtype="PCM_16"))
    return len(mono), {"path": str(flac), "to": str(to), "reason": ", ".join(reasons)}


def inspect_file(
    flac: Path, root: Path, converted_dir: Path, min_seconds: float
) -> Tuple[Optional[Utterance], Optional[Dict[str, str]], Optional[Dict[str, str]]]:
    """Read one file's header: (utterance or None, skip record or None, conversion record or None)."""

    def skip(reason: str):
        return None, {"path": str(flac), "reason": reason}, None

    match = UTTERANCE_NAME.match(flac.stem)
    if not match:
        return skip("name is not <speaker>-<chapter>-<utterance>.flac")
    if flac.stat().st_size == 0:
        return skip("empty file (0 bytes)")
    try:
        info = sf.info(str(flac))
    except Exception as err:  # libsndfile reports corruption with several exception types
        return skip(f"unreadable or corrupted: {err}")
    if info.frames == 0:
        return skip("no audio samples")
    path, samples, conversion = flac, info.frames, None
    if info.samplerate != SAMPLE_RATE or info.channels != 1:
        if info.samplerate < SAMPLE_RATE:
            return skip(f"sampled at {info.samplerate} Hz, below 16 kHz: upsampling cannot restore the missing band")
        path = converted_dir / flac.relative_to(root)
        try:
            samples, conversion = convert(flac, path)
        except Exception as err:  # the header was readable, the audio is not
            return skip(f"unreadable or corrupted: {err}")
    if samples / SAMPLE_RATE < min_seconds:
        return skip(f"too short: {samples / SAMPLE_RATE:.2f} s < {min_seconds} s (--min-seconds)")
    speaker, chapter, _ = match.groups()
    subset = flac.relative_to(root).parts[0]
    return Utterance(flac.stem, speaker, chapter, subset, str(path), samples), None, conversion


def find_flacs(root: Path, subsets: Sequence[str], report: ScanReport) -> List[Path]:
    """Every ``.flac`` of the subsets, in order; chapters without a transcript and other files go to ``report``."""
    flacs: List[Path] = []
    for subset in subsets:
        subset_dir = root / subset
        if not subset_dir.is_dir():
            raise FileNotFoundError(f"subset folder {subset_dir} not found; check --librispeech-root and --subsets")
        for chapter_dir in sorted(p for p in subset_dir.glob("*/*") if p.is_dir()):
            if not (chapter_dir / f"{chapter_dir.parent.name}-{chapter_dir.name}.trans.txt").is_file():
                report.chapters_without_transcript.append(str(chapter_dir))
        for path in sorted(p for p in subset_dir.rglob("*") if p.is_file()):
            if path.suffix == ".flac":
                flacs.append(path)
            elif not path.name.endswith(".trans.txt"):
                report.ignored_files.append(str(path))
    if not flacs:
        raise FileNotFoundError(f"no .flac files under {root} for subsets {list(subsets)}")
    return flacs


def scan_librispeech(
    root: Path,
    subsets: Sequence[str],
    converted_dir: Path,
    min_seconds: float = 2.0,
    workers: int = 2,
) -> Tuple[List[Utterance], ScanReport]:
    """Scan ``root/<subset>/<speaker>/<chapter>/*.flac`` for each subset, in parallel."""
    root, report = Path(root), ScanReport()
    flacs = find_flacs(root, subsets, report)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(
            progress_bar(
                pool.map(lambda f: inspect_file(f, root, converted_dir, min_seconds), flacs),
                total=len(flacs),
                desc="scan",
                unit="file",
            )
        )
    utterances = []
    for utterance, skipped, converted in results:
        if utterance is not None:
            utterances.append(utterance)
        if skipped is not None:
            report.skipped.append(skipped)
            logger.warning("skipping %s: %s", skipped["path"], skipped["reason"])
        if converted is not None:
            report.converted.append(converted)
    for chapter in report.chapters_without_transcript:
        logger.info("chapter %s has no transcript (fine for pretraining)", chapter)
    logger.info(
        "scan: %d usable utterances, %d skipped, %d converted",
        len(utterances),
        len(report.skipped),
        len(report.converted),
    )
    return utterances, report
