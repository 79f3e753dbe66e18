"""Flower's simulation runtime on this machine: the server's and the clients' apps in one process tree, on Ray.

The one module that wires both sides together; the server and the client packages never import
each other.
"""

import logging
import os
import tempfile
from typing import Any, Dict

import torch
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedhubert_plugin import console
from fedhubert_plugin.federation.client.app import client_app
from fedhubert_plugin.federation.server.app import server_app_for
from fedhubert_plugin.federation.settings import FederationSettings

logger = logging.getLogger(__name__)


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
    from flwr.simulation import run_simulation  # Ray: imported when a simulation runs, not with this module

    console.apply()
    run_simulation(
        server_app=server_app, client_app=client_app, num_supernodes=num_clients, backend_config=backend_config
    )


def gpus_per_client_here(asked: float) -> float:
    """``asked`` GPUs per virtual client, or 0 with a warning on a machine without a GPU (Ray would wait forever
    for a GPU it does not have); a warning too when the machine has a GPU and none is asked for (Ray hides it from
    the clients)."""
    if asked > 0 and not torch.cuda.is_available():
        logger.warning("--gpus-per-client %g: this machine has no GPU; the clients train on CPU", asked)
        return 0.0
    if asked == 0 and torch.cuda.is_available():
        logger.warning(
            "this machine has %d GPU(s) but --gpus-per-client is 0: Ray hides them and the clients train on CPU; "
            "pass --gpus-per-client 1 (or a fraction, to share a GPU)",
            torch.cuda.device_count(),
        )
    return asked


def simulate_pretraining(settings: FederationSettings, num_clients: int) -> None:
    """Run the federation of ``settings`` with Flower's simulation runtime, one virtual SuperNode per client."""
    settings.validate()  # before Ray starts
    simulate(
        server_app_for(settings),
        client_app,
        num_clients,
        ray_backend_config(settings.cpus_per_client, gpus_per_client_here(settings.gpus_per_client)),
    )
