"""Phone alignments of the toy corpus, taken from the synthesizer itself."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fedhubert_plugin.synthesis import SILENCE, synthesizer
from fedhubert_plugin.toy_data import ALIGNMENT_HOPS, DEV_SUBSET, TRAIN_SUBSET


def alignments(toy_corpus: Path, rate: str, subset: str) -> dict:
    lines = (toy_corpus / "alignments" / rate / f"{subset}.tsv").read_text().splitlines()
    return {uid: phones.split(",") for uid, phones in (line.split("\t") for line in lines)}


def audio(toy_corpus: Path, subset: str, uid: str) -> np.ndarray:
    speaker, chapter, _ = uid.split("-")
    return sf.read(toy_corpus / "LibriSpeech" / subset / speaker / chapter / f"{uid}.flac")[0]


@pytest.mark.parametrize(
    "voice, text",
    [
        ("en-gb-scotland+f3", "the river was long and the mountain high"),
        ("en-us+m2", "school children study the picture of a white house"),
    ],
)
def test_the_synthesizers_phones_are_espeak_ngs_own_transcription(voice, text):
    speech = synthesizer().speak(voice, 50, 160, text)
    ipa = subprocess.run(
        ["espeak-ng", "-q", "--ipa", "-v", voice, "-p", "50", "-s", "160", text],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "".join(phone for _, phone in speech.phones if phone != SILENCE) == "".join(
        c for c in ipa if c not in "ˈˌ _\n"
    )
    starts = [start for start, _ in speech.phones]
    assert starts == sorted(starts) and 0 <= starts[0] and starts[-1] <= len(speech.samples)


def test_alignments_have_the_label_frame_counts_at_both_rates(toy_corpus):
    for subset in (TRAIN_SUBSET, DEV_SUBSET):
        flacs = {p.stem for p in (toy_corpus / "LibriSpeech" / subset).rglob("*.flac")}
        for rate, hop in ALIGNMENT_HOPS.items():
            aligned = alignments(toy_corpus, rate, subset)
            assert set(aligned) == flacs
            for uid, phones in aligned.items():
                assert len(phones) == 1 + (len(audio(toy_corpus, subset, uid)) - 400) // hop  # the labels' count
    phones = {p for uid_phones in alignments(toy_corpus, "100hz", TRAIN_SUBSET).values() for p in uid_phones}
    assert len(phones) > 30 and SILENCE in phones


def test_alignments_line_up_with_the_audio(toy_corpus):
    """Frames aligned to silence are quiet, frames aligned to phones are not (median energy, whole corpus)."""
    energy, silent = [], []
    for uid, phones in alignments(toy_corpus, "100hz", TRAIN_SUBSET).items():
        wav = audio(toy_corpus, TRAIN_SUBSET, uid)
        energy += [float(np.sum(wav[i * 160 : i * 160 + 400] ** 2)) for i in range(len(phones))]
        silent += [phone == SILENCE for phone in phones]
    energy, silent = np.array(energy), np.array(silent)
    assert np.median(energy[~silent]) > 50 * np.median(energy[silent])
