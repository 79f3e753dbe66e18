"""What every benchmark records: the machine and versions, and its results as JSON plus a markdown table."""

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from fedhubert_plugin.federation.server.runlog import read_metrics
from fedhubert_plugin.toy_data import DEV_SUBSET, TRAIN_SUBSET

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RECIPES = REPO / "recipes" / "librispeech" / "pretrain"
RESULTS = Path(__file__).parent / "results"


CODE = ("fedhubert_plugin", "upstream", "recipes", "requirements", "setup.cfg", "pyproject.toml", "benchmarks/*.py")


def git_commit() -> str:
    """The commit this run's code is at (short hash), ``+changes`` when the code in the working tree differs from
    it (results and docs do not count: a run writes results); outside a git checkout, ``FEDHUBERT_COMMIT``."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    if head.returncode:  # a copy of the tree without .git, e.g. on a GPU machine: the commit it was copied from
        return os.environ.get("FEDHUBERT_COMMIT", "unknown (not a git checkout)")
    status = ["git", "status", "--porcelain", "--", *CODE]
    dirty = subprocess.run(status, capture_output=True, text=True, cwd=REPO).stdout.strip()
    return head.stdout.strip() + ("+changes" if dirty else "")


def memory_of_this_machine_gib() -> float:
    """This machine's physical memory in GiB."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def machine_meta() -> Dict:
    """Where this run comes from: date, machine, CPU threads, GPU, torch, the commit and the command."""
    return {
        "date": datetime.date.today().isoformat(),
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
        "memory_gib": round(memory_of_this_machine_gib(), 1),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "commit": git_commit(),
        "command": " ".join(["python", str(Path(sys.argv[0]).resolve().relative_to(REPO)), *sys.argv[1:]]),
    }


def provenance(meta: Dict) -> str:
    """The line that opens every results file and section: when, where, from which commit and command."""
    return (
        f"_Run {meta['date']} on {meta['machine']}, {meta['threads']} CPU threads, GPU: {meta['gpu']}, torch "
        f"{meta['torch']}; commit {meta['commit']}; `{meta['command']}`._"
    )


def write_results(name: str, rows: List[Dict], table: List[str], note: str, meta: Optional[Dict] = None) -> str:
    """``results/<name>.json`` (meta and rows) and ``results/<name>.md`` (where it comes from, the table, then
    ``note``); ``meta``: this run's (``machine_meta``) unless given, e.g. to render stored rows again."""
    meta = meta or machine_meta()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    text = "\n".join([provenance(meta), "", *table, "", note]) + "\n"
    (RESULTS / f"{name}.md").write_text(text)
    return text


PEAK_RSS = (
    "import resource, runpy, sys, torch; sys.argv = sys.argv[1:]\n"
    "from fedhubert_plugin.gpu_peak import keep_peak_across_resets, peak_gpu_mb\n"
    "keep_peak_across_resets()\n"
    "try:\n"
    "    runpy.run_module('fairseq_cli.hydra_train', run_name='__main__')\n"
    "finally:\n"
    "    print('PEAK_RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, flush=True)\n"
    "    print('PEAK_GPU_MB', peak_gpu_mb(), flush=True)"
)


def logged(log: Path, name: str) -> float:
    """The number a ``NAME value`` line of ``log`` gives."""
    return float(next(line.split()[1] for line in log.read_text().splitlines() if line.startswith(name + " ")))


def samples_per_second(log: Path) -> float:
    """Utterances per second of fairseq's last JSON train summary (batch size × updates per second)."""
    summaries = [json.loads(line[line.index("{") :]) for line in log.read_text().splitlines() if '"train_ups"' in line]
    return float(summaries[-1]["train_bsz"]) * float(summaries[-1]["train_ups"]) if summaries else float("nan")


def run(cmd: List[str], log: Path, cwd: Path = REPO) -> float:
    """Run ``cmd`` (output to ``log``); its wall seconds. Fails with the log's tail."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed; see {log}:\n" + log.read_text()[-3000:])
    return time.perf_counter() - start


def fairseq_train(
    shard: Path, save: Path, updates: int, recipe: str = "tiny", extra: List[str] = (), config_dir: Path = RECIPES
) -> Dict:
    """Plain fairseq-hydra-train on one shard (``recipe`` in ``config_dir``): wall seconds, peak RSS and GPU memory
    (MB), samples per second."""
    save.mkdir(parents=True, exist_ok=True)
    log = save / "train.log"
    wall = run(
        [
            sys.executable,
            "-c",
            PEAK_RSS,
            "fairseq-hydra-train",
            "--config-dir",
            str(config_dir),
            "--config-name",
            recipe,
            f"task.data={shard}",
            f"task.label_dir={shard / 'labels'}",
            f"common.user_dir={REPO / 'fedhubert_plugin'}",
            f"optimization.max_update={updates}",
            f"checkpoint.save_dir={save / 'checkpoints'}",
            f"common.tensorboard_logdir={save / 'tb'}",
            f"hydra.run.dir={save}",
            *extra,
        ],
        log,
        cwd=save,
    )
    return {
        "wall_seconds": wall,
        "peak_rss_mb": logged(log, "PEAK_RSS_MB"),
        "peak_gpu_mb": logged(log, "PEAK_GPU_MB"),
        "samples_per_second": samples_per_second(log),
        "checkpoint": str(save / "checkpoints" / "checkpoint_last.pt"),
    }


def prepare(toy: Path, out: Path, clients: int, kmeans: str = "federated", *options: str) -> Path:
    """`fedhubert prepare` of the toy corpus for ``clients`` clients (once: kept when ``out`` is done).

    ``options`` are more flags of the command; without ``--subsets`` both toy subsets are prepared.
    """
    if not (out / "prepare.json").is_file():
        subsets = [] if "--subsets" in options else ["--subsets", TRAIN_SUBSET, DEV_SUBSET]
        out.parent.mkdir(parents=True, exist_ok=True)
        run(
            [
                str(BIN / "fedhubert"),
                "prepare",
                "--librispeech-root",
                str(toy / "LibriSpeech"),
                *subsets,
                "--num-clients",
                str(clients),
                "--out",
                str(out),
                "--min-seconds",
                "1.0",
                "--kmeans",
                kmeans,
                *options,
            ],
            out.parent / f"{out.name}.log",
        )
    return out


def federated(
    data: Path,
    save: Path,
    rounds: int,
    updates: int,
    recipe: str = "tiny",
    extra: List[str] = (),
    overrides: List[str] = (),
    command: str = "pretrain",
) -> Dict:
    """`fedhubert pretrain` (or another federated ``command``: distill, finetune): process wall seconds and its
    metrics.jsonl lines."""
    shutil.rmtree(save, ignore_errors=True)
    save.mkdir(parents=True)
    wall = run(
        [
            str(BIN / "fedhubert"),
            command,
            "--data-root",
            str(data),
            "--save-dir",
            str(save),
            "--recipe",
            recipe,
            "--num-server-rounds",
            str(rounds),
            "--local-updates",
            str(updates),
            "--min-train-nodes",
            "1",
            *extra,
            *overrides,
        ],
        save / f"{command}.log",
    )
    lines = read_metrics(save)
    return {"wall_seconds": wall, "rounds": lines, "checkpoint": str(save / "server" / "checkpoint_last.pt")}
