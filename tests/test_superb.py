"""`fedhubert superb`: the SUPERB tasks that run here, on several checkpoints, one table; a rerun resumes."""

import hashlib
import json
import re
import zipfile
from csv import DictReader, reader
from pathlib import Path

import pytest
import yaml

from fedhubert_plugin.checkpoints import load_checkpoint
from fedhubert_plugin.cli import main
from fedhubert_plugin.superb import SuperbConfig, run_superb, task_data, write_submission
from fedhubert_plugin.toy_data import DEV_SUBSET


def superb_one_task(federated_run: Path, toy: Path, task: str, out: Path, *extra: str) -> Path:
    """`fedhubert superb` of ``task`` on the federated checkpoint, named ``fed``, with ``toy``'s data, its predictions
    packaged (``--submit fed``); the task's experiment folder."""
    ckpt = federated_run / "server" / "checkpoint_best.pt"
    argv = ["superb", "--checkpoint", f"fed={ckpt}", "--toy", str(toy), "--tasks", task, "--out", str(out)]
    assert main([*argv, *extra, "--submit", "fed"]) == 0
    return out / task / "fed"


def one_toy_folder(folder: Path, **corpora: Path) -> Path:
    """``folder`` laid out as `fedhubert toy-data --superb` writes it, each corpus linked from the session's
    fixtures (``LibriSpeech=...``, ``pr=...``)."""
    folder.mkdir()
    for name, source in corpora.items():
        (folder / name).symlink_to(source)
    return folder


@pytest.mark.e2e
def test_superb_tables_each_checkpoint_beside_hubert_base_and_a_rerun_resumes(federated_run, superb_corpora, tmp_path):
    toy = Path(superb_corpora.fluent_commands_root).parent
    ckpt = federated_run / "server" / "checkpoint_best.pt"
    out = tmp_path / "superb"
    argv = ["superb", "--checkpoint", f"federated={ckpt}", "--random-init", "--toy", str(toy), "--tasks", "ic"]
    assert main([*argv, "--out", str(out)]) == 0
    table = json.loads((out / "superb.json").read_text())
    assert list(table["scores"]["ic"]) == ["federated", "federated (random init)"]
    with open(toy / "fluent_speech_commands" / "data" / "test_data.csv") as test_data:
        rows = list(DictReader(test_data))
    test_set = {Path(row["path"]).stem: [row["action"], row["object"], row["location"]] for row in rows}
    for name, folder in (("federated", "federated"), ("federated (random init)", "federated_random_init")):
        done = json.loads((out / "ic" / folder / "test.json").read_text())
        assert table["scores"]["ic"][name] == pytest.approx(done["score"]) == 100 * done["test_acc"]
        # what SUPERB scores stays with the run: a prediction for every test utterance, once; the score is theirs
        predicted = {row[0]: row[1:] for row in reader(open(out / "ic" / folder / "test_predict.csv"))}
        truth = {row[0]: row[1:] for row in reader(open(out / "ic" / folder / "test_truth.csv"))}
        assert truth == test_set and predicted.keys() == test_set.keys()
        assert done["score"] == pytest.approx(100 * sum(predicted[u] == truth[u] for u in truth) / len(truth))
    assert table["checkpoints"]["federated (random init)"] == str(out / "random_init" / "federated.pt")
    markdown = (out / "superb.md").read_text()
    ours, fresh = table["scores"]["ic"]["federated"], table["scores"]["ic"]["federated (random init)"]
    assert f"| IC | test accuracy (%) | {ours:.2f} | {fresh:.2f} | 98.34 |" in markdown
    logs = {path: path.stat().st_mtime_ns for path in out.glob("ic/*/log.log")}
    assert main([*argv, "--out", str(out), "--submit", "federated"]) == 0  # each pair done is read back
    assert {path: path.stat().st_mtime_ns for path in out.glob("ic/*/log.log")} == logs and len(logs) == 2
    # the package s3prl's submit/submit.py makes, from the federated checkpoint's runs
    with zipfile.ZipFile(out / "submission" / "predict.zip") as package:
        assert package.namelist() == ["predict/ic_public/predict.csv"]
        predictions = (out / "ic" / "federated" / "test_predict.csv").read_bytes()
        assert package.read("predict/ic_public/predict.csv") == predictions
    manifest = json.loads((out / "submission" / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert manifest["federated_round"] == load_checkpoint(ckpt)["extra_state"]["federated_round"] >= 1
    assert manifest["federation_settings"] == json.loads((ckpt.parent / "settings.json").read_text())
    assert manifest["left_out"] == ["pr", "ks", "sid", "er", "asr", "qbe", "sf", "asv", "sd"]
    assert manifest["predictions"] == {
        "ic_public/predict.csv": str(out / "ic" / "federated" / "test_predict.csv")
    }  # named, not hidden


@pytest.mark.e2e
def test_a_learning_rate_search_tests_the_rate_best_on_dev(federated_run, superb_corpora, tmp_path):
    toy = Path(superb_corpora.fluent_commands_root).parent
    ckpt = federated_run / "server" / "checkpoint_best.pt"
    out = tmp_path / "superb"
    argv = ["superb", "--checkpoint", f"fed={ckpt}", "--toy", str(toy), "--tasks", "ic", "--lrs", "1e-2", "1e-4"]
    assert main([*argv, "--out", str(out)]) == 0
    runs = {lr: json.loads((out / "ic" / "fed" / f"lr_{lr}" / "test.json").read_text()) for lr in ("0.01", "0.0001")}
    for lr, run in runs.items():  # each trained with its own rate; its dev score is the best of its log
        folder = out / "ic" / "fed" / f"lr_{lr}"
        configs = list(folder.glob("config_*.yaml"))  # the configs s3prl ran (train, test), overrides merged
        assert configs and all(yaml.safe_load(c.read_text())["optimizer"]["lr"] == float(lr) for c in configs)
        dev = re.findall(r"^dev at step \d+: ([0-9.]+)$", (folder / "log.log").read_text(), flags=re.M)
        assert run["dev_score"] == pytest.approx(100 * max(float(score) for score in dev))
    chosen = max(runs, key=lambda lr: runs[lr]["dev_score"])
    table = json.loads((out / "superb.json").read_text())
    assert table["experiments"]["ic"]["fed"] == [str(out / "ic" / "fed" / f"lr_{chosen}")]
    assert table["scores"]["ic"]["fed"] == runs[chosen]["score"]


def test_a_submission_without_a_tasks_prediction_file_names_it(tmp_path):
    (tmp_path / "ks" / "teacher").mkdir(parents=True)
    (tmp_path / "ks" / "teacher" / "test_predict.txt").write_text("a yes\n")
    with pytest.raises(FileNotFoundError, match=r"no prediction file .*ic/teacher/test_predict.csv; rerun those"):
        experiments = {task: {"teacher": [str(tmp_path / task / "teacher")]} for task in ("ks", "ic")}
        write_submission(tmp_path, "teacher", {"teacher": tmp_path / "t.pt"}, experiments)
    with pytest.raises(ValueError, match="--submit student: not a --checkpoint name; choose one of teacher"):
        write_submission(tmp_path, "student", {"teacher": tmp_path / "t.pt"}, {})


def test_a_task_without_data_is_named_with_the_paths_it_takes(tmp_path):
    cfg = SuperbConfig(checkpoint=["a=x.pt"], out=tmp_path, tasks=["ic", "sid"], data=["ic=/fsc"])
    with pytest.raises(ValueError, match=r"no data for sid: pass --data TASK=PATHS \(sid: file_path, meta_data\)"):
        task_data(cfg)
    cfg.data = ["ic=/fsc", "sid=/vox1,/vox1/iden_split.txt"]
    assert task_data(cfg) == {"ic": [Path("/fsc")], "sid": [Path("/vox1"), Path("/vox1/iden_split.txt")]}
    cfg.data = ["qbe=/quesst14"]
    with pytest.raises(ValueError, match="--data qbe=/quesst14: give TASK=PATH"):
        task_data(cfg)


@pytest.mark.e2e
def test_emotion_recognition_runs_the_five_folds_and_tables_their_mean(federated_run, superb_corpora, tmp_path):
    out = tmp_path / "superb"
    superb_one_task(federated_run, Path(superb_corpora.iemocap_root).parent, "er", out)
    folds = []
    for n in range(1, 6):
        exp = out / "er" / "fed" / f"fold{n}"
        # s3prl's own fold: the session left out is the test set, each utterance predicted once
        meta = json.loads(
            (Path(superb_corpora.iemocap_root) / "meta_data" / f"Session{n}" / "test_meta_data.json").read_text()
        )
        test_set = {Path(row["path"]).stem: row["label"] for row in meta["meta_data"]}
        assert all(name.startswith(f"Ses{n:02d}") for name in test_set)
        predicted = dict(line.split() for line in (exp / f"test_fold{n}_predict.txt").read_text().splitlines())
        truth = dict(line.split() for line in (exp / f"test_fold{n}_truth.txt").read_text().splitlines())
        assert truth == test_set and predicted.keys() == test_set.keys()
        folds.append(100 * sum(predicted[u] == truth[u] for u in truth) / len(truth))
        assert json.loads((exp / "test.json").read_text())["score"] == pytest.approx(folds[-1])
    table = json.loads((out / "superb.json").read_text())
    assert table["scores"]["er"]["fed"] == pytest.approx(sum(folds) / 5)
    assert table["metrics"]["er"] == "test accuracy (%), mean of 5 folds"
    assert (
        f"| ER | test accuracy (%), mean of 5 folds | {sum(folds) / 5:.2f} | 64.92 |" in (out / "superb.md").read_text()
    )
    with zipfile.ZipFile(out / "submission" / "predict.zip") as package:  # s3prl's submit.py: one folder per fold
        assert package.namelist() == [f"predict/er_fold{n}_public/predict.txt" for n in range(1, 6)]
        assert (
            package.read("predict/er_fold3_public/predict.txt")
            == (out / "er" / "fed" / "fold3" / "test_fold3_predict.txt").read_bytes()
        )


@pytest.mark.e2e
def test_phoneme_recognition_decodes_every_test_utterance_into_the_lexicons_phones(
    federated_run, toy_corpus, superb_corpora, tmp_path
):
    import editdistance

    toy = one_toy_folder(tmp_path / "toy", LibriSpeech=toy_corpus / "LibriSpeech", pr=Path(superb_corpora.pr_files))
    out = tmp_path / "superb"
    exp = superb_one_task(federated_run, toy, "pr", out)
    lexicon = dict(line.split(" ", 1) for line in (toy / "pr" / "lexicon.txt").read_text().splitlines())
    phones = set((toy / "pr" / "phoneme.txt").read_text().split())
    expected = {}
    for trans in (toy_corpus / "LibriSpeech" / DEV_SUBSET).rglob("*.trans.txt"):
        for line in trans.read_text().splitlines():
            utterance, *words = line.split()
            expected[utterance] = " ".join(lexicon[word] for word in words)
    hyps = dict(line.partition(" ")[::2] for line in (exp / "test-hyp.ark").read_text().splitlines())
    refs = dict(line.partition(" ")[::2] for line in (exp / "test-ref.ark").read_text().splitlines())
    assert refs == expected and hyps.keys() == refs.keys()  # every test utterance, its words' phones as reference
    assert set(" ".join(hyps.values()).split()) <= phones
    errors = sum(editdistance.eval(hyps[u].split(), refs[u].split()) for u in refs)
    per = 100 * errors / sum(len(ref.split()) for ref in refs.values())
    assert json.loads((out / "superb.json").read_text())["scores"]["pr"]["fed"] == pytest.approx(per)
    with zipfile.ZipFile(out / "submission" / "predict.zip") as package:
        assert package.read("predict/pr_public/predict.ark") == (exp / "test-hyp.ark").read_bytes()


@pytest.mark.e2e
def test_speaker_verification_tests_every_saved_checkpoint_and_reports_the_best_eer(
    federated_run, superb_corpora, tmp_path
):
    import numpy as np
    from s3prl.downstream.sv_voxceleb1.utils import EER

    root = Path(superb_corpora.voxceleb1_root)
    out = tmp_path / "superb"
    exp = superb_one_task(federated_run, root.parent, "asv", out)
    states = sorted(exp.glob("states-*.ckpt"))
    assert len(states) == 4  # asv_tiny saves every 10 of its 40 steps, and each one is tested
    trials = [line.split() for line in (root / "veri_test.txt").read_text().splitlines()]
    pair = {
        f"{'-'.join(Path(a).with_suffix('').parts)}_{'-'.join(Path(b).with_suffix('').parts)}": int(label)
        for label, a, b in trials
    }
    eers = {}
    for state in states:
        predicted = dict(line.split() for line in (exp / f"test_predict_{state.stem}.txt").read_text().splitlines())
        assert predicted.keys() == pair.keys()  # a score for every trial of the test speakers, once
        eers[state.name] = (
            100 * EER(np.array([pair[p] for p in pair]), np.array([float(predicted[p]) for p in pair]))[0]
        )
    result = json.loads((exp / "test.json").read_text())
    assert result["score"] == pytest.approx(min(eers.values())) and eers[result["evaluated"]] == min(eers.values())
    assert (exp / "test_predict.txt").read_bytes() == (
        exp / f"test_predict_{result['evaluated'][:-5]}.txt"
    ).read_bytes()
    assert json.loads((out / "superb.json").read_text())["metrics"]["asv"] == "test EER (%), best saved checkpoint"
    with zipfile.ZipFile(out / "submission" / "predict.zip") as package:
        assert package.read("predict/sv_public/predict.txt") == (exp / "test_predict.txt").read_bytes()
    assert (exp / "file_lists" / ".wav_lengths").is_dir()  # s3prl's length cache kept with the run, not in s3prl


@pytest.mark.e2e
def test_speaker_diarization_predicts_every_test_recording_and_writes_its_rttm(federated_run, superb_corpora, tmp_path):
    import h5py

    root = Path(superb_corpora.diarization_root)
    out = tmp_path / "superb"
    exp = superb_one_task(federated_run, root.parent, "sd", out)
    recordings = {line.split()[0] for line in (root / "test" / "wav.scp").read_text().splitlines()}
    predictions = {path.stem: path for path in (exp / "scoring" / "predictions").glob("*.h5")}
    assert predictions.keys() == recordings  # what SUPERB scores: a prediction for every test recording
    for path in predictions.values():
        with h5py.File(path) as h5:
            speech = h5["T_hat"][:]
        assert speech.shape[1] == 2 and 0 <= speech.min() and speech.max() <= 1  # two speakers' probabilities
    rttm = [line.split() for line in (exp / "scoring" / "hyp_0.5_11.rttm").read_text().splitlines()]
    assert {row[1] for row in rttm} <= recordings and all(row[0] == "SPEAKER" for row in rttm)
    assert {row[7] for row in rttm} <= {f"{rec}_{n}" for rec in recordings for n in (0, 1)}
    printed = re.findall(r"^mode test acc [0-9.]+ der ([0-9.]+)$", (exp / "console.log").read_text(), flags=re.M)
    table = json.loads((out / "superb.json").read_text())
    assert table["scores"]["sd"]["fed"] == pytest.approx(100 * float(printed[-1]))
    with zipfile.ZipFile(out / "submission" / "predict.zip") as package:  # s3prl's submit.py layout for SD
        names = sorted(f"predict/sd_public/scoring/predictions/{rec}.h5" for rec in recordings)
        assert package.namelist() == [*names, "predict/sd_public/frame_shift"]


@pytest.mark.e2e
def test_asr_with_a_language_model_decodes_test_clean_with_s3prls_kenlm_decoder(
    federated_run, toy_corpus, superb_corpora, tmp_path
):
    import editdistance

    from tests.helpers import write_bigram_lm

    toy = one_toy_folder(tmp_path / "toy", LibriSpeech=toy_corpus / "LibriSpeech", asr=Path(superb_corpora.asr_files))
    transcripts = {}
    for trans in (toy_corpus / "LibriSpeech").rglob("*.trans.txt"):
        transcripts.update(line.split(" ", 1) for line in trans.read_text().splitlines())
    lm, lexicon = write_bigram_lm([text.split() for text in transcripts.values()], tmp_path)
    out = tmp_path / "superb"
    exp = superb_one_task(federated_run, toy, "asr", out, "--asr-lm", str(lm), "--asr-lexicon", str(lexicon))
    hyps = dict(line.partition(" ")[::2] for line in (exp / "test-clean-LM-hyp.ark").read_text().splitlines())
    refs = dict(line.partition(" ")[::2] for line in (exp / "test-clean-LM-ref.ark").read_text().splitlines())
    assert hyps.keys() == refs.keys() and all(refs[u] == transcripts[u] for u in refs)  # every test utterance
    words = set(line.split("\t")[0] for line in lexicon.read_text().splitlines())
    assert set(" ".join(hyps.values()).split()) <= words  # the lexicon's words only: the LM decoder's output
    wer = 100 * sum(editdistance.eval(hyps[u].split(), refs[u].split()) for u in refs)
    table = json.loads((out / "superb.json").read_text())
    assert table["scores"]["asr_lm"]["fed"] == pytest.approx(wer / sum(len(r.split()) for r in refs.values()))
    assert "| ASR_LM | test WER (%), KenLM |" in (out / "superb.md").read_text()
    with zipfile.ZipFile(out / "submission" / "predict.zip") as package:
        assert package.read("predict/asr_lm_public/predict.ark") == (exp / "test-clean-LM-hyp.ark").read_bytes()
        assert "predict/asr_public/predict.ark" in package.namelist()
    alone = SuperbConfig(
        checkpoint=[f"fed={federated_run / 'server' / 'checkpoint_best.pt'}"],
        out=out,
        tasks=["asr"],
        toy=toy,
        asr_lm=lm,
    )
    with pytest.raises(ValueError, match="--asr-lm and --asr-lexicon go together"):
        run_superb(alone)
