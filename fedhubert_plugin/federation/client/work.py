"""What a client's trainer is built from and what it is asked to do: ``TrainerSpec``, ``FitTask``, ``EvaluateTask``,
and the ``Trainer`` interface they go through.

Specs and tasks are plain dataclasses: they cross to the node's trainer service and to a site's ranks
as they are, and a task names the trainer's method that runs it (``run_on``), so a new kind of work is
a new task with no change to the transport. This module imports neither torch nor fairseq: Flower's
one-message ClientApp processes use it.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Protocol, Tuple

import numpy as np

from fedhubert_plugin.federation.wire import ClientConfig, LocalResult


@dataclass(frozen=True)
class TrainerSpec:
    """What a trainer is built from: the recipe and its overrides, the label rate, the client's peak lr (0: the
    recipe's), the data-parallel ranks of the site (1: one process), and when fine-tuning the pretrained model's
    config (JSON) that the CTC model's encoder is built from."""

    recipe: str
    overrides: Tuple[str, ...] = ()
    label_rate: float = 100.0
    lr: float = 0.0
    processes: int = 1
    encoder_args: str = ""

    @classmethod
    def of(cls, config: ClientConfig) -> "TrainerSpec":
        """The spec of the run a message's ``config`` belongs to."""
        return cls(
            config.recipe,
            tuple(config.overrides),
            config.label_rate,
            config.eta_l,
            config.site_processes,
            config.encoder_args,
        )


@dataclass
class EvaluateTask:
    """Validation of ``arrays`` on the client ``folder``'s valid split; ``round_seed`` seeds its masks."""

    folder: Path
    arrays: Dict[str, np.ndarray]
    round_seed: int = 0

    def run_on(self, trainer: "Trainer") -> LocalResult:
        return trainer.evaluate(self)


@dataclass
class FitTask:
    """One round of local training from ``arrays`` on the client ``folder``: ``local_updates`` updates or
    ``local_epochs`` epochs, from update ``num_updates`` of the lr schedule; ``server_round`` seeds masks and
    batches (with local epochs it also places the round on the client's own schedule of ``epoch_rounds``
    epochs); ``validate``: validate ``arrays`` first (the reply's ``validation``)."""

    folder: Path
    arrays: Dict[str, np.ndarray]
    num_updates: int = 0
    local_updates: int = 0
    local_epochs: int = 0
    server_round: int = 0
    epoch_rounds: int = 0
    validate: bool = False

    @classmethod
    def of(cls, config: ClientConfig, folder: Path, arrays: Dict[str, np.ndarray]) -> "FitTask":
        """The task a train message's ``config`` asks of the client ``folder``."""
        return cls(
            folder,
            arrays,
            config.num_updates,
            config.local_updates,
            config.local_epochs,
            config.server_round,
            config.epoch_rounds,
            config.validate,
        )

    def validation(self) -> EvaluateTask:
        """The validation of the received weights, with masks seeded by their round (the one before)."""
        return EvaluateTask(self.folder, self.arrays, self.server_round - 1)

    def run_on(self, trainer: "Trainer") -> LocalResult:
        return trainer.fit(self)


class Trainer(Protocol):
    """A client's trainer: ``LocalTrainer``, ``SiteTrainer`` or ``ServiceTrainer``."""

    def fit(self, task: FitTask) -> LocalResult: ...

    def evaluate(self, task: EvaluateTask) -> LocalResult: ...
