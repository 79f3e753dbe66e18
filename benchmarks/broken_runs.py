"""What broken federated runs of the tiny recipe look like beside the reference curves (issue 30, item 3).

The learning-curve corpus (16 train speakers, 31 min) and its 4 speaker non-IID clients; FedAdam, 10 local updates,
``--rounds`` rounds, seed 0, for three runs:

- ``healthy``: the defaults;
- ``other_codebook``: clients 2 and 3 train on label ids permuted once (as the labels of another k-means run would
  be: the same frames grouped alike, under other numbers), with their dictionaries unchanged;
- ``eta_100x``: the server learning rate 100 times the default (``--eta 1.0``).

Each validation of each run beside the FedAdam reference band at its updates in all (the band the server logs and
stores in ``metrics.jsonl``). Results: ``results/broken_runs.{json,md}``.

    .venv/bin/python benchmarks/broken_runs.py --work /tmp/fedhubert-curves   # about 10 minutes on 2 cores
"""

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Dict, List

import numpy as np
from common import RESULTS, federated, machine_meta, provenance
from quality import corpus, prepared_train

from fedhubert_plugin.federation.server.runlog import PARTICIPATION_FILE, read_metrics

logger = logging.getLogger("broken_runs")

RUNS = {"healthy": [], "other_codebook": [], "eta_100x": ["--eta", "1.0"]}
OTHER_CODEBOOK_CLIENTS = ("client_002", "client_003")


def other_codebook(data: Path, out: Path) -> Path:
    """A copy of the prepared ``data`` whose ``OTHER_CODEBOOK_CLIENTS`` have their label ids permuted."""
    if (out / "prepare.json").is_file():
        return out
    shutil.copytree(data, out, dirs_exist_ok=True)
    n_clusters = json.loads((data / "prepare.json").read_text())["n_clusters"]
    permutation = np.random.default_rng(0).permutation(n_clusters)
    for client in OTHER_CODEBOOK_CLIENTS:
        for split in ("train", "valid"):
            path = out / "clients" / client / "labels" / f"{split}.km"
            lines = path.read_text().splitlines()
            path.write_text("".join(" ".join(str(permutation[int(i)]) for i in line.split()) + "\n" for line in lines))
    return out


def validations_beside_reference(save: Path) -> List[Dict]:
    """Each validation of a run with its updates in all, loss, masked accuracy and the reference band there."""
    rows = []
    for line in read_metrics(save):
        for validation in line["validations"]:
            band = validation.get("reference") or {}
            rows.append(
                {
                    "model_round": validation["model_round"],
                    "updates": validation.get("updates", 0),
                    "loss": validation["metrics"]["loss"],
                    "acc_masked": validation["metrics"]["acc_masked"],
                    "loss_band": band.get("loss"),
                    "acc_band": band.get("acc_masked"),
                }
            )
    return rows


def stopped(save: Path, rounds: int) -> str:
    """Empty when the run finished its ``rounds``; else the round it stopped in and its clients' last errors."""
    done = [line["round"] for line in read_metrics(save)]
    if done and done[-1] == rounds:
        return ""
    errors = {row.split("|")[4].strip() for row in (save / "server" / PARTICIPATION_FILE).read_text().splitlines()[2:]}
    return f"stopped after round {done[-1] if done else 0}: " + "; ".join(sorted(e for e in errors if e))


def cell(value: float, band) -> str:
    """``value`` with the band beside it, and a mark when it lies outside."""
    if not band:
        return f"{value:.3f}"
    outside = "" if band[0] <= value <= band[1] else " **outside**"
    return f"{value:.3f} ({band[0]:.3f}–{band[1]:.3f}){outside}"


def table(results: Dict[str, List[Dict]]) -> List[str]:
    """Markdown: per run, the validations of rounds 1, 5, 10 and the last, beside the FedAdam band."""
    rows = [
        "| run | model of round | updates in all | valid loss (band) | masked acc (band) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, validations in results.items():
        last = validations[-1]["model_round"]
        for row in validations:
            if row["model_round"] in (1, 5, 10, last):
                rows.append(
                    f"| {name} | {row['model_round']} | {row['updates']} | {cell(row['loss'], row['loss_band'])} | "
                    f"{cell(row['acc_masked'], row['acc_band'])} |"
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--local-updates", type=int, default=10)
    parser.add_argument("--speakers", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=31)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedhubert-curves"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    toy = corpus(args)
    data = prepared_train(toy, args.work, "speaker", 4)
    sources = {"healthy": data, "other_codebook": other_codebook(data, args.work / "data" / "other_codebook")}
    results, stops = {}, {}
    for name, flags in RUNS.items():
        save = args.work / "broken_runs" / name
        if not (save / "server" / PARTICIPATION_FILE).is_file():
            extra = ["--strategy", "fedadam", "--seed", "0", "--min-train-nodes", "4", *flags]
            try:
                federated(sources.get(name, data), save, args.rounds, args.local_updates, extra=extra)
            except RuntimeError:  # the run stopped: a signature too; its participation table says why
                logger.warning("%s stopped before round %d", name, args.rounds)
        results[name], stops[name] = validations_beside_reference(save), stopped(save, args.rounds)
    meta = machine_meta()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "broken_runs.json").write_text(
        json.dumps({"meta": meta, "args": vars(args), "runs": results, "stopped": stops}, indent=2, default=str) + "\n"
    )
    lines = [
        provenance(meta),
        "",
        f"FedAdam, 4 speaker non-IID clients, {args.local_updates} local updates, {args.rounds} rounds, seed 0, the "
        "tiny recipe; each validation (the clients' valid splits) beside the FedAdam reference band at its updates "
        "in all (docs/training-curves.md). other_codebook: clients 2 and 3's label ids permuted; eta_100x: --eta 1.0.",
        "",
        *table(results),
        "",
        *[f"- {name} {stop}" for name, stop in stops.items() if stop],
    ]
    (RESULTS / "broken_runs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
