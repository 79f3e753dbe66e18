"""The demo, measured: `fedhubert demo` from scratch in an empty folder, its wall time, and the figures it reports
(keyword spotting per upstream, the phone probe, the losses of its federated runs) in results/demo.{json,md}, which
the README quotes.

    .venv/bin/python benchmarks/demo.py [--work /tmp/fedhubert-demo]
"""

import argparse
import json
import shutil
from pathlib import Path
from typing import Dict, List

from common import BIN, run, write_results

from fedhubert_plugin.federation.server.runlog import read_metrics, validations

UPSTREAMS = ("teacher", "student", "random_init")  # the demo's folders under OUT/downstream


def federated_losses(save: Path, key: str) -> Dict[str, float]:
    """A run's validation loss of the initial and the last model, and its first and last round's train ``key``."""
    lines = read_metrics(save)
    valid = validations(lines)
    return {
        "rounds": len(lines),
        "valid_loss_initial": valid[0]["metrics"]["loss"],
        "valid_loss_last": valid[max(valid)]["metrics"]["loss"],
        f"train_{key}_first": lines[0]["train"][key],
        f"train_{key}_last": lines[-1]["train"][key],
    }


def table(result: Dict) -> List[str]:
    """The KS table, the probe's table as the demo wrote it, and the federated runs' losses."""
    lines = ["| upstream | parameters | KS test accuracy |", "| --- | --- | --- |"]
    for name, ks in result["keyword_spotting"].items():
        lines.append(f"| {name} | {ks['parameters'] / 1e6:.2f} M | {ks['test_acc']:.3f} |")
    pretrain, distill = result["pretrain"], result["distill"]
    return lines + [
        "",
        "Phone probe (the demo's `probe/probe.md`):",
        "",
        result["probe_table"],
        "",
        f"Federated pretraining, {pretrain['rounds']} rounds: valid loss {pretrain['valid_loss_initial']:.2f} → "
        f"{pretrain['valid_loss_last']:.2f}; distillation, {distill['rounds']} rounds: KD loss "
        f"{distill['train_kd_loss_first']:.2f} → {distill['train_kd_loss_last']:.2f}. The whole demo took "
        f"{result['wall_seconds'] / 60:.1f} min.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedhubert-demo"))
    args = parser.parse_args()
    out = args.work / "demo"
    shutil.rmtree(out, ignore_errors=True)
    args.work.mkdir(parents=True, exist_ok=True)
    wall = run([str(BIN / "fedhubert"), "demo", "--out", str(out)], args.work / "demo.log")
    result = {
        "wall_seconds": wall,
        "keyword_spotting": {
            name: json.loads((out / "downstream" / name / "test.json").read_text()) for name in UPSTREAMS
        },
        "probe": json.loads((out / "probe" / "probe.json").read_text()),
        "probe_table": (out / "probe" / "probe.md").read_text().strip(),
        "pretrain": federated_losses(out / "pretrain", "loss"),
        "distill": federated_losses(out / "distill", "kd_loss"),
    }
    print(write_results("demo", [result], table(result), "Toy corpus, 4 clients, the demo's defaults."))


if __name__ == "__main__":
    main()
