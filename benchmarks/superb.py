"""Benchmark: `fedhubert superb` on the toy corpora, for the demo's teacher, student and random init.

Runs `fedhubert demo` from scratch (its federated teacher, distilled student and untrained
model), adds the toy SUPERB corpora to the demo's toy folder (`toy-data --superb`), then runs
every task `fedhubert superb` runs here (PR, KS, IC, SID, ER's five folds, ASR, ASV, SD) with the
*_tiny configs, one task at a time to time it, and packages the teacher's predictions
(`--submit`). Toy scores say how the pipeline behaves, not how good the models are.

    .venv/bin/python benchmarks/superb.py [--work /tmp/fedhubert-superb] [--note "what else ran"]

writes benchmarks/results/superb.json and .md.
"""

import argparse
import json
import shutil
import time
import zipfile
from pathlib import Path

from common import BIN, run, write_results

from fedhubert_plugin.downstream import SUPERB_TASKS
from fedhubert_plugin.superb import SuperbConfig, run_superb
from fedhubert_plugin.toy_superb import write_toy_superb_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedhubert-superb"))
    parser.add_argument("--note", default="", help="appended to the results note, e.g. what shared the machine")
    args = parser.parse_args()
    demo, out = args.work / "demo", args.work / "superb"
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    run([str(BIN / "fedhubert"), "demo", "--out", str(demo)], args.work / "demo.log")
    write_toy_superb_data(demo / "toy", seed=0)
    checkpoints = [
        f"teacher={demo / 'pretrain' / 'server' / 'checkpoint_best.pt'}",
        f"student={demo / 'distill' / 'server' / 'checkpoint_best.pt'}",
        f"random init={demo / 'random_init.pt'}",
    ]
    seconds = {}
    for task in SUPERB_TASKS:
        start = time.perf_counter()
        run_superb(SuperbConfig(checkpoint=checkpoints, out=out, tasks=[task], toy=demo / "toy"))
        seconds[task] = time.perf_counter() - start
    markdown = run_superb(SuperbConfig(checkpoint=checkpoints, out=out, toy=demo / "toy", submit="teacher"))
    table = json.loads((out / "superb.json").read_text())
    with zipfile.ZipFile(out / "submission" / "predict.zip") as package:
        packaged = package.namelist()
    manifest = json.loads((out / "submission" / "manifest.json").read_text())
    lines = markdown.strip().splitlines() + [
        "",
        "| task | seconds per checkpoint (train and test, 2 cores) |",
        "| --- | --- |",
        *(f"| {task.upper()} | {seconds[task] / len(checkpoints):.1f} |" for task in SUPERB_TASKS),
        "",
        f"`--submit teacher`: predict.zip holds {', '.join(packaged)}; the manifest names the teacher's federated "
        f"round {manifest['federated_round']} and leaves out {', '.join(manifest['left_out'])}.",
    ]
    rows = [{"table": table, "seconds": seconds, "packaged": packaged, "manifest": manifest}]
    note = f"The demo's checkpoints, toy corpora, *_tiny configs. {args.note}".strip()
    print(write_results("superb", rows, lines, note))


if __name__ == "__main__":
    main()
