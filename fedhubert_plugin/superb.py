"""``fedhubert superb``: SUPERB tasks on one or more checkpoints, one table.

Each task trains and tests s3prl's downstream on every checkpoint, frozen, in ``OUT/<task>/<name>``, where
s3prl's logs and the prediction files SUPERB scores stay. A pair done (its ``test.json``) is read back, so a
rerun resumes. ``OUT/superb.json`` and ``OUT/superb.md`` hold each task's test figure per checkpoint beside
HuBERT Base's published one. The tasks that run here are ``downstream.SUPERB_TASKS`` (PR, KS, IC, SID, ER, ASR,
ASV, SD; ``--asr-lm`` adds ASR with a KenLM model); ``recipes/superb/README.md`` has the others.

``--lrs`` searches the learning rate as SUPERB's protocol does: one experiment per rate, the one best on dev is
tested. ``--submit NAME`` packages that checkpoint's predictions as s3prl's submission script does
(``OUT/submission/predict.zip``), with ``manifest.json``: the checkpoint's sha256, its federated round and
updates, the federation's settings, what each file came from, and every SUPERB task left out.
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
from fedhubert_plugin.console import console_to
from fedhubert_plugin.downstream import SUPERB_TASKS, reported_scores, run_downstream, superb_task
from fedhubert_plugin.export import named_checkpoints, random_init_checkpoint
from fedhubert_plugin.files import atomic_write_json, atomic_write_text
from fedhubert_plugin.options import REQUIRED, option
from fedhubert_plugin.recipes import RECIPES_DIR
from fedhubert_plugin.superb_reference import ALL_TASKS, HUBERT_BASE_PUBLISHED, METRICS, PREDICTIONS, TOY_DATA

logger = logging.getLogger(__name__)

CONFIGS = RECIPES_DIR / "superb"


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
    asr_lm: Optional[Path] = option(None, "ASR with an LM too (SUPERB's ASR-LM): a KenLM model, ARPA or binary")
    asr_lexicon: Optional[Path] = option(None, "the lexicon of --asr-lm: WORD<TAB>W O R D |, a word a line")


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
    if bool(cfg.asr_lm) != bool(cfg.asr_lexicon):
        raise ValueError("--asr-lm and --asr-lexicon go together: a KenLM model and its lexicon")
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
            if task == "asr" and cfg.asr_lm:
                scores.setdefault("asr_lm", {})[name] = asr_with_lm(runs[-1][0], cfg.asr_lm, cfg.asr_lexicon)
                experiments.setdefault("asr_lm", {})[name] = [str(runs[-1][0])]
    table = {
        "checkpoints": {name: str(path) for name, path in models.items()},
        "metrics": {task: METRICS["wer_lm"] if task == "asr_lm" else metric_label(task) for task in scores},
        "scores": scores,
        "experiments": experiments,
        "hubert_base_published": {task: HUBERT_BASE_PUBLISHED[task] for task in scores},
        "configs": "*_tiny.yaml (toy data)" if cfg.toy else "the SUPERB configs",
    }
    markdown = superb_markdown(table, list(models))
    atomic_write_json(Path(cfg.out) / "superb.json", table)
    atomic_write_text(Path(cfg.out) / "superb.md", markdown)
    if cfg.submit:
        write_submission(Path(cfg.out), cfg.submit, models, experiments)
    return markdown


def asr_with_lm(exp: Path, lm: Path, lexicon: Path) -> float:
    """SUPERB's ASR with an LM: s3prl's KenLM decoding, by the checkpoint ASR tested in ``exp``, of test-clean
    (``test-clean-LM-hyp.ark`` beside the no-LM one); its WER in %, kept in ``exp/test_lm.json``."""
    done = Path(exp) / "test_lm.json"
    if not done.is_file():
        tested = Path(exp) / json.loads((Path(exp) / "test.json").read_text())["evaluated"]
        # unk_weight as a float: s3prl's asr expert evals the config's "-math.inf" without importing math
        decoder = {
            "decoder_type": "'kenlm'",
            "kenlm_model": f"'{lm}'",
            "lexicon": f"'{lexicon}'",
            "unk_weight": "-1e30",
        }
        overrides = ",,".join(f"config.downstream_expert.datarc.decoder_args.{k}={v}" for k, v in decoder.items())
        console = Path(exp) / "console_lm.log"
        with console_to(console):
            run_downstream(["-m", "evaluate", "-t", "test-clean", "-e", str(tested), "-o", overrides])
        wer = reported_scores(SUPERB_TASKS["asr"], Path(exp), console, "test-clean")[-1]
        atomic_write_json(done, {"score": wer, "lm": str(lm), "lexicon": str(lexicon)})
    return json.loads(done.read_text())["score"]


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
