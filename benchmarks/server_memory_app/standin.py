"""Stand-in clients and a ServerApp that measures its own memory, for ``benchmarks/server_memory.py``.

A stand-in client makes training free: it replies with the weights it received plus small noise,
through the real wire format. The ServerApp runs rounds (FedAdam, or the run config's strategy) with
our screening and aggregation (``rounds.train_round``), samples its own resident memory every 20 ms
and traces what Python and numpy allocate (``tracemalloc``). Simulation imports these; ``flwr run``
deploys this folder as a Flower app (``pyproject.toml``), where the ServerApp has its own process,
apart from the SuperLink's.
"""

import json
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Dict, List

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedhubert_plugin.federation.server.grid import wait_for_nodes
from fedhubert_plugin.federation.server.rounds import train_round
from fedhubert_plugin.federation.server.screening import ScreenedStrategy
from fedhubert_plugin.federation.server.strategies import base_strategy
from fedhubert_plugin.federation.settings import FederationSettings
from fedhubert_plugin.federation.wire import (
    ARRAYS,
    NUM_EXAMPLES,
    ClientConfig,
    arrays_of,
    client_reply,
    record_of,
    views_of,
)
from fedhubert_plugin.recipes import recipe_initial_model


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


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    received = arrays_of(msg.content[ARRAYS])
    rng = np.random.default_rng(context.node_id % 2**32)
    trained = {k: v + 1e-4 * rng.standard_normal(v.shape, dtype=np.float32) for k, v in received.items()}
    folder = Path(f"node_{context.node_id}")  # a name of its own per node
    return client_reply(msg, folder, {NUM_EXAMPLES: 1.0}, **{ARRAYS: record_of(trained)})


def initial_weights(size: str) -> List[Dict[str, np.ndarray]]:
    """The recipe's initial weights (``size``: base or large), in a list the server empties: the server holds
    them at its start, as a server does, and lets them go once round 1 made the next model."""
    return [recipe_initial_model(size, ["common.cpu=true"], 50.0, 500)[1]]


def measured_rounds(
    grid: Grid,
    initial: List[Dict[str, np.ndarray]],
    clients: int,
    rounds: int,
    streaming: bool,
    strategy_name: str = "fedadam",
):
    """Rounds of ``strategy_name`` from ``initial``: the model's MiB, the RSS at the start and its peak, the mean round
    seconds."""
    settings = FederationSettings(
        num_server_rounds=rounds, strategy=strategy_name, min_available_nodes=clients, min_train_nodes=clients
    )
    wait_for_nodes(grid, clients, 600)
    strategy = ScreenedStrategy(base_strategy(settings), 0.0, clients, 3600, streaming=streaming)
    current, seconds = views_of(record_of(initial.pop())), []  # held once, as the server holds them
    model_mb = sum(v.nbytes for v in current.values()) / 2**20
    start_rss, sampler = rss_mb(), PeakSampler()
    sampler.start()
    tracemalloc.start()  # what Python and numpy allocated and still hold, which RSS overstates (freed pages kept)
    live_peaks_mb = []  # per round: round 1 also holds the initial weights, which tracemalloc does not see
    for rnd in range(1, rounds + 1):
        tic = time.perf_counter()
        tracemalloc.reset_peak()
        current = train_round(grid, rnd, strategy, current, ClientConfig.of(settings), settings, {}).weights
        seconds.append(time.perf_counter() - tic)
        live_peaks_mb.append(tracemalloc.get_traced_memory()[1] / 2**20)
    tracemalloc.stop()
    sampler.running = False
    sampler.join()
    return {
        "model_mb": model_mb,
        "start_mb": start_rss,
        "peak_mb": sampler.peak_mb,
        "live_peaks_mb": live_peaks_mb,
        "round_seconds": float(np.mean(seconds)),
    }


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    initial = initial_weights(str(config["model"]))
    clients, rounds, strategy = int(config["clients"]), int(config["rounds"]), str(config["strategy"])
    result = measured_rounds(grid, initial, clients, rounds, streaming=True, strategy_name=strategy)
    Path(str(config["out"])).write_text(json.dumps(result))
