"""Compose a fairseq hydra recipe from Python, exactly as ``fairseq-hydra-train`` would."""
import warnings
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
from fairseq import tasks
from fairseq.dataclass.initialize import add_defaults, hydra_init
from fairseq.dataclass.utils import omegaconf_no_object_check
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedhubert_plugin.checkpoints import cluster_dictionary

APP_DIR = Path(__file__).resolve().parents[2]  # the repository, or the installed Flower app (FAB)


class RecipeError(ValueError):
    """A recipe or an override names a key fairseq's configs do not have, or a value they do not accept."""


def resolve_recipe(recipe: str) -> Path:
    """An absolute recipe path as is; a relative one inside the app (same on every node's FAB copy)."""
    path = Path(recipe)
    return path if path.is_absolute() else APP_DIR / path


def compose_recipe(recipe: Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The resolved fairseq config of ``recipe`` (a yaml path) with hydra-style ``overrides``.

    fairseq's schema must be registered under the recipe's name first (``hydra_init``), and
    recipes start with the old ``# @package _group_`` header, hence hydra's 1.1 semantics.
    """
    recipe = resolve_recipe(str(recipe))
    if not recipe.is_file():
        raise FileNotFoundError(f"recipe {recipe} not found; see recipes/librispeech/pretrain/")
    hydra_init(recipe.stem)
    GlobalHydra.instance().clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # hydra's notes on the old package header
        with initialize_config_dir(config_dir=str(recipe.parent), version_base="1.1"):
            try:
                cfg = compose(config_name=recipe.stem, overrides=list(overrides))
                add_defaults(cfg)  # checks the keys against fairseq's dataclasses
            except (HydraException, OmegaConfBaseException) as error:
                problem = " ".join(line.strip() for line in str(error).split("\n")[:2])
                raise RecipeError(
                    f"recipe {recipe} with overrides {list(overrides)}: {problem}. Fix the key's spelling (fairseq's "
                    f"dataclasses list the valid keys, e.g. fairseq.models.hubert.HubertConfig) or remove it"
                ) from None
    with omegaconf_no_object_check():
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(cfg, True)
    return cfg


def recipe_initial_model(
    recipe: Path, overrides: Sequence[str], label_rate: float, n_clusters: int, data_root: str = ""
) -> Tuple[DictConfig, Dict[str, np.ndarray]]:
    """The recipe's config and its initial weights, seeded by ``common.seed``; no data is read.

    The saved config names ``data_root`` (informative only: loading a checkpoint reads no
    data, but fairseq refuses an empty ``task.data``).
    """
    data = data_root or "federated"
    cfg = compose_recipe(recipe, list(overrides) + [f"task.label_rate={label_rate}", f"task.data={data}", f"task.label_dir={data}"])
    task = tasks.setup_task(cfg.task)
    task.load_state_dict({"dictionaries": [cluster_dictionary(n_clusters)]})
    torch.manual_seed(cfg.common.seed)
    model = task.build_model(cfg.model)
    return cfg, {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
