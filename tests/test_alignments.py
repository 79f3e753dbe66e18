"""Phone alignments of the toy corpus (from the synthesizer itself) and label quality measured as fairseq does."""

import json
import subprocess
import sys
from pathlib import Path

import fairseq
import numpy as np
import pytest
import soundfile as sf
from praatio import textgrid

from fedhubert_plugin.cli import main
from fedhubert_plugin.synthesis import SILENCE, synthesizer
from fedhubert_plugin.targets.quality import alignment_files, read_alignments
from fedhubert_plugin.toy_data import ALIGNMENT_HOPS, DEV_SUBSET, TRAIN_SUBSET

FAIRSEQ_SCRIPT = Path(fairseq.__file__).parent / "examples" / "hubert" / "measure_teacher_quality.py"


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


def fairseq_measures(client: Path, toy_corpus: Path) -> dict:
    """fairseq's measure_teacher_quality.py on one client's labels: its printed table as numbers."""
    cmd = [
        sys.executable,
        str(FAIRSEQ_SCRIPT),
        str(client),
        str(client / "labels"),
        "km",
        "--lab_sets",
        "train",
        "valid",
        "--phn_dir",
        str(toy_corpus / "alignments" / "100hz"),
        "--phn_sets",
        TRAIN_SUBSET,
        DEV_SUBSET,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    header, _, values = proc.stdout.strip().splitlines()[-3:]
    names = header.split("  ")
    return dict(zip([n.strip() for n in names if n.strip()], values.split()))


@pytest.mark.e2e
def test_label_quality_gives_fairseqs_figures(prepared, toy_corpus, tmp_path, capsys):
    client = prepared / "clients" / "client_001"
    out = tmp_path / "quality.json"
    args = ["label-quality", "--alignments", str(toy_corpus / "alignments"), "--json", str(out)]
    assert (
        main(
            args
            + [
                "--labels",
                str(client / "train.tsv"),
                str(client / "labels" / "train.km"),
                "--labels",
                str(client / "valid.tsv"),
                str(client / "labels" / "valid.km"),
            ]
        )
        == 0
    )
    ours, theirs = json.loads(out.read_text()), fairseq_measures(client, toy_corpus)
    assert ours["phone_purity"] == pytest.approx(float(theirs["ref pur"]), abs=6e-5)
    assert ours["cluster_purity"] == pytest.approx(float(theirs["hyp pur"]), abs=6e-5)
    assert ours["pnmi"] == pytest.approx(float(theirs["MI/H(ref)"]), abs=6e-5)
    assert ours["frame_difference"] == 0 and 0.1 < ours["pnmi"] < 1
    assert main(args + ["--data-root", str(prepared)]) == 0  # every client: the federated k-means labels
    assert "| phone purity | cluster purity | PNMI |" in capsys.readouterr().out
    whole = json.loads(out.read_text())
    # prepare skipped the corrupted file; the empty one was never spoken, so it has no alignment
    assert whole["utterances"] == 59 and whole["aligned_without_labels"] == 1


def write_textgrids(alignments: Path, out: Path, rate: int) -> None:
    """The alignments in Montreal Forced Aligner's layout: <speaker>/<utterance>.TextGrid, silence unlabelled."""
    for line in alignments.read_text().splitlines():
        uid, phones = line.split("\t")
        phones, intervals, start = phones.split(","), [], 0
        for end in range(1, len(phones) + 1):
            if end == len(phones) or phones[end] != phones[start]:
                if phones[start] != SILENCE:
                    intervals.append((start / rate, end / rate, phones[start]))
                start = end
        grid = textgrid.Textgrid()
        grid.addTier(textgrid.IntervalTier("words", [], 0, len(phones) / rate))
        grid.addTier(textgrid.IntervalTier("phones", intervals, 0, len(phones) / rate))
        speaker = out / uid.split("-")[0]
        speaker.mkdir(parents=True, exist_ok=True)
        grid.save(str(speaker / f"{uid}.TextGrid"), format="long_textgrid", includeBlankSpaces=True)


@pytest.mark.e2e
def test_label_quality_reads_montreal_forced_aligner_textgrids(prepared, toy_corpus, tmp_path):
    grids = tmp_path / "mfa"
    for subset in (TRAIN_SUBSET, DEV_SUBSET):
        write_textgrids(toy_corpus / "alignments" / "100hz" / f"{subset}.tsv", grids, 100)
    figures = {}
    for name, alignments in (("tsv", toy_corpus / "alignments"), ("textgrid", grids)):
        out = tmp_path / f"{name}.json"
        assert (
            main(
                ["label-quality", "--data-root", str(prepared), "--alignments", str(alignments)] + ["--json", str(out)]
            )
            == 0
        )
        figures[name] = json.loads(out.read_text())
    assert figures["textgrid"] == figures["tsv"] and figures["tsv"]["utterances"] == 59
    (grids / "1234").mkdir()
    words_only = textgrid.Textgrid()
    words_only.addTier(textgrid.IntervalTier("words", [(0.0, 0.5, "hello")], 0, 1.0))
    words_only.save(str(grids / "1234" / "bad.TextGrid"), format="long_textgrid", includeBlankSpaces=True)
    with pytest.raises(ValueError, match=r"bad.TextGrid has no phones tier"):
        read_alignments(alignment_files(grids, 100), 100)
