"""``fedhubert downstream``: s3prl's ``run_downstream`` with fedhubert's ``hubert_local``.

Every argument goes to s3prl unchanged (without a GPU, ``--device cpu`` is added unless a
device is named). Two things differ from ``python -m
s3prl.run_downstream``: ``-u hubert_local`` is fedhubert's upstream (it also reads
fairseq-format server checkpoints and distilled students), and s3prl's own experiment
checkpoints load on torch >= 2.6. Those hold the run's ``argparse.Namespace``, which
``torch.load``'s default ``weights_only=True`` refuses, so ``-m evaluate -e dev-best.ckpt``
and resuming with ``-e`` fail in stock s3prl. We allow-list exactly that class (plus the
fairseq classes of HuBERT checkpoints); the safety stays on. s3prl's speaker identification
(``voxceleb1``) and verification (``sv_voxceleb1``) cache file lists and lengths inside s3prl's
installed package, shared by every run whatever its data: here the cache is the experiment
folder's own. And without CUDA, sv_voxceleb1's ``.cuda()`` call leaves its tensor on the CPU.
"""

import argparse
import builtins
import contextlib
import json
import logging
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from fedhubert_plugin.checkpoints import allow_fairseq_checkpoint_classes, as_s3prl_state, load_checkpoint
from fedhubert_plugin.console import console_to
from fedhubert_plugin.s3prl_source import use_source_tree

logger = logging.getLogger(__name__)

# Every non-container class in s3prl's downstream experiment checkpoints (states-*.ckpt, dev-best.ckpt).
DOWNSTREAM_CHECKPOINT_CLASSES: List[type] = [argparse.Namespace]


def register_upstream() -> None:
    """Make ``-u hubert_local`` in s3prl's hub fedhubert's upstream."""
    from s3prl import hub

    from upstream.hubert_local.hubconf import hubert_local

    hub.hubert_local = hubert_local


def with_device(argv: List[str]) -> List[str]:
    """``argv`` plus ``--device cpu`` when it names no device and there is no GPU (s3prl defaults to cuda)."""
    if "--device" in argv or any(arg.startswith("--device=") for arg in argv) or torch.cuda.is_available():
        return list(argv)
    logger.debug("no GPU: running s3prl with --device cpu")
    return [*argv, "--device", "cpu"]


def experiment_dir(argv: List[str]) -> Optional[Path]:
    """The experiment folder of an s3prl command line: ``-p``, the folder of the ``-e`` checkpoint, or s3prl's
    ``result/downstream/<-n>``; None when it names none (s3prl then refuses it)."""
    folders = {
        ("-p", "--expdir"): Path,
        ("-e", "--past_exp"): lambda ckpt: Path(ckpt).parent,
        ("-n", "--expname"): lambda name: Path("result") / "downstream" / name,
    }
    for flags, folder_of in folders.items():
        for i, arg in enumerate(argv[:-1]):
            if arg in flags:
                return folder_of(argv[i + 1])
    return None


def keep_file_lists_in(exp: Path) -> None:
    """s3prl's voxceleb1 dataset keeps its train/dev/test file lists in ``<s3prl>/downstream/voxceleb1/.cache``,
    and sv_voxceleb1's its utterance lengths in ``<s3prl>/downstream/sv_voxceleb1/.wav_lengths``, which a run on
    other data would read back (its files, not the data given): keep them in ``exp`` instead (sv_voxceleb1 finds
    the folder from its module's ``__file__``)."""
    from s3prl.downstream.sv_voxceleb1 import dataset as verification
    from s3prl.downstream.voxceleb1 import dataset as identification

    (Path(exp) / "file_lists").mkdir(parents=True, exist_ok=True)  # sv_voxceleb1 makes only the last folder
    identification.CACHE_PATH = str(Path(exp) / "file_lists")
    verification.__file__ = str(Path(exp) / "file_lists" / "dataset.py")


@contextlib.contextmanager
def cuda_calls_stay_on_cpu() -> Iterator[None]:
    """Without CUDA, ``Tensor.cuda()`` returns the tensor where it is while s3prl runs: its sv_voxceleb1 expert
    moves a mask with ``.cuda()`` whatever ``--device`` says, which fails on a machine without a GPU."""
    if torch.cuda.is_available():
        yield
        return
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda tensor, *args, **kwargs: tensor
    try:
        yield
    finally:
        torch.Tensor.cuda = cuda


def run_downstream(argv: List[str]) -> None:
    """Run s3prl's ``run_downstream`` with ``argv`` (its own command line; ``--device cpu`` added without a GPU)."""
    register_upstream()
    use_source_tree()  # S3PRL_SOURCE: the source-tree files pip's s3prl lacks
    exp = experiment_dir(argv)
    if exp is not None:
        keep_file_lists_in(exp)
    allow_fairseq_checkpoint_classes()
    torch.serialization.add_safe_globals(DOWNSTREAM_CHECKPOINT_CLASSES)
    from s3prl import run_downstream as s3prl_run_downstream

    # s3prl calls torchaudio APIs that 2.8 marks deprecated (still working): nothing for the user to fix
    warnings.filterwarnings("ignore", message=r"torchaudio\..* has been deprecated", category=UserWarning)
    # s3prl's main() replaces builtins.isinstance with a wrapper (for DDP and defaultdict) and never puts it back:
    # each run in one process nests another, and every isinstance call of the process after it pays them all
    # (after the demo's three keyword-spotting runs, hydra and numpy code ran 5x slower)
    saved_argv, saved_isinstance = sys.argv, builtins.isinstance
    sys.argv = ["run_downstream.py", *with_device(argv)]
    try:
        with cuda_calls_stay_on_cpu():
            s3prl_run_downstream.main()
    finally:
        sys.argv, builtins.isinstance = saved_argv, saved_isinstance


@dataclass(frozen=True)
class SuperbTask:
    """A SUPERB task as s3prl runs it here: its downstream, the keys of its data paths under
    ``downstream_expert`` (in the order ``recipes/superb/run_superb.sh`` takes them; a last key ending in ``[]``
    takes the remaining paths as a list), its dev and test splits, its metric: ``accuracy`` (s3prl writes it to
    ``log.log``; higher is better) or an error rate that s3prl prints (``wer``, ``per``; lower is better), and
    whether s3prl reports it as a fraction (scaled to %); ``folds``: the cross-validation folds SUPERB averages
    (ER: five, s3prl's ``datarc.test_fold``). ASV has no dev set: SUPERB tests every saved checkpoint and reports
    the best, so its "dev" scores are those test scores."""

    downstream: str
    data_keys: Tuple[str, ...]
    dev_split: str = "dev"
    test_split: str = "test"
    metric: str = "accuracy"
    fraction: bool = True
    folds: int = 1
    printed: str = "{split} {metric}: ([0-9.]+)"  # how s3prl prints an error rate (a regex, {split} escaped)
    every_checkpoint: bool = False  # test every saved checkpoint and report the best (ASV: s3prl's test_expdir.sh)

    def best(self, scores: Sequence[float]) -> float:
        """The best of ``scores`` by this task's metric."""
        return max(scores) if self.metric == "accuracy" else min(scores)

    def data_overrides(self, task: str, data: Sequence[Path]) -> List[str]:
        """s3prl's overrides that give ``data`` to the task's keys; a wrong number of paths is named."""
        keys, listed = list(self.data_keys), self.data_keys[-1].endswith("[]")
        if len(data) != len(keys) and not (listed and len(data) >= len(keys)):
            names = ", ".join(key.split(".")[-1] for key in keys)
            raise ValueError(f"SUPERB {task} takes {len(keys)} data path(s) ({names}), got {len(data)}")
        values = [f"'{path}'" for path in data]
        if listed:
            keys[-1], values = keys[-1][:-2], [*values[: len(keys) - 1], f"[{','.join(values[len(keys) - 1 :])}]"]
        return [f"config.downstream_expert.{key}={value}" for key, value in zip(keys, values)]


# the tasks that run end to end here, on the toy corpora too
SUPERB_TASKS = {
    "pr": SuperbTask("ctc", ("corpus.path", "text.vocab_file", "corpus.lexicon[]"), metric="per"),
    "ks": SuperbTask("speech_commands", ("datarc.speech_commands_root", "datarc.speech_commands_test_root")),
    "ic": SuperbTask("fluent_commands", ("datarc.file_path",)),
    "sid": SuperbTask("voxceleb1", ("datarc.file_path", "datarc.meta_data")),
    "er": SuperbTask("emotion", ("datarc.root", "datarc.meta_data"), folds=5),
    "asr": SuperbTask(
        "asr",
        ("datarc.libri_root", "datarc.bucket_file", "datarc.dict_path"),
        dev_split="dev-clean",
        test_split="test-clean",
        metric="wer",
        fraction=False,
    ),
    "asv": SuperbTask(
        "sv_voxceleb1",
        ("datarc.file_path", "datarc.dev_meta_data", "datarc.test_meta_data"),
        dev_split="test",
        metric="eer",
        printed="sv-voxceleb1/{split}-EER: ([0-9.]+)",
        every_checkpoint=True,
    ),
    # s3prl's frame-level DER; SUPERB's figure is dscore's on the RTTM (``write_rttm``)
    "sd": SuperbTask(
        "diarization",
        ("loaderrc.train_dir", "loaderrc.dev_dir", "loaderrc.test_dir"),
        metric="der",
        printed="mode {split} acc [0-9.]+ der ([0-9.]+)",
    ),
}


def superb_task(
    task: str, ckpt: Path, exp: Path, config: Path, data: Sequence[Path], overrides: Sequence[str] = ()
) -> Dict:
    """s3prl's SUPERB ``task`` (``SUPERB_TASKS``) on the frozen upstream ``ckpt``, its data paths ``data`` (and
    s3prl ``overrides`` such as ``config.optimizer.lr=1e-3``): train, then test the best dev checkpoint, in ``exp``.

    Returns the metric, its best dev score and its test score in % (``test_acc`` too, a fraction, for accuracy),
    the upstream's parameter count and which s3prl checkpoint was tested; kept in ``exp/test.json``, which a
    second call returns without training again.
    """
    done = Path(exp) / "test.json"
    if done.is_file():
        return json.loads(done.read_text())
    spec = SUPERB_TASKS[task]
    paths = spec.data_overrides(task, data)
    console = Path(exp) / "console.log"  # s3prl's prints and progress bars, when the command runs quiet
    with console_to(console):
        evaluated = train_and_test(spec, ckpt, exp, config, ",,".join([*paths, *overrides]))
    tested = reported_scores(spec, Path(exp), console, spec.test_split)  # one score per checkpoint of ``evaluated``
    index = tested.index(spec.best(tested)) if spec.every_checkpoint else -1
    score, chosen = tested[index], evaluated[index]
    if spec.every_checkpoint:  # SUPERB scores the best checkpoint's predictions
        shutil.copy(kept_predictions(exp, spec.test_split, chosen), Path(exp) / f"{spec.test_split}_predict.txt")
    weights = as_s3prl_state(load_checkpoint(ckpt), ckpt)["model_weight"]
    result = {
        "metric": spec.metric,
        "dev_score": spec.best(reported_scores(spec, Path(exp), console, spec.dev_split)),
        "score": score,
        **({"test_acc": score / 100} if spec.metric == "accuracy" else {}),
        "parameters": sum(v.numel() for v in weights.values()),
        "checkpoint": str(ckpt),
        "evaluated": chosen.name,
    }
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


def reported_scores(spec: SuperbTask, exp: Path, console: Path, split: str) -> List[float]:
    """Every score s3prl reported on ``split`` in ``exp``, in %: the accuracies of its ``log.log``, or the error
    rates it printed."""
    if spec.metric == "accuracy":
        where, pattern = exp / "log.log", rf"^{re.escape(split)} at step \d+: ([0-9.]+)$"
    else:
        where, pattern = console, "^" + spec.printed.format(split=re.escape(split), metric=spec.metric) + "$"
    scores = re.findall(pattern, where.read_text(), flags=re.M) if where.is_file() else []
    if not scores:
        raise RuntimeError(f"s3prl wrote no {split} {spec.metric} to {where} (its output: {console})")
    return [float(score) * (100 if spec.fraction else 1) for score in scores]


def train_and_test(spec: SuperbTask, ckpt: Path, exp: Path, config: Path, paths: str) -> List[Path]:
    """s3prl's training of the task's downstream on ``ckpt``, then its test of the best dev checkpoint, or of every
    saved one in order of steps (each one's predictions kept as ``test_predict_<checkpoint>.txt``): those tested."""
    run_downstream(
        [
            "-m",
            "train",
            "-u",
            "hubert_local",
            "-k",
            str(ckpt),
            "-d",
            spec.downstream,
            "-c",
            str(config),
            "-p",
            str(exp),
            "-o",
            paths,
            "--auto_resume",
        ]
    )
    states = sorted(Path(exp).glob("states-*.ckpt"), key=lambda p: int(p.stem.split("-")[1]))
    if spec.every_checkpoint:
        for state in states:
            run_downstream(["-m", "evaluate", "-t", spec.test_split, "-e", str(state)])
            shutil.copy(Path(exp) / f"{spec.test_split}_predict.txt", kept_predictions(exp, spec.test_split, state))
        return states
    # dev-best.ckpt, ASR's dev-clean-best.ckpt, diarization's best-states-dev.ckpt
    best = next(chain(Path(exp).glob("*-best.ckpt"), Path(exp).glob("best-states-*.ckpt")), None)
    if best is None:  # the dev metric never improved on its start: test the last state instead
        best = states[-1]
    run_downstream(["-m", "evaluate", "-t", spec.test_split, "-e", str(best)])
    if spec.downstream == "diarization":
        write_rttm(exp)
    return [best]


def kept_predictions(exp: Path, split: str, state: Path) -> Path:
    """Where the predictions of one tested checkpoint are kept (``test_predict_states-40.txt``)."""
    return Path(exp) / f"{split}_predict_{state.stem}.txt"


def write_rttm(exp: Path, threshold: float = 0.5, median: int = 11) -> Path:
    """``exp/scoring/hyp_<threshold>_<median>.rttm`` from s3prl's test predictions (``scoring/predictions/*.h5``),
    by s3prl's own ``make_rttm.py`` at the experiment's label frame shift: what dscore scores."""
    scoring = Path(exp) / "scoring"
    (scoring / "file_list").write_text("".join(f"{p}\n" for p in sorted((scoring / "predictions").glob("*.h5"))))
    rttm = scoring / f"hyp_{threshold}_{median}.rttm"
    frame_shift = (Path(exp) / "frame_shift").read_text().strip()
    script = ["-m", "s3prl.downstream.diarization.make_rttm", str(scoring / "file_list"), str(rttm)]
    options = ["--threshold", str(threshold), "--median", str(median), "--frame_shift", frame_shift]
    subprocess.run([sys.executable, *script, *options], check=True, capture_output=True)
    return rttm
