"""Server memory and round time against clients per round, with HuBERT Base's tensors.

A stand-in client keeps Base's 95 M parameters (361 MiB in float32) and makes training free: it
replies with the weights it received plus small noise, through the real wire format, Flower's
simulation runtime and our screening and aggregation (`rounds.train_round`, FedAdam). Each
configuration runs in its own process and reports the server's peak RSS during the rounds above
its RSS before the first round (sampled every 20 ms), in units of the model's size, split into
the process's own heap (anonymous memory) and shared memory mapped into it (Ray's object store,
through which simulation hands messages to the client actors), and the round's seconds:
replies folded as they arrive (streaming) against the list of every reply (what FedMedian,
Krum or DP still hold). In simulation the server process also hosts Flower's
in-memory SuperLink, which keeps the round's messages until they are pulled.

    .venv/bin/python benchmarks/server_memory.py [--clients 2 8 16 32 64] [--rounds 2]
    .venv/bin/python benchmarks/server_memory.py --render   # results/server_memory.md again from its .json
"""

import argparse
import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from common import REPO, RESULTS, machine_meta, memory_of_this_machine_gib, write_results

CHILD = "--child"


def rss_mb() -> Dict[str, float]:
    """This process's resident memory now (MB): all of it, its own heap (anonymous), shared memory mapped in."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    kb = {name: int(fields[name].split()[0]) for name in ("VmRSS", "RssAnon", "RssShmem")}
    return {"rss": kb["VmRSS"] / 1024, "anon": kb["RssAnon"] / 1024, "shmem": kb["RssShmem"] / 1024}


class PeakSampler(threading.Thread):
    """The highest RSS of this process while running, of each kind, sampled every 20 ms (ru_maxrss would
    include set-up)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_mb, self.running = rss_mb(), True

    def run(self) -> None:
        while self.running:
            self.peak_mb = {kind: max(mb, self.peak_mb[kind]) for kind, mb in rss_mb().items()}
            time.sleep(0.02)


def measure(clients: int, streaming: bool, rounds: int) -> Dict:
    """One configuration, in this process: the server's peak RSS above its start and the mean round seconds."""
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp

    from fedhubert_plugin.federation.nodes import client_name
    from fedhubert_plugin.federation.server.grid import wait_for_nodes
    from fedhubert_plugin.federation.server.rounds import train_round
    from fedhubert_plugin.federation.server.screening import ScreenedStrategy
    from fedhubert_plugin.federation.server.strategies import base_strategy
    from fedhubert_plugin.federation.settings import FederationSettings
    from fedhubert_plugin.federation.simulation import ray_backend_config, simulate
    from fedhubert_plugin.federation.wire import ARRAYS, NUM_EXAMPLES, ClientConfig, arrays_of, client_reply, record_of
    from fedhubert_plugin.recipes import recipe_initial_model

    _, weights = recipe_initial_model("base", ["common.cpu=true"], 50.0, 500)
    model_mb = sum(v.nbytes for v in weights.values()) / 2**20
    settings = FederationSettings(num_server_rounds=rounds, min_available_nodes=clients, min_train_nodes=clients)
    stand_in = ClientApp()

    @stand_in.train()
    def train(msg: Message, context: Context) -> Message:
        received = arrays_of(msg.content[ARRAYS])
        rng = np.random.default_rng(int(context.node_config["partition-id"]))
        trained = {k: v + 1e-4 * rng.standard_normal(v.shape, dtype=np.float32) for k, v in received.items()}
        folder = Path(client_name(int(context.node_config["partition-id"])))
        return client_reply(msg, folder, {NUM_EXAMPLES: 1.0}, **{ARRAYS: record_of(trained)})

    result = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        wait_for_nodes(grid, clients, 600)
        strategy = ScreenedStrategy(base_strategy(settings), 0.0, clients, 3600, streaming=streaming)
        current, seconds, start_rss, sampler = dict(weights), [], rss_mb(), PeakSampler()
        sampler.start()
        for rnd in range(1, rounds + 1):
            tic = time.perf_counter()
            current = train_round(grid, rnd, strategy, current, ClientConfig.of(settings), settings, {}).weights
            seconds.append(time.perf_counter() - tic)
        sampler.running = False
        sampler.join()
        result.update(model_mb=model_mb, start_mb=start_rss, peak_mb=sampler.peak_mb)
        result["round_seconds"] = float(np.mean(seconds))

    simulate(server, stand_in, clients, ray_backend_config(num_cpus_per_client=1.0))
    return {
        "clients": clients,
        "streaming": streaming,
        **result,
        **{
            f"{kind}_above_start_in_models": (result["peak_mb"][kind] - result["start_mb"][kind]) / result["model_mb"]
            for kind in ("rss", "anon", "shmem")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 8, 16, 32, 64])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(CHILD, nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--render", action="store_true", help="write the .md again from the stored .json (no run)")
    args = parser.parse_args()
    if args.render:
        stored = json.loads((RESULTS / "server_memory.json").read_text())
        write(stored["rows"], stored["meta"])
        return
    if args.child:
        print(json.dumps(measure(int(args.child[0]), args.child[1] == "stream", args.rounds)))
        return
    rows, list_ran_out_at = [], None
    for clients in args.clients:
        for mode in ("stream", "list"):
            if mode == "list" and list_ran_out_at:  # more replies than the ones that did not fit
                rows.append({"failed": f"not run: out of memory already at {list_ran_out_at} clients"})
                rows[-1].update(clients=clients, streaming=False)
                continue
            done = subprocess.run(
                [sys.executable, __file__, CHILD, str(clients), mode, "--rounds", str(args.rounds)],
                capture_output=True,
                text=True,
                cwd=REPO,
            )
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else failed(done))
            rows[-1].update(clients=clients, streaming=mode == "stream")
            if mode == "list" and rows[-1].get("failed", "").startswith("out of memory"):
                list_ran_out_at = clients
            print(rows[-1], flush=True)
    write(rows)


def failed(done: subprocess.CompletedProcess) -> Dict:
    """The row of a configuration that did not finish: why, in a line."""
    if "actor was restarted" in done.stderr or "OutOfMemoryError" in done.stderr:
        return {"failed": "out of memory: Ray's memory monitor killed a client actor"}
    return {"failed": done.stderr.strip().splitlines()[-1][:200]}


def write(rows: List[Dict], meta: Optional[Dict] = None) -> None:
    """results/server_memory.json and .md (``meta``: of the run that measured ``rows``; default this one)."""
    meta = meta or machine_meta()
    model_mib = next(row["model_mb"] for row in rows if "model_mb" in row)
    table = [
        f"| clients per round | aggregation | server peak RSS above start | in model sizes ({model_mib:.0f} MiB) "
        "| its own heap (anonymous), in models | shared memory mapped in, in models | round seconds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        how = "streaming" if row["streaming"] else "list of replies"
        if "failed" in row:
            table.append(f"| {row['clients']} | {how} | {row['failed']} | | | | |")
            continue
        table.append(
            f"| {row['clients']} | {how} | "
            f"{row['peak_mb']['rss'] - row['start_mb']['rss']:.0f} MiB | {row['rss_above_start_in_models']:.1f} | "
            f"{row['anon_above_start_in_models']:.1f} | {row['shmem_above_start_in_models']:.1f} | "
            f"{row['round_seconds']:.1f} |"
        )
    streamed = [row for row in rows if row["streaming"] and "failed" not in row]
    table += ["", extrapolation(streamed, meta)]
    note = (
        "Stand-in clients (no training) with HuBERT Base's tensors, FedAdam, Flower's simulation runtime, "
        "2 client actors at a time."
    )
    print(write_results("server_memory", rows, table, note, meta))


def extrapolation(streamed: List[Dict], meta: Dict, clients: int = 1000) -> str:
    """Streaming at ``clients`` per round, extended linearly from the smallest and the largest run measured, against
    the memory and cores of the machine that measured them (``meta``; runs stored before it recorded its memory:
    this machine's)."""
    first, last = streamed[0], streamed[-1]

    def at(key: str) -> float:
        slope = (last[key] - first[key]) / (last["clients"] - first["clients"])
        return last[key] + slope * (clients - last["clients"])

    heap, seconds = at("anon_above_start_in_models"), at("round_seconds")
    shared = last["shmem_above_start_in_models"] + math.log2(clients / last["clients"])  # ~1 more per doubling
    gib = (heap + shared) * last["model_mb"] / 1024
    memory_gib = meta.get("memory_gib") or memory_of_this_machine_gib()
    fits = "fits in" if gib < memory_gib else "does not fit in"
    return (
        f"At {clients} clients per round, streaming (linear from {first['clients']} and {last['clients']} clients): "
        f"a heap of {heap:.1f} model sizes plus Ray's store, {shared:.0f} (one more per doubling of the clients), "
        f"about {gib:.0f} GiB, which {fits} this machine's {memory_gib:.0f} GiB; "
        f"{seconds / 60:.0f} min a round on its {meta['threads']} CPU threads."
    )


if __name__ == "__main__":
    main()
