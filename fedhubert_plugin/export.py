"""``fedhubert export``: checkpoints in s3prl's converted HuBERT format, or a SUPERB upstream folder.

Stock s3prl (``-u hubert_local -k X.pt``, no fedhubert installed) reads only that format.
``export_s3prl`` converts any fedhubert or fairseq HuBERT checkpoint; ``export_initial``
writes the untrained model of a recipe (the weights federated round 1 starts from), the
random-init baseline of downstream comparisons. With ``--superb DIR`` the model goes to
``DIR/model.pt`` beside the ``expert.py`` and ``hubconf.py`` of ``superb_upstream``: the folder
the SUPERB hidden-set submission asks for, loadable with torch and s3prl alone.
"""

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch

from fedhubert_plugin import superb_upstream
from fedhubert_plugin.checkpoints import (
    as_s3prl_state,
    hubert_model,
    load_checkpoint,
    s3prl_state,
    save_s3prl_checkpoint,
)
from fedhubert_plugin.files import atomic_write
from fedhubert_plugin.options import option
from fedhubert_plugin.recipes import recipe_initial_model


@dataclass
class ExportConfig:
    """Options of ``fedhubert export``: the argument of ``export``."""

    out: Optional[Path] = option(None, "output .pt file", one_of="target", required=True)
    superb: Optional[Path] = option(
        None,
        "write a SUPERB hidden-set upstream folder here instead: expert.py, hubconf.py and model.pt",
        one_of="target",
        required=True,
        metavar="DIR",
    )
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


def write_superb_upstream(folder: Path) -> None:
    """Put the hidden-set upstream's ``expert.py`` and ``hubconf.py`` into ``folder`` (beside its ``model.pt``)."""
    for name in superb_upstream.FILES:
        shutil.copyfile(superb_upstream.HERE / name, Path(folder) / name)


def export(cfg: ExportConfig) -> Path:
    """Convert ``cfg.checkpoint``, or write the initial model of the recipe ``cfg.initial``, to ``cfg.out`` or to
    ``cfg.superb/model.pt`` with the SUPERB upstream's files; returns the file or the folder written."""
    model = Path(cfg.out) if cfg.out else Path(cfg.superb) / "model.pt"
    model.parent.mkdir(parents=True, exist_ok=True)
    if cfg.checkpoint:
        export_s3prl(cfg.checkpoint, model)
    else:
        export_initial(cfg.initial, model, cfg.n_clusters, cfg.label_rate, cfg.overrides)
    if cfg.superb:
        write_superb_upstream(cfg.superb)
        return Path(cfg.superb)
    return model


def how_to_load(exported: Path) -> str:
    """How a user loads what ``export`` wrote: a SUPERB upstream folder or one s3prl-format file."""
    if Path(exported).is_dir():
        return f"SUPERB upstream: torch.hub.load('{exported}', 'customized_upstream', source='local')"
    return f"s3prl format: run_downstream.py -u hubert_local -k {exported}"


def named_checkpoints(entries: Sequence[str]) -> Dict[str, Path]:
    """Name -> path of ``NAME=PATH`` entries, each naming an existing checkpoint."""
    checkpoints = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep or not Path(path).is_file():
            raise FileNotFoundError(f"--checkpoint {entry}: give NAME=PATH of an existing checkpoint")
        checkpoints[name] = Path(path)
    return checkpoints


def random_init_checkpoint(checkpoint: Path, out: Path, seed: int) -> Path:
    """``checkpoint``'s architecture with freshly initialised weights (seeded), in s3prl's format at ``out``."""
    state = as_s3prl_state(load_checkpoint(checkpoint), checkpoint)
    torch.manual_seed(seed)
    model, _ = hubert_model(state, load_weights=False)
    fresh = s3prl_state(state["task_cfg"], state["model_cfg"], model.state_dict(), state["dictionaries_symbols"])
    atomic_write(out, lambda tmp: torch.save(fresh, tmp))
    return out
