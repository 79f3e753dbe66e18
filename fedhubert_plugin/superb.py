"""``fedhubert superb``: SUPERB tasks on one or more checkpoints, one table.

Each task trains and tests s3prl's downstream on every checkpoint, frozen, in ``OUT/<task>/<name>``:
s3prl's logs and the prediction files SUPERB scores stay there. A pair already done (its
``test.json``) is read back, so running the command again resumes where it stopped.
``OUT/superb.json`` and ``OUT/superb.md`` hold the table: each task's test accuracy per
checkpoint (accuracy, or WER for ASR), beside HuBERT Base's published figure. The tasks that run here are
``downstream.SUPERB_TASKS`` (PR, KS, IC, SID, ER, ASR, ASV, SD); ``recipes/superb/README.md`` has the others.

``--lrs`` searches the learning rate as SUPERB's protocol does: one experiment per rate, the one best on
dev is the one tested. ``--submit NAME`` packages that checkpoint's predictions as s3prl's submission script does
(``predict/<task>_public/predict.*`` in ``OUT/submission/predict.zip``), with ``manifest.json``: the
checkpoint's sha256, its federated round and updates, the federation's settings, what each file
came from, and every SUPERB task the package leaves out.
"""

import hashlib
import json
import logging
import re
import statistics
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from fedhubert_plugin.checkpoints import load_checkpoint
from fedhubert_plugin.downstream import SUPERB_TASKS, superb_task
from fedhubert_plugin.export import named_checkpoints, random_init_checkpoint
from fedhubert_plugin.files import atomic_write_json, atomic_write_text
from fedhubert_plugin.options import REQUIRED, option
from fedhubert_plugin.recipes import RECIPES_DIR

logger = logging.getLogger(__name__)

CONFIGS = RECIPES_DIR / "superb"
# HuBERT Base in the SUPERB paper (Yang et al., Interspeech 2021, arXiv:2105.01051): accuracy or WER (no LM), in %
HUBERT_BASE_PUBLISHED = {
    "pr": 5.41,
    "ks": 96.30,
    "ic": 98.34,
    "sid": 81.42,
    "er": 64.92,
    "asr": 6.42,
    "asv": 5.11,
    "sd": 5.88,
}
METRICS = {
    "accuracy": "test accuracy (%)",
    "wer": "test WER (%), no LM",
    "per": "test PER (%)",
    "eer": "test EER (%), best saved checkpoint",
    "der": "test DER (%), s3prl's frame-level (SUPERB's: dscore on the RTTM)",
}
# where `fedhubert toy-data --superb` puts each task's data, in SUPERB_TASKS' order
TOY_DATA = {
    "pr": ("LibriSpeech", "pr/phoneme.txt", "pr/lexicon.txt"),
    "ks": ("speech_commands/train", "speech_commands/test"),
    "ic": ("fluent_speech_commands",),
    "sid": ("voxceleb1", "voxceleb1/iden_split.txt"),
    "er": ("iemocap", "iemocap/meta_data"),
    "asr": ("LibriSpeech", "asr/len_for_bucket", "asr/char.dict"),
    "asv": ("voxceleb1", "voxceleb1/veri_dev.txt", "voxceleb1/veri_test.txt"),
    "sd": ("diarization/train", "diarization/dev", "diarization/test"),
}
# the files (or folders) of each task's experiment that SUPERB scores, and where s3prl's submit/submit.py puts them
# ({fold}: ER's)
PREDICTIONS = {
    "pr": [("test-hyp.ark", "pr_public/predict.ark")],
    "ks": [("test_predict.txt", "ks_public/predict.txt")],
    "ic": [("test_predict.csv", "ic_public/predict.csv")],
    "sid": [("test_predict.txt", "sid_public/predict.txt")],
    "er": [("test_fold{fold}_predict.txt", "er_fold{fold}_public/predict.txt")],
    "asr": [("test-clean-noLM-hyp.ark", "asr_public/predict.ark")],
    "asv": [("test_predict.txt", "sv_public/predict.txt")],
    "sd": [("scoring/predictions", "sd_public/scoring/predictions"), ("frame_shift", "sd_public/frame_shift")],
}
ALL_TASKS = ("pr", "ks", "ic", "sid", "er", "asr", "qbe", "sf", "asv", "sd")  # SUPERB's ten


@dataclass
class SuperbConfig:
    """Options of ``fedhubert superb``: the argument of ``run_superb``."""

    checkpoint: List[str] = option(
        REQUIRED, "a checkpoint (either format) and its name in the table; repeat", repeat=True, metavar="NAME=PATH"
    )
    out: Path = option(REQUIRED, "output folder: OUT/<task>/<name>/ (s3prl's experiments), superb.json, superb.md")
    tasks: List[str] = option(list(SUPERB_TASKS), "SUPERB tasks to run", choices=tuple(SUPERB_TASKS))
    toy: Optional[Path] = option(
        None, "a `fedhubert toy-data --superb` folder: every task's data from it, and the *_tiny configs", one_of="data"
    )
    data: List[str] = option(
        [],
        "a task's data paths in run_superb.sh's order, e.g. sid=/VoxCeleb1,/VoxCeleb1/iden_split.txt; repeat per task",
        repeat=True,
        metavar="TASK=PATHS",
        one_of="data",
    )
    random_init: bool = option(False, "also each checkpoint's architecture with fresh weights (seeded)")
    seed: int = option(0, "seed of the random init")
    lrs: List[float] = option(
        [],
        "learning rates to search, as SUPERB's protocol does: each trained, the one best on dev is tested "
        "(default: the config's)",
        metavar="LR",
    )
    submit: Optional[str] = option(
        None, "package this checkpoint's predictions (a --checkpoint NAME) as SUPERB's predict.zip", metavar="NAME"
    )


def task_data(cfg: SuperbConfig) -> Dict[str, List[Path]]:
    """Each task's data paths, from ``--toy`` or ``--data``; a task without any is named with the fix."""
    if cfg.toy:
        return {task: [Path(cfg.toy) / part for part in TOY_DATA[task]] for task in cfg.tasks}
    given = {}
    for entry in cfg.data:
        task, sep, paths = entry.partition("=")
        if not sep or task not in SUPERB_TASKS:
            raise ValueError(f"--data {entry}: give TASK=PATH[,PATH], TASK one of {', '.join(SUPERB_TASKS)}")
        given[task] = [Path(path) for path in paths.split(",")]
    missing = [task for task in cfg.tasks if task not in given]
    if missing:
        keys = "; ".join(
            f"{task}: {', '.join(k.split('.')[-1] for k in SUPERB_TASKS[task].data_keys)}" for task in missing
        )
        raise ValueError(f"no data for {', '.join(missing)}: pass --data TASK=PATHS ({keys}) or --toy")
    return given


def upstreams(cfg: SuperbConfig) -> Dict[str, Path]:
    """The checkpoints by name, with their random-init twins (written once under ``OUT/random_init``)."""
    named = named_checkpoints(cfg.checkpoint)
    if cfg.random_init:
        for name, path in list(named.items()):
            fresh = Path(cfg.out) / "random_init" / f"{folder_name(name)}.pt"
            if not fresh.is_file():
                fresh.parent.mkdir(parents=True, exist_ok=True)
                random_init_checkpoint(path, fresh, cfg.seed)
            named[f"{name} (random init)"] = fresh
    return named


def metric_label(task: str) -> str:
    """What a task's figure is: ``test accuracy (%)``, with ``mean of 5 folds`` where SUPERB averages folds."""
    spec = SUPERB_TASKS[task]
    return METRICS[spec.metric] + (f", mean of {spec.folds} folds" if spec.folds > 1 else "")


def folder_name(name: str) -> str:
    """A checkpoint's name as a folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def run_superb(cfg: SuperbConfig) -> str:
    """Every task of ``cfg`` on every checkpoint (resuming those done); the table, written to ``cfg.out`` as
    ``superb.json`` and ``superb.md`` (returned)."""
    data, models = task_data(cfg), upstreams(cfg)
    scores: Dict[str, Dict[str, float]] = {}
    experiments: Dict[str, Dict[str, List[str]]] = {}
    for task in cfg.tasks:
        config = CONFIGS / f"{task}{'_tiny' if cfg.toy else ''}.yaml"
        for name, ckpt in models.items():
            runs = [
                best_on_dev(task, ckpt, exp, config, data[task], cfg.lrs, overrides)
                for exp, overrides in fold_experiments(task, Path(cfg.out) / task / folder_name(name))
            ]
            scores.setdefault(task, {})[name] = statistics.fmean(result["score"] for _, result in runs)
            experiments.setdefault(task, {})[name] = [str(exp) for exp, _ in runs]
            for exp, result in runs:
                logger.info("SUPERB %s, %s: test %s %.2f %% (%s)", task, name, result["metric"], result["score"], exp)
    table = {
        "checkpoints": {name: str(path) for name, path in models.items()},
        "metrics": {task: metric_label(task) for task in cfg.tasks},
        "scores": scores,
        "experiments": experiments,
        "hubert_base_published": {task: HUBERT_BASE_PUBLISHED[task] for task in cfg.tasks},
        "configs": "*_tiny.yaml (toy data)" if cfg.toy else "the SUPERB configs",
    }
    markdown = superb_markdown(table, list(models))
    atomic_write_json(Path(cfg.out) / "superb.json", table)
    atomic_write_text(Path(cfg.out) / "superb.md", markdown)
    if cfg.submit:
        write_submission(Path(cfg.out), cfg.submit, models, experiments)
    return markdown


def fold_experiments(task: str, exp: Path) -> List[Tuple[Path, List[str]]]:
    """A task's experiment folder and its s3prl overrides: ``exp``, or one ``exp/fold<n>`` per fold SUPERB
    averages (ER), each testing its own fold."""
    folds = SUPERB_TASKS[task].folds
    if folds == 1:
        return [(exp, [])]
    return [(exp / f"fold{n}", [f"config.downstream_expert.datarc.test_fold=fold{n}"]) for n in range(1, folds + 1)]


def best_on_dev(
    task: str, ckpt: Path, exp: Path, config: Path, data: List[Path], lrs: Sequence[float], overrides: List[str]
) -> Tuple[Path, Dict]:
    """The experiment of ``task`` on ``ckpt`` in ``exp`` (with s3prl ``overrides``) and its result; with ``lrs``,
    one in ``exp/lr_<lr>`` per learning rate, and the one whose best dev score is best."""
    if not lrs:
        return exp, superb_task(task, ckpt, exp, config, data, overrides)
    runs = {}
    for lr in lrs:
        folder = exp / f"lr_{lr:g}"
        runs[folder] = superb_task(task, ckpt, folder, config, data, [*overrides, f"config.optimizer.lr={lr}"])
    best = SUPERB_TASKS[task].best([result["dev_score"] for result in runs.values()])
    return next((folder, result) for folder, result in runs.items() if result["dev_score"] == best)


def write_submission(
    out: Path, name: str, models: Dict[str, Path], experiments: Dict[str, Dict[str, List[str]]]
) -> Path:
    """``out/submission/predict.zip`` of checkpoint ``name``'s predictions (its experiments of each task, one per
    fold, in ``experiments``) in s3prl's submission layout, and ``manifest.json`` beside it; a prediction file
    missing from an experiment stops it, naming the file."""
    if name not in models:
        raise ValueError(f"--submit {name}: not a --checkpoint name; choose one of {', '.join(models)}")
    sources = {
        target.format(fold=fold): Path(exp) / source.format(fold=fold)
        for task, runs in experiments.items()
        for fold, exp in enumerate(runs[name], start=1)
        for source, target in PREDICTIONS[task]
    }
    missing = [str(path) for path in sources.values() if not path.exists()]
    if missing:
        raise FileNotFoundError(f"--submit {name}: no prediction file {', '.join(missing)}; rerun those tasks")
    folder = out / "submission"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "predict.zip", "w", zipfile.ZIP_DEFLATED) as package:
        for target, source in sources.items():  # a folder (SD's predictions) goes in file by file
            files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
            for path in files:
                inside = f"/{path.relative_to(source)}" if source.is_dir() else ""
                package.write(path, f"predict/{target}{inside}")
    left_out = [task for task in ALL_TASKS if task not in experiments]
    logger.warning("the SUPERB package leaves out %s: not run here (recipes/superb/README.md)", ", ".join(left_out))
    atomic_write_json(folder / "manifest.json", manifest(models[name], sources, left_out))
    return folder / "predict.zip"


def manifest(ckpt: Path, sources: Dict[str, Path], left_out: List[str]) -> Dict:
    """Where a submission comes from: the checkpoint (sha256, federated round, updates), the federation's
    ``settings.json`` when it sits beside the checkpoint, each task's prediction file, the tasks left out."""
    state = load_checkpoint(ckpt)
    history = state.get("optimizer_history") or [{}]
    settings = Path(ckpt).parent / "settings.json"
    return {
        "checkpoint": str(ckpt),
        "sha256": hashlib.sha256(Path(ckpt).read_bytes()).hexdigest(),
        "federated_round": (state.get("extra_state") or {}).get("federated_round"),
        "num_updates": history[-1].get("num_updates"),
        "federation_settings": json.loads(settings.read_text()) if settings.is_file() else None,
        "predictions": {target: str(source) for target, source in sources.items()},
        "left_out": left_out,
    }


def superb_markdown(table: Dict, names: Sequence[str]) -> str:
    """``superb.md``: a row per task, a column per checkpoint, then HuBERT Base's published figure."""
    lines = [
        "| task | metric | " + " | ".join(names) + " | HuBERT Base, published |",
        "| --- | --- | " + " | ".join("---" for _ in names) + " | --- |",
    ]
    for task, by_name in table["scores"].items():
        row = " | ".join(f"{by_name[name]:.2f}" for name in names)
        published = table["hubert_base_published"][task]
        lines.append(f"| {task.upper()} | {table['metrics'][task]} | {row} | {published:.2f} |")
    lines += [
        "",
        f"Configs: {table['configs']}. Published: HuBERT Base in the SUPERB paper (Yang et al., Interspeech 2021), "
        "trained on LibriSpeech 960 h and scored on the full task data; toy runs are not comparable with it.",
    ]
    return "\n".join(lines) + "\n"
