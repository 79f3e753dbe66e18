"""What every benchmark records: the machine and versions, and its results as JSON plus a markdown table."""

import datetime
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

from fedhubert_plugin.federation.runlog import read_metrics
from fedhubert_plugin.toy_data import DEV_SUBSET, TRAIN_SUBSET

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RECIPES = REPO / "recipes" / "librispeech" / "pretrain"
RESULTS = Path(__file__).parent / "results"


def machine_meta() -> Dict:
    """Date, machine, CPU threads, GPU and torch version of this run."""
    return {
        "date": datetime.date.today().isoformat(),
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


def write_results(name: str, rows: List[Dict], table: List[str], note: str) -> str:
    """``results/<name>.json`` (meta and rows) and ``results/<name>.md`` (table, then the machine and ``note``)."""
    meta = machine_meta()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    text = "\n".join(table) + (
        f"\n\n{meta['date']}, {meta['machine']}, {meta['threads']} CPU threads, GPU: {meta['gpu']}, "
        f"torch {meta['torch']}; {note}\n"
    )
    (RESULTS / f"{name}.md").write_text(text)
    return text


PEAK_RSS = (
    "import resource, runpy, sys, torch; sys.argv = sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_module('fairseq_cli.hydra_train', run_name='__main__')\n"
    "finally:\n"
    "    print('PEAK_RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, flush=True)\n"
    "    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0\n"
    "    print('PEAK_GPU_MB', gpu, flush=True)"
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


def fairseq_train(shard: Path, save: Path, updates: int, recipe: str = "tiny", extra: List[str] = ()) -> Dict:
    """Plain fairseq-hydra-train on one shard: wall seconds, peak RSS and GPU memory (MB), samples per second."""
    save.mkdir(parents=True, exist_ok=True)
    log = save / "train.log"
    wall = run(
        [
            sys.executable,
            "-c",
            PEAK_RSS,
            "fairseq-hydra-train",
            "--config-dir",
            str(RECIPES),
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
) -> Dict:
    """`fedhubert pretrain`: process wall seconds and its metrics.jsonl lines."""
    shutil.rmtree(save, ignore_errors=True)
    save.mkdir(parents=True)
    wall = run(
        [
            str(BIN / "fedhubert"),
            "pretrain",
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
        save / "pretrain.log",
    )
    lines = read_metrics(save)
    return {"wall_seconds": wall, "rounds": lines, "checkpoint": str(save / "server" / "checkpoint_last.pt")}
