"""SUPERB downstream with s3prl's run_downstream: KS, IC and SID end to end on the toy corpora, and the recipes."""

import builtins
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from fedhubert_plugin import s3prl_source
from fedhubert_plugin.cli import main
from fedhubert_plugin.downstream import experiment_dir
from fedhubert_plugin.s3prl_source import use_source_tree
from fedhubert_plugin.toy_data import DEV_SUBSET
from tests.helpers import REPO, fairseq_env

SUPERB = REPO / "recipes" / "superb"


BUILTIN_ISINSTANCE = builtins.isinstance  # as the interpreter made it, before any s3prl run


def keyword_paths(toy_corpus) -> str:
    root = toy_corpus / "speech_commands"
    return (
        f"config.downstream_expert.datarc.speech_commands_root='{root / 'train'}',,"
        f"config.downstream_expert.datarc.speech_commands_test_root='{root / 'test'}'"
    )


# The toy test set: 30 files of s3prl's 12 classes (_unknown_ 6, _silence_ 4, each keyword 2). A spotter that
# always gives one answer (features that carry nothing, a head that learnt nothing) scores 6/30 at best.
BEST_CONSTANT_ANSWER = 6 / 30


def accuracy_in(text: str) -> float:
    found = re.findall(r"test acc: ([0-9.]+)", text)
    assert found, text[-2000:]
    return float(found[-1])


@pytest.mark.e2e
def test_ks_train_evaluate_and_resume_on_the_federated_checkpoint(federated_run, toy_corpus, tmp_path, capsys):
    best = federated_run / "server" / "best_global_model.pt"
    exp = tmp_path / "ks"
    assert (
        main(
            [
                "downstream",
                "-m",
                "train",
                "-u",
                "hubert_local",
                "-k",
                str(best),
                "-d",
                "speech_commands",
                "-c",
                str(SUPERB / "ks_tiny.yaml"),
                "-p",
                str(exp),
                "-o",
                keyword_paths(toy_corpus) + ",,config.runner.total_steps=50",
            ]
        )
        == 0
    )
    assert (exp / "dev-best.ckpt").is_file() and (exp / "states-50.ckpt").is_file()
    capsys.readouterr()
    # torch >= 2.6 refuses s3prl's own checkpoint (argparse.Namespace) without our allow-list
    assert main(["downstream", "-m", "evaluate", "-e", str(exp / "dev-best.ckpt")]) == 0
    assert accuracy_in(capsys.readouterr().out) > BEST_CONSTANT_ANSWER
    assert (
        main(["downstream", "-m", "train", "-e", str(exp / "states-50.ckpt"), "-o", "config.runner.total_steps=75"])
        == 0
    )
    assert (exp / "states-75.ckpt").is_file()
    log = (exp / "log.log").read_text()
    dev_steps = re.findall(r"^dev at step (\d+):", log, flags=re.M)
    assert dev_steps == ["25", "50", "75"]  # resumed at step 50: steps 1-50 were not trained again
    # s3prl's runner replaces builtins.isinstance for its run: after three runs, the process has its own back
    assert builtins.isinstance is BUILTIN_ISINSTANCE


def run_superb(task, ckpt, exp, *data_and_extra) -> str:
    """``recipes/superb/run_superb.sh``'s train and test of ``task``; what its test printed (``EXPDIR/test.log``)."""
    cmd = ["bash", str(SUPERB / "run_superb.sh"), task, str(ckpt), str(exp), *map(str, data_and_extra)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=fairseq_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (exp / "test.log").read_text()


@pytest.mark.e2e
def test_run_superb_script_merges_the_users_overrides_with_the_data_paths(federated_run, toy_corpus, tmp_path):
    root, exp = toy_corpus / "speech_commands", tmp_path / "ks"
    ckpt = federated_run / "server" / "checkpoint_best.pt"
    # the user's -o is merged with the data paths: alone in their place, it would leave both roots null
    tested = run_superb("ks_tiny", ckpt, exp, root / "train", root / "test", "--", "-o", "config.runner.total_steps=50")
    assert (exp / "states-50.ckpt").is_file() and not (exp / "states-75.ckpt").exists()
    assert accuracy_in(tested) > BEST_CONSTANT_ANSWER


@pytest.mark.e2e
def test_speaker_identification_keeps_its_file_lists_in_the_experiment(federated_run, superb_corpora, tmp_path):
    import s3prl.downstream.voxceleb1.dataset as s3prl_sid

    exp = tmp_path / "sid"
    ckpt = federated_run / "server" / "checkpoint_best.pt"
    package_cache = Path(s3prl_sid.__file__).parent / ".cache"
    cached_before = sorted(package_cache.glob("*")) if package_cache.exists() else []
    data = [superb_corpora.voxceleb1_root, superb_corpora.voxceleb1_iden_split]
    printed = accuracy_in(run_superb("sid_tiny", ckpt, exp, *data))
    split = [line.split() for line in Path(superb_corpora.voxceleb1_iden_split).read_text().splitlines()]
    test_set = {"-".join(Path(path).with_suffix("").parts): path.split("/")[0] for kind, path in split if kind == "3"}
    predicted = dict(line.split() for line in (exp / "test_predict.txt").read_text().splitlines())
    truth = dict(line.split() for line in (exp / "test_truth.txt").read_text().splitlines())
    assert truth == test_set and predicted.keys() == test_set.keys()
    assert printed == pytest.approx(sum(predicted[u] == truth[u] for u in truth) / len(truth))
    # s3prl caches these inside its installed package, where a run on other data would read them back
    assert sorted(p.name for p in (exp / "file_lists").iterdir()) == ["dev.pkl", "test.pkl", "train.pkl"]
    assert (sorted(package_cache.glob("*")) if package_cache.exists() else []) == cached_before


@pytest.mark.e2e
def test_speech_recognition_writes_a_hypothesis_per_test_utterance_and_its_wer(
    federated_run, toy_corpus, superb_corpora, tmp_path
):
    import editdistance

    exp, libri, asr = tmp_path / "asr", toy_corpus / "LibriSpeech", Path(superb_corpora.asr_files)
    ckpt = federated_run / "server" / "checkpoint_best.pt"
    tested = run_superb("asr_tiny", ckpt, exp, libri, asr / "len_for_bucket", asr / "char.dict")
    printed = re.findall(r"^test-clean wer: ([0-9.]+)$", tested, flags=re.M)
    transcripts = {}
    for trans in (libri / DEV_SUBSET).rglob("*.trans.txt"):
        transcripts.update(line.split(" ", 1) for line in trans.read_text().splitlines())
    hyps = dict(line.partition(" ")[::2] for line in (exp / "test-clean-noLM-hyp.ark").read_text().splitlines())
    refs = dict(line.partition(" ")[::2] for line in (exp / "test-clean-noLM-ref.ark").read_text().splitlines())
    assert refs == transcripts and hyps.keys() == refs.keys()  # the toy's dev subset is ASR's test-clean here
    errors = sum(editdistance.eval(hyps[u].split(), refs[u].split()) for u in refs)
    assert float(printed[-1]) == pytest.approx(100 * errors / sum(len(ref.split()) for ref in refs.values()))


def test_run_superb_script_names_what_a_task_needs(tmp_path):
    proc = subprocess.run(
        ["bash", str(SUPERB / "run_superb.sh"), "sid", "x.pt", str(tmp_path), "/voxceleb1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "VOXCELEB1_ROOT IDEN_SPLIT_TXT" in proc.stderr


@pytest.mark.parametrize(
    "task, data, named",
    [
        ("qbe", ["quesst14"], ["quesst14/scoring/score-TWV-Cnxe.sh", "quesst14/scoring/language_key_dev.lst"]),
        ("sf", ["snips", "slots.txt", "character.txt"], ["downstream/ctc/corpus/snips.py", "slots.txt"]),
        ("pr", ["libri", "phoneme.txt", "g2p.txt", "other.txt"], ["downstream/ctc/corpus/libriphone.py", "other.txt"]),
    ],
)
def test_tasks_needing_outside_data_or_s3prls_source_stop_before_training_naming_each_file(task, data, named, tmp_path):
    paths = [str(tmp_path / d) for d in data]
    tree = tmp_path / "tree"  # a source tree without s3prl's corpus readers
    (tree / "s3prl" / "downstream" / "ctc").mkdir(parents=True)
    without_source = {**fairseq_env(), "S3PRL_SOURCE": str(tree)}
    proc = subprocess.run(
        ["bash", str(SUPERB / "run_superb.sh"), task, "x.pt", str(tmp_path / "exp"), *paths],
        capture_output=True,
        text=True,
        env=without_source,
    )
    assert proc.returncode == 2 and f"run_superb.sh {task} cannot start; provide:" in proc.stderr, proc.stderr
    for what in named:
        assert what in proc.stderr
    assert not (tmp_path / "exp").exists()  # nothing ran


@pytest.mark.parametrize(
    "config,downstream",
    [
        ("ks", "speech_commands"),
        ("ks_tiny", "speech_commands"),
        ("ic", "fluent_commands"),
        ("ic_tiny", "fluent_commands"),
        ("sid", "voxceleb1"),
        ("sid_tiny", "voxceleb1"),
        ("er", "emotion"),
        ("er_tiny", "emotion"),
        ("asr", "asr"),
        ("asr_tiny", "asr"),
        ("pr", "ctc"),
        ("sf", "ctc"),
    ],
)
def test_superb_configs_fit_s3prls_runner_and_experts(config, downstream):
    import importlib

    cfg = yaml.safe_load((SUPERB / f"{config}.yaml").read_text())
    for key in (
        "total_steps",
        "gradient_clipping",
        "log_step",
        "eval_step",
        "save_step",
        "max_keep",
        "eval_dataloaders",
    ):
        assert key in cfg["runner"], key
    optimizers = importlib.import_module("s3prl.optimizers")
    assert hasattr(optimizers, f"get_{cfg['optimizer']['name']}")
    expert_module = importlib.import_module(f"s3prl.downstream.{downstream}.expert")
    model = cfg["downstream_expert"].get("modelrc") or cfg["downstream_expert"]["model"]
    assert hasattr(expert_module, model["select"]), f"s3prl's {downstream} expert has no model {model['select']}"
    script = (SUPERB / "run_superb.sh").read_text()
    configured = {k for section in cfg["downstream_expert"].values() if isinstance(section, dict) for k in section}
    for key in re.findall(r"config\.downstream_expert\.\w+\.(\w+)=", script_block(script, config)):
        assert key in configured, f"run_superb.sh sets {key}, which {config}.yaml does not have"


def script_block(script: str, config: str) -> str:
    """The case branch of run_superb.sh that handles ``config``."""
    task = config.removesuffix("_tiny")
    name = f"{task}|{task}_tiny" if f"    {task}|{task}_tiny)" in script else task
    start = script.index(f"    {name})")
    return script[start : script.index(";;", start)]


def test_the_experiment_folder_of_an_s3prl_command_line():
    assert experiment_dir(["-m", "train", "-d", "voxceleb1", "-p", "exp/sid"]) == Path("exp/sid")
    assert experiment_dir(["-m", "evaluate", "-e", "exp/sid/dev-best.ckpt"]) == Path("exp/sid")
    assert experiment_dir(["-m", "train", "-n", "sid"]) == Path("result/downstream/sid")  # s3prl's default
    assert experiment_dir(["-m", "train", "-d", "voxceleb1"]) is None


def test_s3prl_source_adds_the_checkouts_modules_that_pip_s3prl_lacks(tmp_path, monkeypatch):
    import importlib
    import sys

    import s3prl.downstream.ctc as ctc

    corpus = tmp_path / "s3prl" / "downstream" / "ctc" / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "libriphone.py").write_text("READER = 'from the checkout'\n")
    # the installed package alone (a run with S3PRL_SOURCE set may have extended it), and as it was after the test
    monkeypatch.setattr(ctc, "__path__", ctc.__path__[:1])
    for name in ("s3prl.downstream.ctc.corpus", "s3prl.downstream.ctc.corpus.libriphone"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("s3prl.downstream.ctc.corpus.libriphone")
    monkeypatch.setenv("S3PRL_SOURCE", str(tmp_path))
    assert use_source_tree() == tmp_path / "s3prl" / "downstream"
    assert importlib.import_module("s3prl.downstream.ctc.corpus.libriphone").READER == "from the checkout"
    assert importlib.import_module("s3prl.downstream.ctc.expert").__file__.startswith(ctc.__path__[0])  # pip's
    monkeypatch.setenv("S3PRL_SOURCE", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="S3PRL_SOURCE=.*nowhere: no s3prl/downstream folder"):
        use_source_tree()
    for name in ("s3prl.downstream.ctc.corpus", "s3prl.downstream.ctc.corpus.libriphone"):
        sys.modules.pop(name)  # imported from the checkout: gone with it
    monkeypatch.delenv("S3PRL_SOURCE")  # then the tree scripts/setup.sh unpacks into the venv, when it is there
    monkeypatch.setattr(s3prl_source, "BUNDLED", tmp_path)
    assert use_source_tree() == tmp_path / "s3prl" / "downstream"
    monkeypatch.setattr(s3prl_source, "BUNDLED", tmp_path / "nowhere")
    assert use_source_tree() is None


@pytest.mark.e2e
def test_run_superb_script_tests_every_asv_checkpoint_and_writes_sd_rttm(federated_run, superb_corpora, tmp_path):
    ckpt = federated_run / "server" / "checkpoint_best.pt"
    vox = Path(superb_corpora.voxceleb1_root)
    tested = run_superb("asv_tiny", ckpt, tmp_path / "asv", vox, vox / "veri_dev.txt", vox / "veri_test.txt")
    eers = {
        log.stem.removeprefix("test_"): float(
            re.findall(r"^sv-voxceleb1/test-EER: ([0-9.]+)$", log.read_text(), re.M)[-1]
        )
        for log in (tmp_path / "asv").glob("test_states-*.log")
    }
    best = min(eers, key=eers.get)
    reported = re.search(r"test EER of the best saved checkpoint \((states-\d+)\): ([0-9.]+)", tested)
    assert len(eers) == 4 and reported[1] == best and float(reported[2]) == eers[best]
    assert (tmp_path / "asv" / "test_predict.txt").read_text() == (
        tmp_path / "asv" / f"test_predict_{best}.txt"
    ).read_text()
    kaldi = Path(superb_corpora.diarization_root)
    run_superb("sd_tiny", ckpt, tmp_path / "sd", kaldi / "train", kaldi / "dev", kaldi / "test")
    rttm = (tmp_path / "sd" / "scoring" / "hyp_0.5_11.rttm").read_text().splitlines()
    recordings = {line.split()[0] for line in (kaldi / "test" / "wav.scp").read_text().splitlines()}
    assert rttm and {line.split()[1] for line in rttm} <= recordings
