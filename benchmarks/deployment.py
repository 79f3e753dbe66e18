"""Deployment rounds against simulation rounds: the same 4 clients, tiny recipe, K local updates.

Simulation: `fedhubert pretrain` (Flower's simulation runtime; a Ray actor process serves every
round). Deployment: `flower-superlink`, one `flower-supernode` per client on 127.0.0.1 and `flwr run`
(each message starts a new ClientApp process). Per round: wall seconds and, per client (the slowest),
start-up (its process start to the message: interpreter and imports), set-up (recipe, model,
dataset index), validation of the received model, training and serialization; the rest of the
round is Flower's messaging and the server. Rounds 2 to R-1 are compared: round 1 also starts Ray's
actors, the last one adds the final evaluation.

    .venv/bin/python benchmarks/deployment.py [--rounds 5] [--local-updates 10]
"""

import argparse
import shutil
import tempfile
from pathlib import Path
from statistics import mean
from typing import Dict, List

from common import federated, prepare, write_results

from fedhubert_plugin.federation.loopback import LoopbackFederation
from fedhubert_plugin.toy_data import write_toy_data

PARTS = ("startup_seconds", "setup_seconds", "validation_seconds", "seconds", "serialize_seconds")


def breakdown(lines: List[Dict]) -> Dict[str, float]:
    """Mean over the compared rounds of the round's seconds and its slowest client's parts."""
    compared = lines[1:-1]
    parts = {"round": mean(line["round_seconds"] for line in compared)}
    for part in PARTS:
        parts[part] = mean(
            max(client.get(f"train_{part}", 0.0) for client in line["clients"].values()) for line in compared
        )
    parts["flower_and_server"] = parts["round"] - sum(parts[p] for p in PARTS)
    return parts


def deployment(data: Path, work: Path, rounds: int, updates: int) -> List[Dict]:
    """The run on a loopback SuperLink with one SuperNode per prepared client; its metrics lines."""
    shutil.rmtree(work, ignore_errors=True)
    federation = LoopbackFederation(work)
    try:
        federation.start_superlink()
        for i, folder in enumerate(sorted((data / "clients").iterdir())):
            federation.start_supernode(f"supernode{i}", folder)
        extra = f"local-updates={updates} min-train-nodes=1 min-available-nodes=4 evaluate-every=0"
        return federation.run_rounds(work / "save", rounds, extra)
    finally:
        federation.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-updates", type=int, default=10)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fedhubert-deployment")
    args = parser.parse_args()
    toy = args.work / "toy"
    if not (toy / "LibriSpeech").is_dir():
        write_toy_data(toy, seed=0)
    data = prepare(toy, args.work / "four_clients", 4)
    simulated = breakdown(federated(data, args.work / "simulation", args.rounds, args.local_updates)["rounds"])
    deployed = breakdown(deployment(data, args.work / "deployment", args.rounds, args.local_updates))
    rows = [{"runtime": "simulation", **simulated}, {"runtime": "deployment", **deployed}]
    table = [
        f"Seconds per round (rounds 2 to {args.rounds - 1}, 4 clients, tiny recipe, {args.local_updates} updates; "
        "client parts: the slowest client)",
        "",
        "| runtime | round | start-up | set-up | validation | training | serialization | Flower and server |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    table += [
        f"| {row['runtime']} | {row['round']:.1f} | "
        + " | ".join(f"{row[p]:.2f}" for p in (*PARTS, "flower_and_server"))
        + " |"
        for row in rows
    ]
    ratio = deployed["round"] / simulated["round"]
    table += ["", f"Deployment round / simulation round: {ratio:.2f} (target ≤ 1.5)."]
    print(write_results("deployment", rows, table, "SuperLink and SuperNodes on loopback, one machine."))


if __name__ == "__main__":
    main()
