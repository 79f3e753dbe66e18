"""The Flower ServerApp of federated pretraining: settings -> strategy -> round loop.

``server_app`` is the entry of ``flwr run`` (settings from the run config in pyproject.toml);
``server_app_for`` serves ``fedhubert pretrain`` / ``distill`` and the demo, which run Flower's
simulation runtime (``federation.simulation``) with settings they already hold.
"""

import random

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedhubert_plugin.federation.server.finetuning import fine_tuning_settings
from fedhubert_plugin.federation.server.rounds import run_rounds
from fedhubert_plugin.federation.server.strategies import build_strategy
from fedhubert_plugin.federation.settings import FederationSettings, from_run_config


def serve(grid: Grid, settings: FederationSettings) -> None:
    """Validate ``settings`` (of fine-tuning: ``fine_tuning_settings``), seed the server, build the strategy and
    run the rounds."""
    settings = fine_tuning_settings(settings).validate()
    random.seed(settings.seed)
    np.random.seed(settings.seed)  # Flower's DP noise
    run_rounds(grid, settings, build_strategy(settings))


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry of ``flwr run`` (deployment or Flower's own simulation)."""
    serve(grid, from_run_config(context.run_config))


def server_app_for(settings: FederationSettings) -> ServerApp:
    """A ServerApp running the federation of ``settings``."""
    app = ServerApp()

    @app.main()
    def run(grid: Grid, context: Context) -> None:
        serve(grid, settings)

    return app
