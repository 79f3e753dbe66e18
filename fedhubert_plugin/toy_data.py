"""Synthetic stand-ins for LibriSpeech and Speech Commands, spoken by espeak-ng.

``write_toy_data(out)`` writes

- ``out/LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` plus
  ``<speaker>-<chapter>.trans.txt``: 16 kHz mono FLAC, one espeak-ng voice per speaker
  (accent, variant, pitch and speed drawn from the seed), a train and a dev subset;
- ``out/alignments/{100hz,50hz}/<subset>.tsv``: every LibriSpeech-layout utterance's phone
  per frame, taken from the synthesizer itself (``synthesis``), in the format fairseq's
  ``examples/hubert/measure_teacher_quality.py`` reads (``<utterance id><TAB>ph,ph,...``),
  with as many frames as the k-means labels at that rate;
- ``out/speech_commands/{train,test}``: the Speech Commands layout that s3prl's
  ``speech_commands`` downstream reads (``<word>/<speaker>_nohash_<n>.wav``,
  ``_background_noise_/``, and test folders ``_unknown_`` and ``_silence_``).

The same seed gives the same files, byte for byte.
"""

import hashlib
import json
import logging
import math
import multiprocessing
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import soundfile as sf

from fedhubert_plugin.console import progress_bar
from fedhubert_plugin.synthesis import frame_phones, synthesizer

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
ALIGNMENT_HOPS = {"100hz": 160, "50hz": 320}  # label rate -> hop in samples: MFCC targets, and the model's frames
SECONDS_PER_WORD = 0.30  # measured: 760 sentences of 8-15 words, 40 toy voices, 43.2 min (for --minutes)
TRAIN_SUBSET = "train-clean-5"
DEV_SUBSET = "dev-clean-2"
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-029", "en-us-nyc", "en-gb-x-gbcwmd"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"]
COMMAND_WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
UNKNOWN_WORDS = ["bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow"]
VOCABULARY = (
    "a about after again air all along also an and another any are around as at away back be because been "
    "before below between both boy but by came can change children city come could country day did different "
    "do does down each earth end even every eye far father few find first follow food for form found four from "
    "get give go good great group had hand hard has have he head help her here high him his home house how "
    "important into is it just keep kind know land large last learn left let life light line little live long "
    "look made make man many may me mean men might mile more most mother mountain move much must my name near "
    "need never new next night no not now number of off often old on once one only open or other our out over "
    "own page paper part people picture place plant play point put question read right river run said same saw "
    "say school sea second see sentence set she should show side small so some something song sound spell "
    "start state still story study such take talk tell than that the their them then there these they thing "
    "think this those thought three through time to together too took tree try turn two under until up us use "
    "very walk want was watch water way we well went were what when where which while white who why will with "
    "word work world would write year you young"
).split()


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an espeak-ng voice with its pitch and speed."""

    accent: str
    variant: str
    pitch: int
    speed: int

    @property
    def name(self) -> str:
        return f"{self.accent}+{self.variant}"


@dataclass
class ToyDataSummary:
    """What ``write_toy_data`` wrote (also saved as ``toy_data.json``)."""

    librispeech_root: str
    speech_commands_root: str
    speech_commands_test_root: str
    train_utterances: int
    dev_utterances: int
    keyword_train_files: int
    keyword_test_files: int
    train_minutes: float
    alignments_root: str
    seed: int


def draw_voices(rng: np.random.Generator, count: int) -> List[Voice]:
    """``count`` distinct voices; accent and variant combinations never repeat."""
    combos = [(a, v) for a in ACCENTS for v in VARIANTS]
    if count > len(combos):
        raise ValueError(f"at most {len(combos)} distinct toy voices, asked for {count}")
    picked = rng.choice(len(combos), size=count, replace=False)
    return [Voice(*combos[i], pitch=int(rng.integers(25, 76)), speed=int(rng.integers(130, 191))) for i in picked]


def synthesize(voice: Voice, text: str, out_path: Path, sox_effects: Iterable[str] = ()) -> Dict[str, List[str]]:
    """Speak ``text`` with ``voice`` into a 16 kHz mono 16-bit file (format from the suffix); sox resamples.

    Returns the phone of every frame at each rate of ``ALIGNMENT_HOPS`` (of the written file;
    meaningful without ``sox_effects``, which move the audio).
    """
    speech = synthesizer().speak(voice.name, voice.pitch, voice.speed, text)
    raw = ["-t", "raw", "-r", str(speech.sample_rate), "-e", "signed-integer", "-b", "16", "-c", "1", "-"]
    subprocess.run(
        ["sox", "-R", *raw, "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out_path), *sox_effects],
        input=speech.samples.tobytes(),
        capture_output=True,
        check=True,
    )
    samples = sf.info(out_path).frames
    return {rate: frame_phones(speech.phones, speech.sample_rate, samples, hop) for rate, hop in ALIGNMENT_HOPS.items()}


def synthesize_job(job: Tuple[Voice, str, Path, Tuple[str, ...]]) -> Dict[str, List[str]]:
    """``synthesize`` of one job (a picklable entry point for the worker processes)."""
    return synthesize(*job)


def write_alignments(folder: Path, subset: str, paths: List[Path], alignments: List[Dict[str, List[str]]]) -> None:
    """``folder/<rate>/<subset>.tsv``: ``<utterance id><TAB>ph,ph,...`` per utterance, as fairseq reads them."""
    for rate in ALIGNMENT_HOPS:
        lines = [f"{path.stem}\t{','.join(aligned[rate])}\n" for path, aligned in zip(paths, alignments)]
        (folder / rate).mkdir(parents=True, exist_ok=True)
        (folder / rate / f"{subset}.tsv").write_text("".join(lines))


def utterances_for(minutes: float, speakers: int) -> int:
    """Sentences per speaker (8 to 15 words) that give about ``minutes`` of train audio."""
    return max(1, math.ceil(minutes * 60 / (speakers * 11.5 * SECONDS_PER_WORD)))


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


def librispeech_jobs(
    rng: np.random.Generator, root: Path, voices: List[Voice], speaker_ids: List[int], subset: str, utterances: int
) -> Tuple[List[Tuple[Voice, str, Path]], int]:
    """Synthesis jobs and transcript files for one LibriSpeech-layout subset."""
    jobs = []
    for voice, speaker in zip(voices, speaker_ids):
        chapter = int(rng.integers(10_000, 300_000))
        chapter_dir = root / subset / str(speaker) / str(chapter)
        chapter_dir.mkdir(parents=True, exist_ok=True)
        lines = []
        for utt in range(utterances):
            words = rng.choice(VOCABULARY, size=int(rng.integers(8, 16)))
            text = " ".join(words)
            utt_id = f"{speaker}-{chapter}-{utt:04d}"
            lines.append(f"{utt_id} {text.upper()}\n")
            jobs.append((voice, text, chapter_dir / f"{utt_id}.flac"))
        (chapter_dir / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    return jobs, len(jobs)


def keyword_jobs(
    root: Path, voices: List[Voice], speaker_ids: List[str], words: List[str], repeats: int
) -> List[Tuple[Voice, str, Path]]:
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


def write_toy_data(
    out: Path,
    *,
    speakers: int = 8,
    dev_speakers: int = 2,
    utterances_per_speaker: int = 6,
    minutes: Optional[float] = None,
    keyword_speakers: int = 6,
    keyword_repeats: int = 2,
    seed: int = 0,
    workers: int = 4,
    force: bool = False,
) -> ToyDataSummary:
    """Write the toy LibriSpeech and Speech Commands corpora, and the phone alignments, under ``out``.

    ``speakers`` train speakers and ``dev_speakers`` other ones each say
    ``utterances_per_speaker`` sentences (with ``minutes``: as many as make about that much
    train audio); ``keyword_speakers`` speakers (one of them in s3prl's valid split) say every
    keyword ``keyword_repeats`` times, and two more speakers make the test set. Refuses a
    non-empty ``out`` unless ``force``.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} is not empty; choose an empty folder or pass --force to replace it")
        shutil.rmtree(out)
    if keyword_speakers < 2:
        raise ValueError("keyword_speakers must be at least 2 (one for s3prl's train split, one for its valid split)")
    if minutes is not None:
        utterances_per_speaker = utterances_for(minutes, speakers)
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"{tool} is not installed; run `bash scripts/setup.sh` or `apt-get install espeak-ng sox`"
            )

    rng = np.random.default_rng(seed)
    test_speakers = 2
    voices = draw_voices(rng, speakers + dev_speakers + keyword_speakers + test_speakers)
    train_voices = voices[:speakers]
    dev_voices = voices[speakers : speakers + dev_speakers]
    kw_voices = voices[speakers + dev_speakers : -test_speakers]
    test_voices = voices[-test_speakers:]

    libri = out / "LibriSpeech"
    speaker_ids = [int(i) for i in rng.choice(np.arange(100, 9000), size=speakers + dev_speakers, replace=False)]
    jobs, n_train = librispeech_jobs(
        rng, libri, train_voices, speaker_ids[:speakers], TRAIN_SUBSET, utterances_per_speaker
    )
    dev_jobs, n_dev = librispeech_jobs(
        rng, libri, dev_voices, speaker_ids[speakers:], DEV_SUBSET, utterances_per_speaker
    )
    jobs += dev_jobs

    commands = out / "speech_commands"
    kw_ids = keyword_speaker_ids(rng, train=keyword_speakers - 1, valid=1)
    keyword_jobs_list = keyword_jobs(
        commands / "train", kw_voices, kw_ids, COMMAND_WORDS + UNKNOWN_WORDS, keyword_repeats
    )
    test_ids = [f"{int(rng.integers(0, 2**32)):08x}" for _ in range(test_speakers)]
    test_jobs = keyword_jobs(commands / "test", test_voices, test_ids, COMMAND_WORDS, 1)
    unknown_dir = commands / "test" / "_unknown_"
    unknown_dir.mkdir(parents=True, exist_ok=True)
    for voice, speaker_id in zip(test_voices, test_ids):
        for word in UNKNOWN_WORDS[:3]:
            test_jobs.append((voice, word, unknown_dir / f"{word}_{speaker_id}_nohash_0.wav"))
    one_second = ["pad", "0.1", "1", "trim", "0", "1"]
    all_jobs = [(v, t, p, ()) for v, t, p in jobs] + [
        (v, t, p, one_second) for v, t, p in keyword_jobs_list + test_jobs
    ]

    # one process per utterance: libespeak-ng carries state from one synthesis to the next (its voice
    # flutter and noise), so only a fresh process speaks the same bytes for the same seed, as its CLI does
    with multiprocessing.get_context("fork").Pool(workers, maxtasksperchild=1) as pool:
        aligned = list(
            progress_bar(pool.imap(synthesize_job, all_jobs), total=len(all_jobs), desc="toy-data", unit="file")
        )
    for subset, first, count in ((TRAIN_SUBSET, 0, n_train), (DEV_SUBSET, n_train, n_dev)):
        paths = [path for _, _, path in jobs[first : first + count]]
        write_alignments(out / "alignments", subset, paths, aligned[first : first + count])

    noise_dir = commands / "train" / "_background_noise_"
    noise_dir.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        write_noise(rng, noise_dir / f"noise_{i}.wav", seconds=5.0, level=0.05 * (i + 1))
    silence_dir = commands / "test" / "_silence_"
    silence_dir.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        write_noise(rng, silence_dir / f"silence_{i}.wav", seconds=1.0, level=0.02 * (i + 1))

    summary = ToyDataSummary(
        librispeech_root=str(libri),
        speech_commands_root=str(commands / "train"),
        speech_commands_test_root=str(commands / "test"),
        train_utterances=n_train,
        dev_utterances=n_dev,
        keyword_train_files=len(keyword_jobs_list) + 3,
        keyword_test_files=len(test_jobs) + 4,
        train_minutes=round(sum(sf.info(path).duration for _, _, path in jobs[:n_train]) / 60, 2),
        alignments_root=str(out / "alignments"),
        seed=seed,
    )
    (out / "toy_data.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    logger.info("toy data written to %s: %s", out, summary)
    return summary
