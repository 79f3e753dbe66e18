"""`fedhubert probe`: linear phone accuracy and k-means PNMI per layer, MFCC baseline, random-init twin."""

import json
from pathlib import Path

import numpy as np
import pytest

from fedhubert_plugin.cli import main
from fedhubert_plugin.export import export_initial
from fedhubert_plugin.linear_probe import subsample
from fedhubert_plugin.speaker_probe import halves
from fedhubert_plugin.toy_data import DEV_SUBSET, TRAIN_SUBSET
from tests.helpers import TINY


@pytest.mark.e2e
def test_probe_scores_every_layer_against_mfcc_and_a_random_init_twin(toy_corpus, tmp_path, capsys):
    checkpoint = export_initial(TINY, tmp_path / "tiny.pt", n_clusters=100, label_rate=100)
    args = [
        "probe",
        "--checkpoint",
        f"tiny={checkpoint}",
        "--librispeech-root",
        str(toy_corpus / "LibriSpeech"),
        "--alignments",
        str(toy_corpus / "alignments"),
        "--train-subset",
        TRAIN_SUBSET,
        "--test-subset",
        DEV_SUBSET,
        "--random-init",
        "--train-frames",
        "3000",  # of about 9000: MFCC is still far above chance
        "--out",
        str(tmp_path / "probe"),
    ]
    assert main(args) == 0
    written = json.loads((tmp_path / "probe" / "probe.json").read_text())
    results = {r["name"]: r["layers"] for r in written}
    assert list(results) == ["MFCC", "tiny", "tiny (random init)"]
    assert len(results["MFCC"]) == 1 and len(results["tiny"]) == 3  # the encoder's input and its 2 layers
    phones = {
        p
        for line in (toy_corpus / "alignments" / "100hz" / f"{DEV_SUBSET}.tsv").read_text().splitlines()
        for p in line.split("\t")[1].split(",")
    }
    mfcc = results["MFCC"][0]
    assert mfcc["phone_accuracy"] > 5 / len(phones) and 0.2 < mfcc["pnmi"] < 1  # far above chance on new speakers
    for scores in results.values():
        assert all(0 <= s[key] <= 1 for s in scores for key in ("phone_accuracy", "pnmi", "speaker_accuracy"))
    speakers = {path.name for path in (toy_corpus / "LibriSpeech" / DEV_SUBSET).iterdir()}
    assert mfcc["speaker_accuracy"] > 1 / len(speakers) + 0.2  # MFCC frames tell the held-out speakers apart
    assert (tmp_path / "probe" / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the best layer, and the best transformer layer: the most accurate of those after at least one transformer
    # layer (s3prl's hidden_states[0] is the encoder's input, the conv front end); MFCC has none
    table, printed = (tmp_path / "probe" / "probe.md").read_text(), capsys.readouterr().out
    assert table in printed and "| MFCC | 0 |" in table and table.count("| — | — | — |") == 1
    for result in written:
        best = max(result["layers"], key=lambda s: s["phone_accuracy"])
        assert result["best_layer"] == best["layer"]
        transformer = [s for s in result["layers"] if s["layer"] >= 1]
        if not transformer:
            assert result["name"] == "MFCC" and result["best_transformer_layer"] is None
            continue
        top = max(transformer, key=lambda s: s["phone_accuracy"])
        assert result["best_transformer_layer"] == top["layer"] >= 1
        assert top["phone_accuracy"] <= best["phone_accuracy"]
        row = f"| {top['layer']} | {top['phone_accuracy']:.3f} | {top['pnmi']:.3f} |"
        speaker = max(result["layers"], key=lambda s: s["speaker_accuracy"])
        row += f" {speaker['speaker_accuracy']:.3f} ({speaker['layer']}) |"
        assert any(line.startswith(f"| {result['name']} |") and line.endswith(row) for line in table.splitlines())


def test_the_probe_fits_on_a_seeded_subset_of_frames_with_their_own_phones():
    frames = (np.arange(100.0)[:, None], [f"p{i}" for i in range(100)])
    features, phones = subsample(frames, 30, seed=3)
    assert len(features) == len(phones) == 30 and phones == [f"p{int(f)}" for f in features[:, 0]]
    assert np.array_equal(features, subsample(frames, 30, seed=3)[0])
    assert not np.array_equal(features, subsample(frames, 30, seed=4)[0])
    assert subsample(frames, 0, seed=3) is frames and subsample(frames, 100, seed=3) is frames


def test_the_speaker_probe_fits_and_scores_on_different_utterances_of_every_speaker():
    audio = [Path(f"{speaker}-1-{n:04d}.flac") for n in range(3) for speaker in ("19", "26")]
    fit, score = halves(audio)
    assert [audio[i].name for i in fit] == ["19-1-0000.flac", "19-1-0002.flac", "26-1-0000.flac", "26-1-0002.flac"]
    assert [audio[i].name for i in score] == ["19-1-0001.flac", "26-1-0001.flac"]
