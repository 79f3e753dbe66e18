"""Toy corpora for more SUPERB tasks, spoken by espeak-ng (``fedhubert toy-data --superb``).

- ``fluent_speech_commands/``: the layout of Fluent Speech Commands that s3prl's
  ``fluent_commands`` downstream (intent classification, IC) reads: ``data/{train,valid,test}_data.csv``
  (``path,speakerId,transcription,action,object,location``) and ``wavs/speakers/<speaker>/<speaker>-<n>.wav``.
  Every command of a small grammar of home commands, each split spoken by its own speakers, as in
  the real corpus.
- ``voxceleb1/``: the layout of VoxCeleb1 that s3prl's ``voxceleb1`` downstream (speaker
  identification, SID) reads: ``dev/wav/id1000N/<video>/<n>.wav`` and ``iden_split.txt``
  (``1`` train, ``2`` dev, ``3`` test), every speaker in all three splits. For speaker
  verification (ASV, s3prl's ``sv_voxceleb1``): ``test/wav/id2000N/...`` of other speakers and the
  trial lists ``veri_test.txt`` (every pair of test files: ``1`` same speaker, ``0`` not) and
  ``veri_dev.txt`` (pairs of dev files), in the format of VoxCeleb1's ``veri_test.txt``.
- ``iemocap/``: IEMOCAP's layout for s3prl's ``emotion`` downstream (ER), five sessions of two speakers
  speaking neutral, happy, angry and sad sentences (espeak-ng's pitch, speed and loudness moved per
  emotion), and ``meta_data/`` (the five folds) written by s3prl's own ``IEMOCAP_preprocess.py``.
- ``diarization/``: two-speaker mixtures in s3prl's Kaldi folders for SD (``toy_diarization``).
- ``pr/``: for s3prl's ``ctc`` downstream (PR) beside a LibriSpeech layout: ``lexicon.txt`` (the toy
  words' phones, espeak-ng's en-us IPA without stress marks) and ``phoneme.txt`` (``text.vocab_file``).
- ``asr/``: what s3prl's ``asr`` downstream (speech recognition, ASR) needs beside a LibriSpeech
  layout and that its pip package lacks: the length tables of s3prl's
  ``preprocess/generate_len_for_bucket.py`` (``len_for_bucket/<subset>.csv``) and a character
  dictionary (``char.dict``: letters, apostrophe and ``|`` between words, with their counts).

Its own random stream (from the seed), so the LibriSpeech and Speech Commands toy corpora are
the same bytes with or without it.
"""

import csv
import logging
import subprocess
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf

from fedhubert_plugin.configs import ToyDataConfig
from fedhubert_plugin.toy_data import (
    DEV_SUBSET,
    TRAIN_SUBSET,
    VOCABULARY,
    Voice,
    draw_voices,
    synthesize_all,
    write_toy_data,
)
from fedhubert_plugin.toy_diarization import write_toy_diarization

logger = logging.getLogger(__name__)

# (what is said, action) for each object; locations are said after it ("in the kitchen") or not at all
ACTIONS = {
    "lights": [("turn on", "activate"), ("turn off", "deactivate")],
    "music": [("turn on", "activate"), ("turn off", "deactivate")],
    "heat": [("turn up", "increase"), ("turn down", "decrease")],
    "volume": [("turn up", "increase"), ("turn down", "decrease")],
}
LOCATIONS = ["none", "kitchen", "bedroom"]
INTENT_SPEAKERS = {"train": 3, "valid": 1, "test": 1}
SID_SPEAKERS = 4
SID_UTTERANCES = {1: 6, 2: 2, 3: 2}  # per speaker: iden_split.txt's train, dev and test
ASV_TEST_SPEAKERS, ASV_TEST_UTTERANCES = 4, 4
ER_SESSIONS = 5  # IEMOCAP's: one fold each
# IEMOCAP's four SUPERB classes: espeak-ng pitch and speed moved from the speaker's own, and sox effects
EMOTIONS = {"neu": (0, 0, ()), "hap": (20, 25, ()), "ang": (10, 45, ("gain", "6")), "sad": (-20, -45, ())}
ER_UTTERANCES = 3  # per speaker and emotion
Job = Tuple[Voice, str, Path, Tuple[str, ...]]


@dataclass
class ToySuperbSummary:
    """Where the toy SUPERB corpora are: s3prl's data paths of each task."""

    fluent_commands_root: str  # IC: config.downstream_expert.datarc.file_path
    voxceleb1_root: str  # SID: config.downstream_expert.datarc.file_path
    voxceleb1_iden_split: str  # SID: config.downstream_expert.datarc.meta_data
    iemocap_root: str  # ER: config.downstream_expert.datarc.root; its meta_data/ is datarc.meta_data
    diarization_root: str  # SD: its train/, dev/ and test/ are loaderrc.{train,dev,test}_dir
    pr_files: str  # PR: phoneme.txt (text.vocab_file) and lexicon.txt (corpus.lexicon)
    asr_files: str  # ASR: len_for_bucket/ (bucket_file) and char.dict (dict_path)
    intent_utterances: int
    speaker_utterances: int
    emotion_utterances: int
    diarization_recordings: int

    def describe(self) -> str:
        """Where each corpus is and how much it holds (what `fedhubert toy-data --superb` prints)."""
        return (
            f"SUPERB IC root:       {self.fluent_commands_root} ({self.intent_utterances} files)\n"
            f"SUPERB SID root:      {self.voxceleb1_root} ({self.speaker_utterances} files)\n"
            f"SUPERB ER root:       {self.iemocap_root} ({self.emotion_utterances} files, meta_data/)\n"
            f"SUPERB SD root:       {self.diarization_root} ({self.diarization_recordings} recordings)\n"
            f"SUPERB PR files:      {self.pr_files} (phoneme.txt, lexicon.txt)\n"
            f"SUPERB ASR files:     {self.asr_files} (length tables, char.dict)"
        )


def commands() -> List[Tuple[str, str, str, str]]:
    """Every command of the grammar: (transcription, action, object, location)."""
    said = []
    for obj, actions in ACTIONS.items():
        for words, action in actions:
            for location in LOCATIONS:
                where = "" if location == "none" else f" in the {location}"
                said.append((f"{words} the {obj}{where}", action, obj, location))
    return said


def fluent_commands_jobs(root: Path, voices: List[Voice]) -> List[Job]:
    """Synthesis jobs of the Fluent Speech Commands layout, and its three csv files."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    jobs, first = [], 0
    for split, count in INTENT_SPEAKERS.items():
        rows = []
        for speaker, voice in enumerate(voices[first : first + count], start=first):
            name = f"speaker{speaker:02d}"
            folder = root / "wavs" / "speakers" / name
            folder.mkdir(parents=True, exist_ok=True)
            for n, (text, action, obj, location) in enumerate(commands()):
                path = folder / f"{name}-{n:03d}.wav"  # s3prl names each prediction by the file's stem
                jobs.append((voice, text, path, ()))
                rows.append([str(path.relative_to(root)), name, text, action, obj, location])
        first += count
        with open(root / "data" / f"{split}_data.csv", "w", newline="") as out:
            table = csv.writer(out)
            table.writerow(["path", "speakerId", "transcription", "action", "object", "location"])
            table.writerows(rows)
    return jobs


def voxceleb1_jobs(rng: np.random.Generator, root: Path, voices: List[Voice]) -> List[Job]:
    """Synthesis jobs of the VoxCeleb1 layout (one video per speaker), and ``iden_split.txt``."""
    jobs, split_lines = [], []
    for n, voice in enumerate(voices):
        video = f"v{int(rng.integers(0, 16**10)):010x}"
        relative = Path(f"id{10001 + n}") / video
        (root / "dev" / "wav" / relative).mkdir(parents=True, exist_ok=True)
        index = 1
        for split, count in SID_UTTERANCES.items():
            for _ in range(count):
                wav = relative / f"{index:05d}.wav"
                jobs.append((voice, " ".join(rng.choice(VOCABULARY, size=6)), root / "dev" / "wav" / wav, ()))
                split_lines.append(f"{split} {wav}\n")
                index += 1
    (root / "iden_split.txt").write_text("".join(split_lines))
    return jobs


def trial_list(files: List[Path], out: Path) -> None:
    """``out``: every pair of ``files`` (``<speaker>/<video>/<n>.wav``) as ``1`` (same speaker) or ``0``, as
    VoxCeleb1's ``veri_test.txt`` lists its trials."""
    pairs = [(a, b) for i, a in enumerate(files) for b in files[i + 1 :]]
    out.write_text("".join(f"{int(a.parts[0] == b.parts[0])} {a} {b}\n" for a, b in pairs))


def verification_jobs(rng: np.random.Generator, root: Path, voices: List[Voice], identified: List[Job]) -> List[Job]:
    """Synthesis jobs of VoxCeleb1's ``test/wav`` (``voices``) and both trial lists (dev: the first two files of
    each speaker of ``identified``, the SID jobs)."""
    jobs, tested = [], []
    for n, voice in enumerate(voices):
        relative = Path(f"id{20001 + n}") / f"v{int(rng.integers(0, 16**10)):010x}"
        (root / "test" / "wav" / relative).mkdir(parents=True, exist_ok=True)
        for index in range(1, ASV_TEST_UTTERANCES + 1):
            tested.append(relative / f"{index:05d}.wav")
            jobs.append((voice, " ".join(rng.choice(VOCABULARY, size=6)), root / "test" / "wav" / tested[-1], ()))
    trial_list(tested, root / "veri_test.txt")
    dev = [job[2].relative_to(root / "dev" / "wav") for job in identified if job[2].stem in ("00001", "00002")]
    trial_list(dev, root / "veri_dev.txt")
    return jobs


def iemocap_jobs(rng: np.random.Generator, root: Path, voices: List[Voice]) -> List[Job]:
    """Synthesis jobs of the IEMOCAP layout (a female and a male speaker per session, one dialog each) and each
    dialog's ``EmoEvaluation`` file."""
    jobs = []
    for index, voice in enumerate(voices):
        session, gender = index // 2 + 1, "FM"[index % 2]
        dialog = f"Ses{session:02d}{gender}_impro01"
        wavs = root / f"Session{session}" / "sentences" / "wav" / dialog
        labels = root / f"Session{session}" / "dialog" / "EmoEvaluation"
        wavs.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        lines = []
        for emotion, (pitch, speed, effects) in EMOTIONS.items():
            moved = replace(voice, pitch=min(99, max(0, voice.pitch + pitch)), speed=voice.speed + speed)
            for _ in range(ER_UTTERANCES):
                turn = f"{dialog}_{gender}{len(lines):03d}"
                jobs.append((moved, " ".join(rng.choice(VOCABULARY, size=5)), wavs / f"{turn}.wav", effects))
                lines.append(
                    f"[{len(lines):.4f} - {len(lines) + 1:.4f}]\t{turn}\t{emotion}\t[2.5000, 2.5000, 2.5000]\n"
                )
        (labels / f"{dialog}.txt").write_text("".join(lines))
    return jobs


def write_asr_files(libri_root: Path, subsets: Sequence[str], out: Path) -> None:
    """``out/len_for_bucket/<subset>.csv`` (``file_path,length,label``: the path under ``libri_root``, samples)
    for each subset, and ``out/char.dict`` of the first subset's transcripts, as s3prl's asr downstream reads them."""
    (out / "len_for_bucket").mkdir(parents=True, exist_ok=True)
    characters: Counter = Counter()
    for index, subset in enumerate(subsets):
        flacs = sorted((Path(libri_root) / subset).rglob("*.flac"))
        if not flacs:
            raise FileNotFoundError(f"{Path(libri_root) / subset} holds no .flac files: no ASR length table for it")
        with open(out / "len_for_bucket" / f"{subset}.csv", "w", newline="") as table:
            rows = csv.writer(table)
            rows.writerow(["file_path", "length", "label"])
            rows.writerows([flac.relative_to(libri_root), sf.info(flac).frames, ""] for flac in flacs)
        if index == 0:
            for transcripts in (Path(libri_root) / subset).rglob("*.trans.txt"):
                for line in transcripts.read_text().splitlines():
                    characters.update(" ".join(line.split()[1:]).upper().replace(" ", "|") + "|")
    (out / "char.dict").write_text("".join(f"{char} {count}\n" for char, count in characters.most_common()))


def transcript_words(libri_root: Path, subsets: Sequence[str]) -> List[str]:
    """Every word of the subsets' transcripts, sorted."""
    return sorted(
        {
            word
            for subset in subsets
            for transcripts in (Path(libri_root) / subset).rglob("*.trans.txt")
            for line in transcripts.read_text().splitlines()
            for word in line.split()[1:]
        }
    )


def write_phone_lexicon(libri_root: Path, subsets: Sequence[str], out: Path) -> None:
    """``out/lexicon.txt`` (``WORD PHONE ...``) of the subsets' words from espeak-ng (en-us IPA, stress marks
    dropped) and ``out/phoneme.txt``, a phone a line, as s3prl's libriphone reader takes them."""
    words = transcript_words(libri_root, subsets)
    spoken = subprocess.run(  # lower case: espeak-ng spells an upper-case word such as US letter by letter
        ["espeak-ng", "-q", "--ipa", "--sep= ", "-v", "en-us"],
        input="\n".join(word.lower() for word in words) + "\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    phones = [line.replace("ˈ", "").replace("ˌ", "").split() for line in spoken if line.strip()]
    if len(phones) != len(words) or not all(phones):
        raise RuntimeError(f"espeak-ng gave {len(phones)} pronunciations for {len(words)} words of {libri_root}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "lexicon.txt").write_text("".join(f"{w} {' '.join(p)}\n" for w, p in zip(words, phones)))
    (out / "phoneme.txt").write_text("".join(f"{phone}\n" for phone in sorted({q for p in phones for q in p})))


def write_toy_superb_data(
    out: Path, seed: int = 0, workers: int = 4, librispeech_root: Optional[Path] = None
) -> ToySuperbSummary:
    """Write the toy IC and SID corpora under ``out`` (next to the other toy corpora), and the ASR files of the toy
    LibriSpeech (``librispeech_root``, default ``out/LibriSpeech``): train on its train subset, dev and test on its
    dev subset."""
    rng = np.random.default_rng([seed, 28])  # a stream of its own: the other toy corpora stay as they are
    voices = draw_voices(rng, sum(INTENT_SPEAKERS.values()) + SID_SPEAKERS)
    intent = fluent_commands_jobs(Path(out) / "fluent_speech_commands", voices[: sum(INTENT_SPEAKERS.values())])
    speaker = voxceleb1_jobs(rng, Path(out) / "voxceleb1", voices[sum(INTENT_SPEAKERS.values()) :])
    emotion_rng = np.random.default_rng([seed, 28, 1])  # drawn after the others: IC and SID stay as they were
    emotion = iemocap_jobs(emotion_rng, Path(out) / "iemocap", draw_voices(emotion_rng, 2 * ER_SESSIONS))
    verify_rng = np.random.default_rng([seed, 28, 2])
    identified = {voice.name for voice in voices[sum(INTENT_SPEAKERS.values()) :]}
    unheard = [v for v in draw_voices(verify_rng, ASV_TEST_SPEAKERS + SID_SPEAKERS) if v.name not in identified]
    verify = verification_jobs(verify_rng, Path(out) / "voxceleb1", unheard[:ASV_TEST_SPEAKERS], speaker)
    synthesize_all(intent + speaker + emotion + verify, workers)
    from s3prl.downstream.emotion import IEMOCAP_preprocess  # s3prl's own folds: meta_data/Session<n>/*.json

    IEMOCAP_preprocess.main(str(Path(out) / "iemocap"))
    recordings = write_toy_diarization(Path(out) / "diarization", np.random.default_rng([seed, 28, 3]), workers)
    libri_root = Path(librispeech_root or Path(out) / "LibriSpeech")
    write_asr_files(libri_root, [TRAIN_SUBSET, DEV_SUBSET], Path(out) / "asr")
    write_phone_lexicon(libri_root, [TRAIN_SUBSET, DEV_SUBSET], Path(out) / "pr")
    summary = ToySuperbSummary(
        fluent_commands_root=str(Path(out) / "fluent_speech_commands"),
        voxceleb1_root=str(Path(out) / "voxceleb1"),
        voxceleb1_iden_split=str(Path(out) / "voxceleb1" / "iden_split.txt"),
        iemocap_root=str(Path(out) / "iemocap"),
        diarization_root=str(Path(out) / "diarization"),
        pr_files=str(Path(out) / "pr"),
        asr_files=str(Path(out) / "asr"),
        intent_utterances=len(intent),
        speaker_utterances=len(speaker) + len(verify),
        emotion_utterances=len(emotion),
        diarization_recordings=recordings,
    )
    logger.info("toy SUPERB data written to %s: %s", out, summary)
    return summary


def write_toy_corpora(cfg: ToyDataConfig) -> str:
    """What ``fedhubert toy-data`` writes: the LibriSpeech-layout and keyword corpora, and SUPERB's with
    ``cfg.superb``; their descriptions."""
    options = asdict(cfg)
    superb = options.pop("superb")
    described = [write_toy_data(**options).describe()]
    if superb:
        described.append(write_toy_superb_data(cfg.out, cfg.seed, cfg.workers).describe())
    return "\n".join(described)
