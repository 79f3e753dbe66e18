"""What the server keeps on disk across rounds: the initial model, each round's checkpoint, the best model, and
the state that ``--resume`` continues from.

``checkpoint_round{r}.pt`` and ``checkpoint_last.pt`` after every round; whenever a validation of a
round's model (r ≥ 1) is the best so far by the recipe's ``checkpoint.best_checkpoint_metric`` (fairseq's
choice: pretraining's loss, fine-tuning's WER; larger is better with ``maximize_best_checkpoint_metric``), that
model becomes ``checkpoint_best.pt`` and, for a HuBERT (not a fine-tuned CTC model), s3prl's
``best_global_model.pt``. A resumed run continues after the last round whose state was saved, from
that round's own checkpoint, with the same architecture and the same lr schedule.
"""

import logging
import shutil
from typing import Dict, Tuple

import numpy as np
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig

from fedhubert_plugin.checkpoints import (
    check_architecture,
    copy_fitting_tensors,
    load_checkpoint,
    save_fairseq_checkpoint,
    save_s3prl_checkpoint,
)
from fedhubert_plugin.federation.schedule import Schedule
from fedhubert_plugin.federation.server.runlog import Progress, RunLog
from fedhubert_plugin.federation.server.validation import Validation
from fedhubert_plugin.federation.settings import FederationSettings, SettingsError
from fedhubert_plugin.files import atomic_write
from fedhubert_plugin.recipes import recipe_initial_model, task_state

logger = logging.getLogger(__name__)

Weights = Dict[str, np.ndarray]


def initial_model(settings: FederationSettings, schedule: Schedule) -> Tuple[DictConfig, Weights]:
    """The recipe's config (with the run's lr schedule) and seeded initial weights, built on the server without
    client data; with ``init_from`` the fitting tensors of that checkpoint (fine-tuning: fairseq's CTC model
    builds its encoder from it, ``finetuning``)."""
    cfg, weights = recipe_initial_model(
        settings.recipe, schedule.overrides, settings.label_rate, settings.n_clusters, settings.data_root
    )
    if settings.init_from and not cfg.task.get("fine_tuning"):
        weights = copy_fitting_tensors(weights, settings.init_from)
    return cfg, weights


def save_round_checkpoint(
    settings: FederationSettings, cfg: DictConfig, weights: Weights, rnd: int, progress: Progress
) -> None:
    """``checkpoint_round{rnd}.pt`` and ``checkpoint_last.pt``."""
    round_path = settings.server_dir / f"checkpoint_round{rnd}.pt"
    save_fairseq_checkpoint(
        round_path, cfg, weights, task_state(cfg, settings.n_clusters), progress.updates_done, {"federated_round": rnd}
    )
    atomic_write(settings.server_dir / "checkpoint_last.pt", lambda tmp: shutil.copyfile(round_path, tmp))


def best_metric(cfg: DictConfig) -> Tuple[str, bool]:
    """The validation figure that chooses the best model, and whether larger is better (the recipe's
    ``checkpoint`` section, as for fairseq-hydra-train)."""
    return cfg.checkpoint.best_checkpoint_metric, bool(cfg.checkpoint.maximize_best_checkpoint_metric)


def keep_if_best(
    settings: FederationSettings, cfg: DictConfig, weights: Weights, validation: Validation, progress: Progress
) -> None:
    """When ``validation`` of the model of a round ≥ 1 (``weights``) is the best so far (``best_metric``), that
    model becomes ``checkpoint_best.pt`` and, unless fine-tuned, ``best_global_model.pt``."""
    rnd, score = validation.model_round, validation.score(*best_metric(cfg))
    if rnd < 1 or not score < progress.best_score:
        return
    progress.best_score, progress.best_round = score, rnd
    server_dir = settings.server_dir
    round_path = server_dir / f"checkpoint_round{rnd}.pt"
    atomic_write(server_dir / "checkpoint_best.pt", lambda tmp: shutil.copyfile(round_path, tmp))
    if not cfg.task.get("fine_tuning"):
        save_s3prl_checkpoint(server_dir / "best_global_model.pt", cfg, weights, settings.n_clusters)


def check_same_schedule(settings: FederationSettings, saved: Dict[str, int], schedule: Schedule) -> None:
    """A resumed run must train on the lr schedule its completed rounds trained on: resuming then equals an
    uninterrupted run. ``SettingsError`` naming both schedules and the fixes when it would change (a state saved
    before schedules were sized to the run has none to compare)."""
    if saved and saved != schedule.key:
        raise SettingsError(
            f"resume: the rounds in {settings.server_dir} trained on the lr schedule {saved}; these settings give "
            f"{schedule.key} (the schedule is sized to num-server-rounds x local-updates). Resuming would change the "
            f"schedule under the rounds already trained. Resume with the first run's --num-server-rounds and "
            f"--local-updates; to train further, start a new run from its weights (--init-from "
            f"{settings.server_dir / 'checkpoint_last.pt'}); to plan for extending a run, give "
            f"optimization.max_update for the longest run from its start"
        )


def resume(
    settings: FederationSettings, strategy: Strategy, log: RunLog, weights: Weights, schedule: Schedule
) -> Tuple[Progress, Weights]:
    """With ``resume`` and a saved state: the progress and the weights of the last completed round."""
    if not settings.resume or not log.state_path.is_file():
        if settings.resume:
            logger.info("resume: no server state in %s, starting at round 1", settings.server_dir)
        return Progress(schedule=schedule.key), weights
    progress = log.restore_state(strategy)
    # the round's own checkpoint: checkpoint_last.pt may already hold a round killed before its state was saved
    last = settings.server_dir / f"checkpoint_round{progress.round_done}.pt"
    resumed = load_checkpoint(last)["model"]
    check_architecture(weights, resumed, last, f"{settings.recipe} {' '.join(settings.overrides)}".strip())
    check_same_schedule(settings, progress.schedule, schedule)
    progress.schedule = schedule.key
    logger.info("resuming after round %d (best model so far: round %d's)", progress.round_done, progress.best_round)
    return progress, {k: v.numpy() for k, v in resumed.items()}
