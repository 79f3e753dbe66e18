"""Server memory and round time against clients per round, with HuBERT Base's tensors.

A stand-in client keeps Base's 95 M parameters (380 MB in float32) and makes training free: it
replies with the weights it received plus small noise, through the real wire format, Flower's
simulation runtime and our screening and aggregation (`rounds.train_round`, FedAdam). Each
configuration runs in its own process and reports the server's peak RSS during the rounds above
its RSS before the first round (sampled every 20 ms), in units of the model's size, and the
round's seconds: replies folded as they arrive (streaming) against the list of every reply (what
FedMedian, Krum or DP still hold). In simulation the server process also hosts Flower's
in-memory SuperLink, which keeps the round's messages until they are pulled.

    .venv/bin/python benchmarks/server_memory.py [--clients 2 4 8] [--rounds 2]
"""

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict

import numpy as np

CHILD = "--child"


def rss_mb() -> float:
    """This process's resident memory now (MB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class PeakSampler(threading.Thread):
    """The highest RSS of this process while running, sampled every 20 ms (ru_maxrss would include set-up)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_mb, self.running = rss_mb(), True

    def run(self) -> None:
        while self.running:
            self.peak_mb = max(self.peak_mb, rss_mb())
            time.sleep(0.02)


def measure(clients: int, streaming: bool, rounds: int) -> Dict:
    """One configuration, in this process: the server's peak RSS above its start and the mean round seconds."""
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp

    from fedhubert_plugin.federation.nodes import client_name, ray_backend_config, simulate, wait_for_nodes
    from fedhubert_plugin.federation.rounds import train_round
    from fedhubert_plugin.federation.screening import ScreenedStrategy
    from fedhubert_plugin.federation.settings import FederationSettings
    from fedhubert_plugin.federation.strategies import base_strategy
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
        result.update(model_mb=model_mb, start_rss_mb=start_rss, peak_rss_mb=sampler.peak_mb)
        result["round_seconds"] = float(np.mean(seconds))

    simulate(server, stand_in, clients, ray_backend_config(num_cpus_per_client=1.0))
    return {
        "clients": clients,
        "streaming": streaming,
        **result,
        "peak_above_start_in_models": (result["peak_rss_mb"] - result["start_rss_mb"]) / result["model_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(CHILD, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(int(args.child[0]), args.child[1] == "stream", args.rounds)))
        return
    from common import REPO, write_results

    rows = []
    for clients in args.clients:
        for mode in ("stream", "list"):
            done = subprocess.run(
                [sys.executable, __file__, CHILD, str(clients), mode, "--rounds", str(args.rounds)],
                capture_output=True,
                text=True,
                cwd=REPO,
            )
            if done.returncode:
                raise RuntimeError(f"{clients} clients, {mode}: {done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    table = [
        "| clients per round | aggregation | server peak RSS above start | in models (380 MB) | round seconds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        table.append(
            f"| {row['clients']} | {'streaming' if row['streaming'] else 'list of replies'} | "
            f"{row['peak_rss_mb'] - row['start_rss_mb']:.0f} MB | {row['peak_above_start_in_models']:.1f} | "
            f"{row['round_seconds']:.1f} |"
        )
    note = "stand-in clients (no training) with HuBERT Base's tensors, FedAdam, Flower's simulation runtime."
    print(write_results("server_memory", rows, table, note))


if __name__ == "__main__":
    main()
