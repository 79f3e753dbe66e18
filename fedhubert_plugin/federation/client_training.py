"""The trainer a client's messages use in this process, and one round of local training or validation with it.

One process (``LocalTrainer``) or, for a site of several GPUs, data-parallel ranks
(``SiteTrainer``); either is built once per process and run configuration and reused by every
client the process serves (a simulation's Ray actor, or a SuperNode's trainer service).
"""

import time
from pathlib import Path
from typing import Dict, Union

import numpy as np
import torch

from fedhubert_plugin.federation.local_trainer import LocalTrainer
from fedhubert_plugin.federation.site_trainer import SiteTrainer
from fedhubert_plugin.federation.wire import NUM_EXAMPLES, ClientConfig, LocalResult

_TRAINERS: Dict[tuple, Union[LocalTrainer, SiteTrainer]] = {}


def local_trainer(config: ClientConfig) -> Union[LocalTrainer, SiteTrainer]:
    """This process's trainer for the run's recipe, overrides, label rate, client lr and ranks (built once,
    reused by every client it serves; a site of several ranks whose ranks ended is built again)."""
    key = (config.recipe, tuple(config.overrides), config.label_rate, config.eta_l, config.site_processes)
    cached = _TRAINERS.get(key)
    if cached is None or (isinstance(cached, SiteTrainer) and not cached.alive):
        for previous in _TRAINERS.values():
            if isinstance(previous, SiteTrainer):
                previous.close()
        _TRAINERS.clear()
        args = (config.recipe, config.overrides, config.label_rate, config.eta_l or None)
        if config.site_processes > 1:
            _TRAINERS[key] = SiteTrainer(config.site_processes, *args)
        else:
            _TRAINERS[key] = LocalTrainer(*args)
    return _TRAINERS[key]


def train_locally(config: ClientConfig, folder: Path, arrays: Dict[str, np.ndarray]) -> LocalResult:
    """One round of local training as the server's message ``config`` asks (updates or epochs, round),
    after validating the received weights when it asks for that too."""
    trainer, start = local_trainer(config), time.perf_counter()
    # masks seeded by the model's round (the one before), as a separate evaluation of that model would be
    validated = trainer.evaluate(folder, arrays, round_seed=config.server_round - 1) if config.validate else None
    validation_seconds = time.perf_counter() - start
    result = trainer.fit(
        folder,
        arrays,
        num_updates=config.num_updates,
        local_updates=config.local_updates,
        local_epochs=config.local_epochs,
        server_round=config.server_round,
        epoch_rounds=config.epoch_rounds,
    )
    if validated is not None:
        result.validation = {**validated.metrics, NUM_EXAMPLES: validated.num_examples}
        result.metrics["validation_seconds"] = validation_seconds
    return result


def evaluate_locally(config: ClientConfig, folder: Path, arrays: Dict[str, np.ndarray]) -> LocalResult:
    """Validation of the received weights on the client's valid split (an evaluate message)."""
    return local_trainer(config).evaluate(folder, arrays, round_seed=config.server_round)


CALLS = {"train": train_locally, "evaluate": evaluate_locally}


def run_call(function: str, threads: int, *args) -> LocalResult:
    """``CALLS[function](*args)`` on ``threads`` torch threads (0: as set). SuperNodes sharing one machine
    should split its cores with ``--node-config 'num-threads=N'`` (each would take them all: training slows
    ~20x on 2 cores shared by 4 nodes)."""
    if threads:
        torch.set_num_threads(threads)
    return CALLS[function](*args)
