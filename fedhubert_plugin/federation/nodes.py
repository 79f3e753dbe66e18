"""Nodes: where a client's data lives, waiting for nodes to connect, and starting a simulation.

In deployment each SuperNode is one site, started with
``flower-supernode --node-config 'data-dir=/data/client_007'``: its client folder (and, where several
SuperNodes share a machine, ``num-threads=N``: its share of the cores).
In simulation the node config holds Flower's ``partition-id``, and the server names the
prepared data folder, so virtual client ``i`` reads ``DATA/clients/client_{i:03d}``.
"""

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedhubert_plugin import console

logger = logging.getLogger(__name__)


def client_name(index: int) -> str:
    """Folder name of client ``index`` in a prepared data folder."""
    return f"client_{index:03d}"


def client_folder(context: Context, data_root: str) -> Path:
    """This node's client folder: ``data-dir`` from the node config, else the simulated partition's
    under ``data_root``."""
    if "data-dir" in context.node_config:
        folder = Path(str(context.node_config["data-dir"]))
    else:
        folder = Path(data_root) / "clients" / client_name(int(context.node_config["partition-id"]))
    if not (folder / "train.tsv").is_file():
        raise FileNotFoundError(f"client folder {folder} has no train.tsv; run `fedhubert prepare` or fix data-dir")
    return folder


def site_processes(context: Context, configured: int) -> int:
    """``--node-config 'gpus=N'``: this node's client trains on N data-parallel ranks, one per GPU (see
    ``site_trainer``); otherwise what the run configured."""
    return int(context.node_config.get("gpus", configured))


def wait_for_nodes(grid: Grid, needed: int, timeout: float) -> List[int]:
    """The ids of the connected nodes once ``needed`` are; raise after ``timeout`` seconds
    (Flower would wait forever)."""
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < needed:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(nodes)} of the {needed} nodes needed are connected after {timeout:g} s "
                f"(min-available-nodes, round-timeout): start the missing SuperNodes, or lower min-available-nodes"
            )
        time.sleep(0.5)
    return nodes


def ray_backend_config(num_cpus_per_client: float = 1.0, num_gpus_per_client: float = 0.0) -> Dict[str, Any]:
    """Ray settings for a simulation on this machine: loopback only, our own temp dir, no dashboard."""
    temp_dir = os.environ.get("FEDHUBERT_RAY_TMP", os.path.join(tempfile.gettempdir(), f"fedhubert-ray-{os.getuid()}"))
    return {
        "client_resources": {"num_cpus": num_cpus_per_client, "num_gpus": num_gpus_per_client, "max_restarts": -1},
        "init_args": {
            "_node_ip_address": "127.0.0.1",
            "_temp_dir": temp_dir,
            "include_dashboard": False,
            "logging_level": logging.WARNING,
            "log_to_driver": True,
        },
    }


def simulate(server_app: ServerApp, client_app: ClientApp, num_clients: int, backend_config: Dict[str, Any]) -> None:
    """Run the apps with Flower's simulation runtime (Ray), one virtual SuperNode per client."""
    from flwr.simulation import run_simulation  # Ray: not for the ClientApp processes that import this module

    console.apply()
    run_simulation(
        server_app=server_app, client_app=client_app, num_supernodes=num_clients, backend_config=backend_config
    )
