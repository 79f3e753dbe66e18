"""Deployment rounds against simulation rounds: the same 4 clients, tiny recipe, K local updates.

Simulation: `fedhubert pretrain` (Flower's simulation runtime; a Ray actor process serves every
round). Deployment: `flower-superlink`, one `flower-supernode` per client on 127.0.0.1 and `flwr run`
(each message starts a new ClientApp process). Per round: wall seconds and, per client (the slowest),
start-up (its process start to the message: interpreter and imports), set-up (recipe, model,
dataset index), validation of the received model, training and serialization; the rest of the
round is Flower's messaging and the server. Rounds 2 to R-1 are compared: round 1 also starts Ray's
actors (in deployment: the nodes' trainer services), the last one adds the final evaluation.
Where the machine's cores went during the deployment (sampled every 0.25 s, per process kind)
shows what a deployment on one machine pays that a simulation does not.

    .venv/bin/python benchmarks/deployment.py [--rounds 7] [--local-updates 10]
"""

import argparse
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from statistics import mean
from typing import Dict, Iterator, List

import psutil
from common import federated, prepare, write_results

from fedhubert_plugin.testing.loopback import LoopbackFederation
from fedhubert_plugin.toy_data import write_toy_data

PARTS = (
    "startup_seconds",
    "trainer_start_seconds",
    "setup_seconds",
    "validation_seconds",
    "seconds",
    "serialize_seconds",
)
# the process kinds of a simulation and of a deployment, by what their name and command line hold (first match)
KINDS = {
    "ray::": "Ray actors (simulation: training)",
    "raylet": "Ray's own processes",
    "gcs_server": "Ray's own processes",
    "fedhubert pretrain": "fedhubert pretrain (simulation: ServerApp)",
    "federation.client.service": "trainer services (deployment: training)",
    "flwr-clientapp": "ClientApp processes (one per message)",
    "flower-superexec": "SuperExecs",
    "flower-supernode": "SuperNodes",
    "flower-superlink": "SuperLink",
    "flwr-serverapp": "ServerApp",
    "flwr": "flwr run",
}


@contextmanager
def cpu_by_kind(interval: float = 0.25) -> Iterator[Dict[str, float]]:
    """Core-seconds used by each process kind (``KINDS``' labels) while the block runs, sampled every
    ``interval`` seconds (a process's last ``interval`` may be missed)."""
    used: Dict[int, tuple] = {}  # pid: (label, core-seconds when first seen, when last seen)
    stop = threading.Event()

    def sample(started_before: bool = False) -> None:
        for process in psutil.process_iter(["name", "cmdline", "cpu_times"]):
            described = f"{process.info['name']} {' '.join(process.info['cmdline'] or [])}"
            kind = next((k for k in KINDS if k in described), None)
            if kind and process.info["cpu_times"]:
                seconds = process.info["cpu_times"].user + process.info["cpu_times"].system
                first = used[process.pid][1] if process.pid in used else (seconds if started_before else 0.0)
                used[process.pid] = (KINDS[kind], first, seconds)

    def sampling() -> None:
        while not stop.wait(interval):
            sample()

    sample(started_before=True)  # what processes alive now have used already is not counted
    totals: Dict[str, float] = {}
    sampler = threading.Thread(target=sampling, daemon=True)
    sampler.start()
    try:
        yield totals
    finally:
        stop.set()
        sampler.join()
        for label, first, last in used.values():
            totals[label] = totals.get(label, 0.0) + last - first


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
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--local-updates", type=int, default=10)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fedhubert-deployment")
    args = parser.parse_args()
    toy = args.work / "toy"
    if not (toy / "LibriSpeech").is_dir():
        write_toy_data(toy, seed=0)
    data = prepare(toy, args.work / "four_clients", 4)
    with cpu_by_kind() as simulation_cpu:
        simulated = breakdown(federated(data, args.work / "simulation", args.rounds, args.local_updates)["rounds"])
    with cpu_by_kind() as deployment_cpu:
        deployed = breakdown(deployment(data, args.work / "deployment", args.rounds, args.local_updates))
    simulated["cpu"] = {label: seconds / args.rounds for label, seconds in simulation_cpu.items()}
    deployed["cpu"] = {label: seconds / args.rounds for label, seconds in deployment_cpu.items()}
    rows = [{"runtime": "simulation", **simulated}, {"runtime": "deployment", **deployed}]
    table = [
        f"Seconds per round (rounds 2 to {args.rounds - 1}, 4 clients, tiny recipe, {args.local_updates} updates; "
        "client parts: the slowest client)",
        "",
        "| runtime | round | start-up | trainer start | set-up | validation | training | serialization | "
        "Flower and server |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    table += [
        f"| {row['runtime']} | {row['round']:.1f} | "
        + " | ".join(f"{row[p]:.2f}" for p in (*PARTS, "flower_and_server"))
        + " |"
        for row in rows
    ]
    ratio = deployed["round"] / simulated["round"]
    table += ["", f"Deployment round / simulation round: {ratio:.2f} (target ≤ 1.5).", ""]
    table += [
        f"Core-seconds per round by process kind, whole run ({args.rounds} rounds, start included; "
        "sampled every 0.25 s):",
        "",
        "| process kind | simulation | deployment |",
        "| --- | --- | --- |",
    ]
    for label in dict.fromkeys(KINDS.values()):
        table.append(f"| {label} | {simulated['cpu'].get(label, 0.0):.1f} | {deployed['cpu'].get(label, 0.0):.1f} |")
    table.append(f"| all | {sum(simulated['cpu'].values()):.1f} | {sum(deployed['cpu'].values()):.1f} |")
    print(write_results("deployment", rows, table, "SuperLink and SuperNodes on loopback, one machine."))


if __name__ == "__main__":
    main()
