"""A toy corpus for SUPERB speaker diarization (SD): two-speaker recordings mixed from espeak-ng utterances.

``diarization/{train,dev,test}/`` are the Kaldi data folders that s3prl's ``diarization``
downstream reads (``wav.scp``, ``segments``, ``utt2spk``, ``spk2utt``, ``reco2dur``) with the
reference ``rttm`` that DER is scored against, as SUPERB's LibriSpeech mixtures come. Each
recording is two speakers of its split taking turns, every turn starting ``OVERLAP`` seconds
before the previous one ends. ``wav/`` holds the mixed recordings.
"""

import shutil
from pathlib import Path
from typing import Dict, List

import numpy as np
import soundfile as sf

from fedhubert_plugin.toy_data import SAMPLE_RATE, VOCABULARY, draw_voices, synthesize_all

RECORDINGS = {"train": 8, "dev": 2, "test": 2}
SPEAKERS = {"train": 4, "dev": 2, "test": 2}  # each split's own
TURNS = 4  # utterances per recording, the two speakers alternating
OVERLAP = 0.3  # seconds


def write_toy_diarization(root: Path, rng: np.random.Generator, workers: int) -> int:
    """Write the three Kaldi folders and their recordings under ``root``; the number of recordings."""
    voices = draw_voices(rng, sum(SPEAKERS.values()))
    plan: Dict[str, List[List[tuple]]] = {}
    jobs, first = [], 0
    for split, count in RECORDINGS.items():
        pool = list(range(first, first + SPEAKERS[split]))
        first += SPEAKERS[split]
        (root / "pieces" / split).mkdir(parents=True, exist_ok=True)
        plan[split] = []
        for rec in range(count):
            pair = rng.choice(pool, size=2, replace=False)
            turns = []
            for turn in range(TURNS):
                speaker = int(pair[turn % 2])
                piece = root / "pieces" / split / f"{split}{rec:02d}_{turn}.wav"
                jobs.append((voices[speaker], " ".join(rng.choice(VOCABULARY, size=4)), piece, ()))
                turns.append((f"spk{speaker:02d}", piece))
            plan[split].append(turns)
    synthesize_all(jobs, workers)
    for split, recordings in plan.items():
        write_split(root, split, recordings)
    shutil.rmtree(root / "pieces")
    return sum(RECORDINGS.values())


def write_split(root: Path, split: str, recordings: List[List[tuple]]) -> None:
    """Mix each recording's turns into ``root/wav/<rec>.wav`` and write the split's Kaldi folder."""
    (root / "wav").mkdir(parents=True, exist_ok=True)
    files: Dict[str, List[str]] = {name: [] for name in ("wav.scp", "segments", "utt2spk", "reco2dur", "rttm")}
    speakers: Dict[str, List[str]] = {}
    for index, turns in enumerate(recordings):
        rec = f"{split}{index:02d}"
        audio, start, placed = np.zeros(0, dtype=np.float32), 0.0, []
        for turn, (speaker, piece) in enumerate(turns):
            samples, _ = sf.read(piece, dtype="float32")
            at = int(start * SAMPLE_RATE)
            audio = np.pad(audio, (0, max(0, at + len(samples) - len(audio))))
            audio[at : at + len(samples)] += samples
            end = start + len(samples) / SAMPLE_RATE
            placed.append((f"{speaker}-{rec}-{turn}", speaker, start, end))
            start = max(0.0, end - OVERLAP)
        sf.write(root / "wav" / f"{rec}.wav", audio / max(1.0, float(np.abs(audio).max())), SAMPLE_RATE)
        files["wav.scp"].append(f"{rec} {root / 'wav' / f'{rec}.wav'}")
        files["reco2dur"].append(f"{rec} {len(audio) / SAMPLE_RATE:.4f}")
        for utt, speaker, begin, end in placed:
            files["segments"].append(f"{utt} {rec} {begin:.4f} {end:.4f}")
            files["utt2spk"].append(f"{utt} {speaker}")
            files["rttm"].append(f"SPEAKER {rec} 1 {begin:.4f} {end - begin:.4f} <NA> <NA> {speaker} <NA> <NA>")
            speakers.setdefault(speaker, []).append(utt)
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        (folder / name).write_text("".join(f"{line}\n" for line in sorted(lines)))
    (folder / "spk2utt").write_text("".join(f"{s} {' '.join(u)}\n" for s, u in sorted(speakers.items())))
