"""Server memory and round time against clients per round, with HuBERT Base's and Large's tensors.

Stand-in clients keep the model's parameters (Base: 95 M, 361 MiB in float32; Large: 317 M) and make
training free (``server_memory_app/standin.py``): a round goes through the real wire format and our
screening and aggregation (``rounds.train_round``; FedAdam, and deployed also FedAvg, the default). Each
configuration runs in its own process and reports the server's live heap at its peak (tracemalloc), its peak
RSS during the rounds above its RSS before the first round (sampled every 20 ms), in model sizes, split into
the process's own heap (anonymous memory) and shared memory mapped into it, and the round's seconds.

- Simulation, Base at 2 to 64 clients per round (Large: 2 and 4): replies folded as they arrive
  (streaming) against the list of every reply (what FedMedian, Krum or DP still hold). The server
  process also hosts Flower's in-memory SuperLink, whose store holds what is sent and received
  until it is pulled, and maps in Ray's object store, through which simulation hands messages to
  the client actors.
- Deployment on loopback (``flwr run`` of ``server_memory_app``, Base at 2 and 4 clients): the
  ServerApp's own process, as a federation runs it, apart from the SuperLink and the SuperNodes.

    .venv/bin/python benchmarks/server_memory.py [--clients 2 8 16 32 64] [--large-clients 2 4]
        [--deployed-clients 2 4] [--deployed-strategies fedadam fedavg] [--rounds 2]
    .venv/bin/python benchmarks/server_memory.py --render   # results/server_memory.md again from its .json
"""

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from common import REPO, RESULTS, machine_meta, memory_of_this_machine_gib, provenance, write_results

CHILD = "--child"
APP = Path(__file__).parent / "server_memory_app"  # the Flower app that ``--deployment`` runs


def above_start(row: Dict) -> Dict:
    """``row`` with its peaks above the start in model sizes, of each kind of memory."""
    return {
        **row,
        # round 1 also holds the initial weights (allocated before tracing began); later rounds hold only what
        # was allocated since
        "live_in_models": max([row["live_peaks_mb"][0] + row["model_mb"], *row["live_peaks_mb"][1:]]) / row["model_mb"],
        **{
            f"{kind}_above_start_in_models": (row["peak_mb"][kind] - row["start_mb"][kind]) / row["model_mb"]
            for kind in ("rss", "anon", "shmem")
        },
    }


def simulated(clients: int, streaming: bool, rounds: int, size: str) -> Dict:
    """One configuration in Flower's simulation, in this process (which then hosts the server, Flower's
    in-memory SuperLink and the Ray driver)."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from server_memory_app.standin import client_app, initial_weights, measured_rounds

    from fedhubert_plugin.federation.simulation import ray_backend_config, simulate

    initial, result, server = initial_weights(size), {}, ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        result.update(measured_rounds(grid, initial, clients, rounds, streaming))

    # Large: one client actor at a time (each holds about three copies of the model)
    simulate(server, client_app, clients, ray_backend_config(num_cpus_per_client=1.0 if size == "base" else 2.0))
    return above_start(result)


def deployed(clients: int, rounds: int, size: str, strategy: str) -> Dict:
    """One configuration deployed on loopback (``flwr run`` of ``server_memory_app``): the ServerApp's own
    process, apart from the SuperLink and the SuperNodes."""
    from fedhubert_plugin.testing.loopback import LoopbackFederation

    with tempfile.TemporaryDirectory() as tmp:
        # the SuperLink's state in memory: with a state file, its SQLite answered "database is locked" under 4
        # Base clients on 2 cores, and the ServerApp's pull failed with HTTP 500
        federation, out = LoopbackFederation(Path(tmp), state_file=False), Path(tmp) / "row.json"
        try:
            federation.start_superlink()
            for i in range(clients):
                federation.start_supernode(f"supernode_{i}", Path(tmp))
            config = f'clients={clients} rounds={rounds} model="{size}" strategy="{strategy}" out="{out}"'
            done = federation.flwr("run", str(APP), "loopback", "--stream", "--run-config", config, timeout=3600)
            if done.returncode or not out.exists():
                return {"failed": (done.stdout + done.stderr).strip().splitlines()[-1][:200]}
            return above_start(json.loads(out.read_text()))
        finally:
            federation.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="*", default=[2, 8, 16, 32, 64], help="Base, both aggregations")
    parser.add_argument("--large-clients", type=int, nargs="*", default=[2, 4], help="Large, streaming")
    parser.add_argument("--deployed-clients", type=int, nargs="*", default=[2, 4], help="Base, deployed on loopback")
    parser.add_argument("--deployed-strategies", nargs="*", default=["fedadam", "fedavg"], help="deployed rows")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(CHILD, nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--render", action="store_true", help="write the .md again from the stored .json (no run)")
    parser.add_argument(
        "--keep-simulation", action="store_true", help="run only the deployed rows; keep the stored simulation rows"
    )
    args = parser.parse_args()
    if args.render:
        stored = json.loads((RESULTS / "server_memory.json").read_text())
        write(stored["rows"], stored["meta"])
        return
    if args.child:
        clients, mode, size, runtime, strategy = args.child
        if runtime == "simulation":
            print(json.dumps(simulated(int(clients), mode == "stream", args.rounds, size)))
        else:
            print(json.dumps(deployed(int(clients), args.rounds, size, strategy)))
        return
    runs = [("base", n, mode, "simulation", "fedadam") for n in args.clients for mode in ("stream", "list")]
    runs += [("large", n, "stream", "simulation", "fedadam") for n in args.large_clients]
    rows, list_ran_out_at = [], None
    if args.keep_simulation:
        runs, rows = [], stored_simulation_rows()
    runs += [("base", n, "stream", "deployment", s) for s in args.deployed_strategies for n in args.deployed_clients]
    for size, clients, mode, runtime, strategy in runs:
        if mode == "list" and list_ran_out_at:  # more replies than the ones that did not fit
            rows.append({"failed": f"not run: out of memory already at {list_ran_out_at} clients"})
        else:
            child = [CHILD, str(clients), mode, size, runtime, strategy, "--rounds", str(args.rounds)]
            done = subprocess.run([sys.executable, __file__, *child], capture_output=True, text=True, cwd=REPO)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else failed(done))
        rows[-1].update(model=size, clients=clients, streaming=mode == "stream", runtime=runtime, strategy=strategy)
        if mode == "list" and rows[-1].get("failed", "").startswith("out of memory"):
            list_ran_out_at = clients
        print(rows[-1], flush=True)
    write(rows)


def stored_simulation_rows() -> List[Dict]:
    """The simulation rows of ``results/server_memory.json``, each with the provenance of the run that measured it."""
    stored = json.loads((RESULTS / "server_memory.json").read_text())
    return [
        {**row, "run": row.get("run") or provenance(stored["meta"])}
        for row in stored["rows"]
        if row.get("runtime", "simulation") == "simulation"
    ]


def failed(done: subprocess.CompletedProcess) -> Dict:
    """The row of a configuration that did not finish: why, in a line."""
    if "actor was restarted" in done.stderr or "OutOfMemoryError" in done.stderr:
        return {"failed": "out of memory: Ray's memory monitor killed a client actor"}
    return {"failed": done.stderr.strip().splitlines()[-1][:200]}


def write(rows: List[Dict], meta: Optional[Dict] = None) -> None:
    """results/server_memory.json and .md (``meta``: of the run that measured ``rows``; default this one)."""
    meta = meta or machine_meta()
    model_mib = {row.get("model", "base"): row["model_mb"] for row in rows if "model_mb" in row}
    table = [
        "| runtime | model | clients per round | aggregation | live heap at its peak, in models (tracemalloc, "
        "counting the global model) | server peak RSS above start | in models | its own heap (anonymous) above "
        "start, in models | shared memory mapped in, in models | round seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        size, runtime = row.get("model", "base"), row.get("runtime", "simulation")
        how = ("streaming" if row["streaming"] else "list of replies") + f", {row.get('strategy', 'fedadam')}"
        first = f"| {runtime} | {size} ({model_mib[size]:.0f} MiB) | {row['clients']} | {how} |"
        if "failed" in row:
            table.append(f"{first} {row['failed']} | | | | | |")
            continue
        live = f"{row['live_in_models']:.1f}" if "live_in_models" in row else "not measured"
        table.append(
            f"{first} {live} | {row['peak_mb']['rss'] - row['start_mb']['rss']:.0f} MiB | "
            f"{row['rss_above_start_in_models']:.1f} | {row['anon_above_start_in_models']:.1f} | "
            f"{row['shmem_above_start_in_models']:.1f} | {row['round_seconds']:.1f} |"
        )
    streamed = [
        row
        for row in rows
        if row["streaming"]
        and "failed" not in row
        and (row.get("model", "base"), row.get("runtime", "simulation")) == ("base", "simulation")
    ]
    if len(streamed) > 1 and streamed[-1]["clients"] >= 32:  # from fewer, a line through noise
        table += ["", extrapolation(streamed, meta)]
    note = (
        "Stand-in clients (no training) with HuBERT Base's and Large's tensors. Simulation: 2 client "
        "actors at a time (Large: 1); the server process also hosts Flower's in-memory SuperLink, whose message "
        "store holds what is sent and received until it is pulled, and those copies are in its heap. Deployment: "
        "a SuperLink (state in memory) and a SuperNode per client on loopback; the figures are the ServerApp's own "
        "process."
    )
    earlier = sorted({row["run"] for row in rows if "run" in row})
    if earlier:
        note += " The simulation rows come from an earlier run: " + "; ".join(earlier)
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
