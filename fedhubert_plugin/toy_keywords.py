"""The toy Speech Commands corpus: which speaker says which keyword, and the noise and silence files.

The layout s3prl's ``speech_commands`` downstream reads: ``train/<word>/<speaker>_nohash_<n>.wav``
with ``_background_noise_/``, and ``test/`` with ``_unknown_`` and ``_silence_``. Speaker ids are
drawn so that s3prl's hash puts the ones we mean in its train and valid splits.
"""

import hashlib
from pathlib import Path
from typing import Any, List, Tuple

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16_000
TEST_SPEAKERS = 2
COMMAND_WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
UNKNOWN_WORDS = ["bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow"]
Job = Tuple[Any, str, Path]  # a voice, what it says, where the audio goes


def keyword_speaker_bucket(speaker_hash: str) -> str:
    """The split s3prl's speech_commands gives a speaker id: 'valid', 'test' or 'train'.

    s3prl hashes the part before ``_nohash_`` with sha1 and buckets it by percentage
    (< 10 valid, < 20 discarded as test, else train), as the Speech Commands README says.
    """
    max_per_class = 2**27 - 1
    percent = (int(hashlib.sha1(speaker_hash.encode()).hexdigest(), 16) % (max_per_class + 1)) * (100.0 / max_per_class)
    return "valid" if percent < 10 else "test" if percent < 20 else "train"


def keyword_speaker_ids(rng: np.random.Generator, train: int, valid: int) -> List[str]:
    """8-hex-digit speaker ids, ``valid`` of them in s3prl's valid bucket, ``train`` in its train bucket."""
    wanted = {"train": train, "valid": valid}
    ids: List[str] = []
    while any(wanted.values()):
        candidate = f"{int(rng.integers(0, 2**32)):08x}"
        bucket = keyword_speaker_bucket(candidate)
        if wanted.get(bucket, 0) > 0 and candidate not in ids:
            wanted[bucket] -= 1
            ids.append(candidate)
    return ids


def keyword_jobs(root: Path, voices: List[Any], speaker_ids: List[str], words: List[str], repeats: int) -> List[Job]:
    """Synthesis jobs for keyword files ``root/<word>/<id>_nohash_<n>.wav``."""
    jobs = []
    for voice, speaker_id in zip(voices, speaker_ids):
        for word in words:
            (root / word).mkdir(parents=True, exist_ok=True)
            for n in range(repeats):
                jobs.append((voice, word, root / word / f"{speaker_id}_nohash_{n}.wav"))
    return jobs


def write_noise(rng: np.random.Generator, path: Path, seconds: float, level: float) -> None:
    """White noise with a slow random envelope, as a 16-bit 16 kHz wav."""
    samples = int(seconds * SAMPLE_RATE)
    envelope = np.interp(np.arange(samples), np.linspace(0, samples, 8), rng.uniform(0.3, 1.0, 8))
    noise = rng.standard_normal(samples) * envelope * level
    sf.write(path, np.clip(noise, -1, 1).astype(np.float32), SAMPLE_RATE, subtype="PCM_16")


def speech_commands_jobs(
    rng: np.random.Generator, commands: Path, train_voices: List[Any], test_voices: List[Any], repeats: int
) -> Tuple[List[Job], List[Job]]:
    """The synthesis jobs of the keyword train set (every word ``repeats`` times per speaker, the last speaker in
    s3prl's valid split) and of the test set (each command word once, three unknown words per speaker)."""
    ids = keyword_speaker_ids(rng, train=len(train_voices) - 1, valid=1)
    train = keyword_jobs(commands / "train", train_voices, ids, COMMAND_WORDS + UNKNOWN_WORDS, repeats)
    test_ids = [f"{int(rng.integers(0, 2**32)):08x}" for _ in range(len(test_voices))]
    test = keyword_jobs(commands / "test", test_voices, test_ids, COMMAND_WORDS, 1)
    unknown_dir = commands / "test" / "_unknown_"
    unknown_dir.mkdir(parents=True, exist_ok=True)
    for voice, speaker_id in zip(test_voices, test_ids):
        for word in UNKNOWN_WORDS[:3]:
            test.append((voice, word, unknown_dir / f"{word}_{speaker_id}_nohash_0.wav"))
    return train, test


def write_noise_files(rng: np.random.Generator, commands: Path) -> Tuple[int, int]:
    """Background noise for training and silence clips for the test set; how many of each."""
    noise_dir = commands / "train" / "_background_noise_"
    noise_dir.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        write_noise(rng, noise_dir / f"noise_{i}.wav", seconds=5.0, level=0.05 * (i + 1))
    silence_dir = commands / "test" / "_silence_"
    silence_dir.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        write_noise(rng, silence_dir / f"silence_{i}.wav", seconds=1.0, level=0.02 * (i + 1))
    return 3, 4
