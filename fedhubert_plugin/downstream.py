"""``fedhubert downstream``: s3prl's ``run_downstream`` with fedhubert's ``hubert_local``.

Every argument goes to s3prl unchanged (without a GPU, ``--device cpu`` is added unless a
device is named). Two things differ from ``python -m
s3prl.run_downstream``: ``-u hubert_local`` is fedhubert's upstream (it also reads
fairseq-format server checkpoints and distilled students), and s3prl's own experiment
checkpoints load on torch >= 2.6. Those hold the run's ``argparse.Namespace``, which
``torch.load``'s default ``weights_only=True`` refuses, so ``-m evaluate -e dev-best.ckpt``
and resuming with ``-e`` fail in stock s3prl. We allow-list exactly that class (plus the
fairseq classes of HuBERT checkpoints); the safety stays on. And s3prl's speaker
identification (``voxceleb1``) caches its file lists inside s3prl's installed package, shared
by every run whatever its data: here the cache is the experiment folder's own.
"""

import argparse
import builtins
import json
import logging
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

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
    which a run on other data would read back (its files, not the data given): keep them in ``exp`` instead."""
    from s3prl.downstream.voxceleb1 import dataset

    dataset.CACHE_PATH = str(Path(exp) / "file_lists")


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
    (ER: five, s3prl's ``datarc.test_fold``)."""

    downstream: str
    data_keys: Tuple[str, ...]
    dev_split: str = "dev"
    test_split: str = "test"
    metric: str = "accuracy"
    fraction: bool = True
    folds: int = 1

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
    score = reported_scores(spec, Path(exp), console, spec.test_split)[-1]
    weights = as_s3prl_state(load_checkpoint(ckpt), ckpt)["model_weight"]
    result = {
        "metric": spec.metric,
        "dev_score": spec.best(reported_scores(spec, Path(exp), console, spec.dev_split)),
        "score": score,
        **({"test_acc": score / 100} if spec.metric == "accuracy" else {}),
        "parameters": sum(v.numel() for v in weights.values()),
        "checkpoint": str(ckpt),
        "evaluated": evaluated.name,
    }
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


def reported_scores(spec: SuperbTask, exp: Path, console: Path, split: str) -> List[float]:
    """Every score s3prl reported on ``split`` in ``exp``, in %: the accuracies of its ``log.log``, or the error
    rates it printed."""
    if spec.metric == "accuracy":
        where, pattern = exp / "log.log", rf"^{re.escape(split)} at step \d+: ([0-9.]+)$"
    else:
        where, pattern = console, rf"^{re.escape(split)} {spec.metric}: ([0-9.]+)$"
    scores = re.findall(pattern, where.read_text(), flags=re.M) if where.is_file() else []
    if not scores:
        raise RuntimeError(f"s3prl wrote no {split} {spec.metric} to {where} (its output: {console})")
    return [float(score) * (100 if spec.fraction else 1) for score in scores]


def train_and_test(spec: SuperbTask, ckpt: Path, exp: Path, config: Path, paths: str) -> Path:
    """s3prl's training of the task's downstream on ``ckpt``, then its test of the best dev checkpoint (returned)."""
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
    best = next(Path(exp).glob("*-best.ckpt"), None)  # dev-best.ckpt, or ASR's dev-clean-best.ckpt
    if best is None:  # the dev metric never improved on its start: test the last state instead
        best = max(Path(exp).glob("states-*.ckpt"), key=lambda p: int(p.stem.split("-")[1]))
    run_downstream(["-m", "evaluate", "-t", spec.test_split, "-e", str(best)])
    return best
