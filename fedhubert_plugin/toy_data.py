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

import json
import logging
import math
import multiprocessing
import shutil
import subprocess
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import soundfile as sf

from fedhubert_plugin.console import progress_bar
from fedhubert_plugin.synthesis import frame_phones, synthesizer
from fedhubert_plugin.toy_keywords import (
    TEST_SPEAKERS,
    speech_commands_jobs,
    write_noise_files,
)

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
ALIGNMENT_HOPS = {"100hz": 160, "50hz": 320}  # label rate -> hop in samples: MFCC targets, and the model's frames
SECONDS_PER_WORD = 0.30  # measured: 760 sentences of 8-15 words, 40 toy voices, 43.2 min (for --minutes)
TRAIN_SUBSET = "train-clean-5"
DEV_SUBSET = "dev-clean-2"
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-029", "en-us-nyc", "en-gb-x-gbcwmd"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"]
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

    def describe(self) -> str:
        """Where each corpus is and how much it holds, a line each (what `fedhubert toy-data` prints)."""
        return "\n".join(
            [
                f"LibriSpeech root:     {self.librispeech_root} "
                f"({self.train_utterances} train, {self.dev_utterances} dev utterances)",
                f"Phone alignments:     {self.alignments_root}/{{100hz,50hz}} "
                f"({self.train_minutes} min of train audio)",
                f"Speech Commands root: {self.speech_commands_root} ({self.keyword_train_files} files)",
                f"Speech Commands test: {self.speech_commands_test_root} ({self.keyword_test_files} files)",
            ]
        )


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


def librispeech_subsets(
    rng: np.random.Generator, libri: Path, train_voices: List[Voice], dev_voices: List[Voice], utterances: int
) -> Tuple[List[Tuple[Voice, str, Path]], int, int]:
    """Synthesis jobs and transcripts of the train subset, then the dev subset; how many utterances each has."""
    speakers = len(train_voices)
    ids = [int(i) for i in rng.choice(np.arange(100, 9000), size=speakers + len(dev_voices), replace=False)]
    jobs, n_train = librispeech_jobs(rng, libri, train_voices, ids[:speakers], TRAIN_SUBSET, utterances)
    dev_jobs, n_dev = librispeech_jobs(rng, libri, dev_voices, ids[speakers:], DEV_SUBSET, utterances)
    return jobs + dev_jobs, n_train, n_dev


def empty_folder(out: Path, force: bool) -> Path:
    """``out``, emptied when ``force``; raise when it holds files otherwise, or when espeak-ng or sox is missing."""
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} is not empty; choose an empty folder or pass --force to replace it")
        shutil.rmtree(out)
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"{tool} is not installed; run `bash scripts/setup.sh` or `apt-get install espeak-ng sox`"
            )
    return out


def synthesize_all(jobs: List[Tuple[Voice, str, Path, Tuple[str, ...]]], workers: int) -> List[Dict[str, List[str]]]:
    """Every job's audio and phone alignment, ``workers`` at a time.

    One process per utterance: libespeak-ng carries state from one synthesis to the next (its voice
    flutter and noise), so only a fresh process speaks the same bytes for the same seed, as its CLI does.
    They fork from this process when it runs no other thread (the fastest start); otherwise from a server
    process that has imported this module, since a fork of a process running threads (a Ray driver's, a gRPC
    channel's) took twice the time per utterance.
    """
    context = multiprocessing.get_context("fork" if threading.active_count() == 1 else "forkserver")
    if context.get_start_method() == "forkserver":
        context.set_forkserver_preload([__name__])
    with context.Pool(workers, maxtasksperchild=1) as pool:
        return list(progress_bar(pool.imap(synthesize_job, jobs), total=len(jobs), desc="toy-data", unit="file"))


def write_summary(
    out: Path, train_jobs: List[Tuple[Voice, str, Path]], dev_utterances: int, keyword_files: Tuple[int, int], seed: int
) -> ToyDataSummary:
    """``out/toy_data.json``: where each corpus is, how much it holds, the seed."""
    commands = out / "speech_commands"
    summary = ToyDataSummary(
        librispeech_root=str(out / "LibriSpeech"),
        speech_commands_root=str(commands / "train"),
        speech_commands_test_root=str(commands / "test"),
        train_utterances=len(train_jobs),
        dev_utterances=dev_utterances,
        keyword_train_files=keyword_files[0],
        keyword_test_files=keyword_files[1],
        train_minutes=round(sum(sf.info(path).duration for _, _, path in train_jobs) / 60, 2),
        alignments_root=str(out / "alignments"),
        seed=seed,
    )
    (out / "toy_data.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    logger.info("toy data written to %s: %s", out, summary)
    return summary


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
    out = empty_folder(Path(out), force)
    if keyword_speakers < 2:
        raise ValueError("keyword_speakers must be at least 2 (one for s3prl's train split, one for its valid split)")
    if minutes is not None:
        utterances_per_speaker = utterances_for(minutes, speakers)

    rng = np.random.default_rng(seed)
    voices = draw_voices(rng, speakers + dev_speakers + keyword_speakers + TEST_SPEAKERS)
    train_voices, dev_voices = voices[:speakers], voices[speakers : speakers + dev_speakers]
    kw_voices, test_voices = voices[speakers + dev_speakers : -TEST_SPEAKERS], voices[-TEST_SPEAKERS:]

    jobs, n_train, n_dev = librispeech_subsets(
        rng, out / "LibriSpeech", train_voices, dev_voices, utterances_per_speaker
    )

    commands = out / "speech_commands"
    keyword_train, keyword_test = speech_commands_jobs(rng, commands, kw_voices, test_voices, keyword_repeats)
    one_second = ["pad", "0.1", "1", "trim", "0", "1"]
    all_jobs = [(v, t, p, ()) for v, t, p in jobs] + [(v, t, p, one_second) for v, t, p in keyword_train + keyword_test]

    aligned = synthesize_all(all_jobs, workers)
    for subset, first, count in ((TRAIN_SUBSET, 0, n_train), (DEV_SUBSET, n_train, n_dev)):
        paths = [path for _, _, path in jobs[first : first + count]]
        write_alignments(out / "alignments", subset, paths, aligned[first : first + count])
    noise_files, silence_files = write_noise_files(rng, commands)
    keyword_files = (len(keyword_train) + noise_files, len(keyword_test) + silence_files)
    return write_summary(out, jobs[:n_train], n_dev, keyword_files, seed)
