"""The clients' learning-rate schedule, sized to the federated run.

A client continues fairseq's schedule on the run's global clock: round ``r`` starts at the
updates done before it. The recipe's ``optimization.max_update`` describes a centralized run, so
a federated run sets it to the updates each client makes over the planned rounds
(``num_server_rounds × local_updates``), and the warm-up keeps the recipe's share of the schedule
(Base: 32,000 of 400,000, 8 %; tiny: 10 of 100), and so does fine-tuning's frozen encoder
(``model.freeze_finetune_updates``, on the same global clock; Base 10 h: 10,000 of 25,000). fairseq's schedulers
derive their own lengths from ``optimization.max_update`` when the recipe is composed (``polynomial_decay``'s
``total_num_update``, ``tri_stage``'s ``phase_ratio``). A user's own ``optimization.max_update`` (or warm-up,
or freeze) is kept as given; one shorter than the run is refused by ``FederationSettings.validate``.

With ``local_epochs`` the server cannot know how many updates an epoch is on a client's private
data, so each client sizes its own schedule the same way from its updates per epoch
(``client_schedule``); the frozen encoder then keeps the recipe's (or the user's) length.
"""

import copy
import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from fedhubert_plugin.federation.settings import MAX_UPDATE, WARMUP, FederationSettings, override_value
from fedhubert_plugin.recipes import compose_recipe

logger = logging.getLogger(__name__)

FREEZE = "model.freeze_finetune_updates"
SCALED = (WARMUP, FREEZE)  # lengths that keep the recipe's share of the schedule


@dataclass
class Schedule:
    """The clients' schedule of a run: its length, its warm-up, and the recipe overrides that set them."""

    max_update: int  # the clients' optimization.max_update; 0: each client sizes its own (local epochs)
    warmup: Optional[int]  # the lr scheduler's warm-up updates (``warmup_of``); None when it has none
    overrides: List[str]  # the run's overrides with the schedule's own appended
    explicit: bool  # the user set optimization.max_update
    epoch_rounds: int = 0  # with local epochs: rounds × local epochs, what each client's schedule spans

    @property
    def key(self) -> Dict[str, int]:
        """What must not change when a run is resumed (``server_state.pt`` keeps it)."""
        return {"max_update": self.max_update, "warmup": self.warmup or 0, "epoch_rounds": self.epoch_rounds}

    def describe(self, settings: FederationSettings) -> str:
        """One log line: how the run's rounds and updates size the schedule."""
        if self.epoch_rounds and not self.explicit:
            return (
                f"lr schedule: each client sizes fairseq's schedule to its own data: {settings.num_server_rounds} "
                f"rounds × {settings.local_epochs} local epochs × its updates per epoch, warm-up the recipe's share"
            )
        planned = settings.num_server_rounds * settings.local_updates
        frozen = override_value(self.overrides, FREEZE)
        line = (
            f"lr schedule: optimization.max_update={self.max_update}, warm-up {self.warmup or 0} updates"
            + (f", encoder frozen for the first {frozen}" if frozen else "")
            + f"; each client makes {settings.num_server_rounds} rounds × {settings.local_updates} local updates = "
            f"{planned}"
        )
        if self.explicit and planned and self.max_update > planned:
            line += (
                f"; your optimization.max_update is longer than the run: it ends at {planned / self.max_update:.0%} "
                f"of the schedule"
            )
        return line


def warmup_of(cfg: DictConfig) -> Optional[int]:
    """The warm-up updates of ``cfg``'s lr scheduler (``warmup_updates``, or ``tri_stage``'s first phase)."""
    scheduler = cfg.lr_scheduler
    if scheduler.get("phase_ratio"):
        return int(cfg.optimization.max_update * scheduler.phase_ratio[0])
    return scheduler.get("warmup_updates", scheduler.get("warmup_steps"))


def scheduled_overrides(recipe: str, overrides: Sequence[str], updates: int) -> List[str]:
    """``overrides`` with ``optimization.max_update=updates``, and the warm-up and the frozen encoder
    (``SCALED``) at the recipe's share of it; the user's own ``optimization.max_update``, warm-up or freeze win."""
    if override_value(overrides, MAX_UPDATE) is not None:
        return list(overrides)
    scheduled = [*overrides, f"{MAX_UPDATE}={updates}"]
    recipe_cfg = compose_recipe(recipe, overrides)
    recipe_length = recipe_cfg.optimization.max_update
    for key in SCALED:
        length = OmegaConf.select(recipe_cfg, key)
        if length and recipe_length and override_value(overrides, key) is None:
            scheduled.append(f"{key}={max(1, round(length * updates / recipe_length))}")
    return scheduled


def plan_schedule(settings: FederationSettings) -> Schedule:
    """The schedule of the run ``settings`` (checked by ``settings.validate`` first)."""
    explicit = override_value(settings.overrides, MAX_UPDATE) is not None
    if settings.local_epochs:
        epoch_rounds = settings.num_server_rounds * settings.local_epochs
        cfg = compose_recipe(settings.recipe, settings.overrides)
        max_update = cfg.optimization.max_update if explicit else 0
        warmup = warmup_of(cfg) if explicit else None
        return Schedule(max_update, warmup, list(settings.overrides), explicit, epoch_rounds)
    overrides = scheduled_overrides(settings.recipe, settings.overrides, settings.planned_updates)
    cfg = compose_recipe(settings.recipe, overrides)
    return Schedule(cfg.optimization.max_update, warmup_of(cfg), overrides, explicit)


def client_schedule(
    cfg: DictConfig, recipe: str, overrides: Sequence[str], epoch_rounds: int, updates_per_epoch: int, name: str
) -> DictConfig:
    """A client's ``cfg`` with the schedule of ``epoch_rounds`` epochs of ``updates_per_epoch`` updates (local
    epochs); ``ValueError`` when the user's ``optimization.max_update`` ends before that, naming the client."""
    updates = epoch_rounds * updates_per_epoch
    explicit = override_value(overrides, MAX_UPDATE)
    if explicit is not None and int(explicit) < updates:
        raise ValueError(
            f"{name}: {MAX_UPDATE}={explicit} ends before this run: {epoch_rounds} epochs of {updates_per_epoch} "
            f"updates = {updates} updates on this client. Remove the override (the schedule is then sized to the "
            f"run) or set it to at least {updates}"
        )
    planned = compose_recipe(recipe, scheduled_overrides(recipe, overrides, updates))
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.optimization.max_update = planned.optimization.max_update
        cfg.lr_scheduler = planned.lr_scheduler
    return cfg
