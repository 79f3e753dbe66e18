"""``fedhubert export``: checkpoints in s3prl's converted HuBERT format.

Stock s3prl (``-u hubert_local -k X.pt``, no fedhubert installed) reads only that format.
``export_s3prl`` converts any fedhubert or fairseq HuBERT checkpoint; ``export_initial``
writes the untrained model of a recipe (the weights federated round 1 starts from), the
random-init baseline of downstream comparisons.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch

from fedhubert_plugin.checkpoints import as_s3prl_state, load_checkpoint, save_s3prl_checkpoint
from fedhubert_plugin.files import atomic_write
from fedhubert_plugin.options import REQUIRED, option
from fedhubert_plugin.recipes import recipe_initial_model


@dataclass
class ExportConfig:
    """Options of ``fedhubert export``: the argument of ``export``."""

    out: Path = option(REQUIRED, "output .pt file")
    checkpoint: Optional[Path] = option(None, "checkpoint to convert", one_of="source", required=True)
    initial: Optional[str] = option(
        None,
        "recipe (yaml path, or tiny / base) whose initial model to write",
        one_of="source",
        required=True,
        metavar="RECIPE",
    )
    n_clusters: int = option(100, "with --initial: k-means clusters of the targets")
    label_rate: float = option(100.0, "with --initial: label rate in Hz")
    overrides: List[str] = option([], "with --initial: fairseq/hydra overrides of the recipe", positional=True)


def export_s3prl(ckpt: Path, out: Path) -> Path:
    """Write ``ckpt`` (s3prl or fairseq format) to ``out`` in s3prl's converted format."""
    state = as_s3prl_state(load_checkpoint(ckpt), ckpt)
    atomic_write(Path(out), lambda tmp: torch.save(state, tmp))
    return Path(out)


def export_initial(
    recipe: Union[str, Path], out: Path, n_clusters: int, label_rate: float, overrides: Sequence[str] = ()
) -> Path:
    """Write the seeded initial (untrained) model of ``recipe`` (a name or yaml path) to ``out`` in s3prl's format."""
    cfg, weights = recipe_initial_model(recipe, overrides, label_rate, n_clusters)
    save_s3prl_checkpoint(Path(out), cfg, weights, n_clusters)
    return Path(out)


def export(cfg: ExportConfig) -> Path:
    """Convert ``cfg.checkpoint``, or write the initial model of the recipe ``cfg.initial``; returns ``cfg.out``."""
    if cfg.checkpoint:
        return export_s3prl(cfg.checkpoint, cfg.out)
    return export_initial(cfg.initial, cfg.out, cfg.n_clusters, cfg.label_rate, cfg.overrides)
