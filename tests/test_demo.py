"""`fedhubert demo` at its smallest size: every phase runs and the report holds real numbers."""

import json
import logging
import re

import pytest

from fedhubert_plugin.cli import main
from fedhubert_plugin.console import QUIET_ENV, QUIET_LOGGERS
from tests.helpers import metric_lines

SECTIONS = [
    "Data and clients",
    "Federated pretraining",
    "Pretraining against the reference curves",
    "Federated distillation",
    "Federated fine-tuning (CTC)",
    "Downstream: SUPERB keyword spotting and phoneme recognition",
    "What pretraining bought: phone probe",
    "Time per phase",
]


def table_rows(section: str):
    """The data rows of the markdown tables in ``section`` as lists of cells."""
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("|")
        and not line.startswith("| ---")
        and not re.match(r"\| (client|round|upstream|phase|features) \|", line)
    ]


@pytest.fixture
def restored_console(monkeypatch):
    """The console choice of a `fedhubert` command run in this process, undone afterwards."""
    for name in (QUIET_ENV, "PYTHONWARNINGS"):
        monkeypatch.delenv(name, raising=False)
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.e2e
def test_demo_runs_every_phase_and_reports_real_numbers(tmp_path, capsys, restored_console):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--rounds", "2", "--distill-rounds", "2", "--finetune-rounds", "2"]
    assert main([*argv, "--local-updates", "2"]) == 0
    printed = capsys.readouterr()
    console = (printed.out + printed.err).split("\n")  # lines as a terminal or `wc -l` counts them
    # quiet by default: every phase and round, no third-party warnings or notes
    assert len(console) <= 120, "\n".join(console)
    for phase in range(1, 9):
        assert any(f"[phase {phase}/8]" in line and " done in " in line for line in console), phase
    assert len([line for line in console if re.search(r"\| round [12]: train loss", line)]) == 6
    assert not [line for line in console if re.search(r"Warning|DEPRECATED|fairseq\.|configure_train", line)]
    assert "KS test accuracy" in printed.out
    report = (out / "report.md").read_text()
    sections = dict(re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", report, flags=re.M | re.S))
    assert list(sections) == SECTIONS
    assert "(not run)" not in report
    # the run beside the tiny recipe's reference curves: 2 rounds of 4 clients x 2 updates, 16 updates in all
    against = sections["Pretraining against the reference curves"]
    assert "The last validated model has 16 updates behind it" in against and (out / "reference.png").is_file()
    assert "outside the fedavg reference's stored updates" in against  # the default strategy's curve
    assert re.search(r"valid loss fell from \d+\.\d+ \(the initial model\) to \d+\.\d+", against)
    clients = table_rows(sections["Data and clients"])
    assert len(clients) == 4 and all(int(row[2]) > 0 for row in clients)
    for name in ("Federated pretraining", "Federated distillation", "Federated fine-tuning (CTC)"):
        rounds = table_rows(sections[name])
        assert [row[0] for row in rounds] == ["1", "2"]
        assert all(float(cell) > 0 for row in rounds for cell in row[1:3] + row[5:])  # losses, MB, seconds
    fine_tuning = sections["Federated fine-tuning (CTC)"]
    assert "valid WER %" in fine_tuning and all(float(row[3]) >= 0 for row in table_rows(fine_tuning))
    best = metric_lines(out / "finetune")[-1]["best_round"]
    assert (
        f"Best: round {best}'s model" in fine_tuning and (out / "finetune" / "server" / "checkpoint_best.pt").is_file()
    )
    downstream = table_rows(sections["Downstream: SUPERB keyword spotting and phoneme recognition"])
    assert [row[0] for row in downstream] == [
        "teacher (federated HuBERT)",
        "student (federated distillation)",
        "random init (untrained teacher)",
    ]
    # The KS accuracy is s3prl's own: the share of the keyword test clips (every clip of the toy test set, 30)
    # whose prediction in s3prl's test_predict.txt is the keyword in its test_truth.txt. The report and
    # test.json must show exactly that; reading the wrong line of s3prl's log (its dev and train accuracies are
    # over other clips) or testing other clips breaks the equality.
    clips = {f"{wav.parent.name}-{wav.name}" for wav in (out / "toy" / "speech_commands" / "test").glob("*/*.wav")}
    assert len(clips) == 30
    for folder, row in zip(("teacher", "student", "random_init"), downstream):
        run = out / "downstream" / folder
        truth, predicted = (
            dict(line.split() for line in (run / f"test_{kind}.txt").read_text().splitlines())
            for kind in ("truth", "predict")
        )
        assert set(truth) == set(predicted) == clips
        accuracy = sum(predicted[clip] == truth[clip] for clip in clips) / len(clips)
        assert json.loads((run / "test.json").read_text())["test_acc"] == pytest.approx(accuracy)
        assert row[2] == f"{accuracy:.3f}"
    assert float(downstream[1][1].split()[0]) < float(downstream[0][1].split()[0])  # the student is smaller
    # PR: s3prl's phone error rate of the toy dev utterances against the espeak-ng lexicon's phones
    for folder, row in zip(("teacher", "student", "random_init"), downstream):
        pr = json.loads((out / "pr" / folder / "test.json").read_text())
        assert (
            pr["metric"] == "per"
            and row[3] == f"{pr['score']:.1f}"
            and (out / "pr" / folder / "test-hyp.ark").is_file()
        )
    probed = table_rows(sections["What pretraining bought: phone probe"])
    assert [row[0] for row in probed] == ["MFCC"] + [row[0] for row in downstream]
    assert all(0.0 < float(row[2]) < 1.0 and 0.0 < float(row[3]) < 1.0 for row in probed)  # accuracy, PNMI
    # the best transformer layer (1 and up; 0 is the conv front end) beside the best layer, as probe.json names it
    layers = {r["name"]: r["best_transformer_layer"] for r in json.loads((out / "probe" / "probe.json").read_text())}
    assert probed[0][4:7] == ["—", "—", "—"] and layers["MFCC"] is None
    # the last column: the best speaker-probe layer's accuracy and its layer, e.g. "0.812 (0)"
    assert all(0.0 < float(row[7].split()[0]) <= 1.0 and row[7].split()[1].startswith("(") for row in probed)
    for row in probed[1:]:
        assert int(row[4]) == layers[row[0]] >= 1 and float(row[5]) <= float(row[2]) and 0.0 < float(row[6]) < 1.0
    # the verdict gives the teacher's gain over random init per measure, and says "did not beat" only when none is > 0
    verdict = sections["What pretraining bought: phone probe"]
    gains = {name: float(gain) for name, gain in re.findall(r"([A-Za-z][A-Za-z' ]*?) ([+-]\d\.\d{3})", verdict)}
    teacher_row, random_row = probed[1], probed[-1]
    assert gains["phone accuracy"] == pytest.approx(float(teacher_row[2]) - float(random_row[2]), abs=0.0015)
    assert gains["KS accuracy"] == pytest.approx(float(downstream[0][2]) - float(downstream[-1][2]), abs=0.0015)
    beaten = max(gains.values()) > 0
    assert ("Teacher against random init" in verdict) == beaten
    assert ("did not beat random init on any measure" in verdict) == (not beaten)
    assert json.loads((out / "probe" / "probe.json").read_text())[1]["name"] == "teacher (federated HuBERT)"
    phases = table_rows(sections["Time per phase"])
    assert len(phases) == 7 and all(float(row[1]) > 0 for row in phases)
    for png in ("pretrain.png", "distill.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for run in ("pretrain", "distill"):
        assert list(
            (out / run / "server" / "tb" / "valid").glob("events.out.tfevents.*")
        )  # fairseq's TensorBoard writer
        assert len(metric_lines(out / run)) == 2
    for folder in ("teacher", "student", "random_init"):
        assert list((out / "downstream" / folder).glob("events.out.tfevents.*"))  # s3prl's TensorBoard logs


def test_demo_names_a_missing_keyword_folder_before_any_training(toy_corpus, tmp_path, capsys):
    args = [
        "demo",
        "--out",
        str(tmp_path / "demo"),
        "--librispeech-root",
        str(toy_corpus / "LibriSpeech"),
        "--speech-commands-root",
        str(tmp_path / "nowhere"),
    ]
    assert main(args) == 1
    assert f"{tmp_path / 'nowhere'} not found; check --speech-commands-root" in capsys.readouterr().err
    assert not (tmp_path / "demo" / "data").exists()
