"""fairseq hydra recipes: found by name or path, composed from Python as ``fairseq-hydra-train`` would.

One helper for the CLI, the demo, export, the Flower apps and the shell recipes:
``find_recipe`` turns ``tiny`` / ``base`` / ``student`` or a yaml path into the file, and
``compose_recipe`` turns the file and hydra overrides into fairseq's resolved config.
"""

import warnings
from pathlib import Path
from typing import Dict, List, Sequence, Set, Tuple, Union

import numpy as np
import torch
from fairseq import tasks
from fairseq.dataclass.initialize import add_defaults, hydra_init
from fairseq.dataclass.utils import omegaconf_no_object_check
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedhubert_plugin.checkpoints import cluster_dictionary

APP_DIR = Path(__file__).resolve().parents[1]  # the repository, or the installed Flower app (FAB)
RECIPES_DIR = APP_DIR / "recipes"
# where a recipe given by name is looked up, in order
RECIPE_FOLDERS = (
    RECIPES_DIR / "librispeech" / "pretrain",
    RECIPES_DIR / "librispeech" / "distill",
    RECIPES_DIR / "librispeech" / "finetune",
    RECIPES_DIR / "superb",
)


SCHEMA_NAMES: Set[str] = set()  # the recipes whose name fairseq's schema was stored under


class RecipeError(ValueError):
    """A recipe or an override names a key fairseq's configs do not have, or a value they do not accept."""


def find_recipe(recipe: str) -> Path:
    """The yaml of ``recipe``: a name (``tiny``, ``base``, ``base_iter2``, ``large``, ``student``, ``tiny_student``,
    ``ks``), an absolute path, or a path relative to the working directory or to the app (the same on every
    node's copy of the app)."""
    path = Path(recipe)
    candidates = [path] if path.is_absolute() else [path, APP_DIR / path]
    candidates += [folder / f"{recipe}.yaml" for folder in RECIPE_FOLDERS if path.suffix != ".yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    names = sorted(p.stem for folder in RECIPE_FOLDERS for p in folder.glob("*.yaml"))
    raise FileNotFoundError(f"recipe {recipe} not found: give a yaml path or one of {names}")


def device_overrides() -> List[str]:
    """Overrides that keep a recipe runnable on this machine: without a GPU, fairseq on CPU in float32.

    They go before the user's overrides, which win.
    """
    return [] if torch.cuda.is_available() else ["common.cpu=true", "common.fp16=false", "common.bf16=false"]


def register_schema(name: str) -> None:
    """fairseq's schema under the recipe ``name`` only. A schema left under the name of a recipe composed
    earlier in this process (``base``) would be merged into that recipe's file where it is a default of this
    one (``base_iter2``, ``large``), and hydra refuses the merge."""
    repo = ConfigStore.instance().repo
    for earlier in SCHEMA_NAMES - {name}:
        repo.pop(f"{earlier}.yaml", None)
    hydra_init(name)
    SCHEMA_NAMES.add(name)


def compose_recipe(recipe: Union[str, Path], overrides: Sequence[str] = ()) -> DictConfig:
    """The resolved fairseq config of ``recipe`` (a name or yaml path) with hydra-style ``overrides``.

    fairseq's schema must be registered under the recipe's name first (``register_schema``), and
    recipes start with the old ``# @package _group_`` header, hence hydra's 1.1 semantics.
    Without a GPU, ``device_overrides`` come first.
    """
    recipe = find_recipe(str(recipe))
    register_schema(recipe.stem)
    GlobalHydra.instance().clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # hydra's notes on the old package header
        with initialize_config_dir(config_dir=str(recipe.parent), version_base="1.1"):
            try:
                cfg = compose(config_name=recipe.stem, overrides=device_overrides() + list(overrides))
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
    recipe: Union[str, Path], overrides: Sequence[str], label_rate: float, n_clusters: int, data_root: str = ""
) -> Tuple[DictConfig, Dict[str, np.ndarray]]:
    """The recipe's config and its initial weights, seeded by ``common.seed``; no data is read.

    The saved config names ``data_root`` (informative only: loading a checkpoint reads no
    data, but fairseq refuses an empty ``task.data``).
    """
    data = data_root or "federated"
    cfg = compose_recipe(
        recipe, list(overrides) + [f"task.label_rate={label_rate}", f"task.data={data}", f"task.label_dir={data}"]
    )
    task = tasks.setup_task(cfg.task)
    task.load_state_dict({"dictionaries": [cluster_dictionary(n_clusters)]})
    torch.manual_seed(cfg.common.seed)
    model = task.build_model(cfg.model)
    return cfg, {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
