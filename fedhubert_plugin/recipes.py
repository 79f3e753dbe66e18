"""fairseq hydra recipes: found by name or path, composed from Python as ``fairseq-hydra-train`` would.

One helper for the CLI, the demo, export, the Flower apps and the shell recipes:
``find_recipe`` turns ``tiny`` / ``base`` / ``student`` or a yaml path into the file, and
``compose_recipe`` turns the file and hydra overrides into fairseq's resolved config.
"""

import io
import json
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence, Set, Tuple, Union

import numpy as np
import torch
from fairseq import tasks
from fairseq.data import Dictionary
from fairseq.dataclass.initialize import add_defaults, hydra_init
from fairseq.dataclass.utils import omegaconf_no_object_check
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from fedhubert_plugin.checkpoints import cluster_dictionary, load_checkpoint
from fedhubert_plugin.data import ALPHABET

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
    Without a GPU, ``device_overrides`` come first, and ``task.data`` is ``unset`` until an override gives it
    (a client's folder: the server's and the clients' configs are composed before it is known, and a fine-tuning
    recipe's ``model.data`` interpolates it).
    """
    recipe = find_recipe(str(recipe))
    register_schema(recipe.stem)
    GlobalHydra.instance().clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # hydra's notes on the old package header
        with initialize_config_dir(config_dir=str(recipe.parent), version_base="1.1"):
            try:
                cfg = compose(config_name=recipe.stem, overrides=device_overrides() + ["task.data=unset", *overrides])
                add_defaults(cfg)  # checks the keys against fairseq's dataclasses
            except (HydraException, OmegaConfBaseException) as error:
                problem = " ".join(line.strip() for line in str(error).split("\n")[:2])
                raise RecipeError(
                    f"recipe {recipe} with overrides {list(overrides)}: {problem}. Fix the key's spelling (fairseq's "
                    f"dataclasses list the valid keys, e.g. fairseq.models.hubert.HubertConfig) or remove it"
                ) from None
    with omegaconf_no_object_check():
        cfg = OmegaConf.create(container(cfg))
    OmegaConf.set_struct(cfg, True)
    return cfg


def letter_dictionary() -> Dictionary:
    """The fairseq dictionary that every client's ``finetune/dict.ltr.txt`` loads to: the same letters, in the
    same order (``transcripts.ALPHABET``)."""
    return Dictionary.load(io.StringIO("".join(f"{letter} 1\n" for letter in ALPHABET)))


def task_state(cfg: DictConfig, n_clusters: int) -> Dict[str, Any]:
    """The label dictionaries a checkpoint of ``cfg``'s task holds (its ``task_state``): the letters of CTC
    fine-tuning, else the ``n_clusters`` k-means targets of pretraining."""
    if cfg.task.get("fine_tuning"):
        return {"target_dictionary": letter_dictionary()}
    return {"dictionaries": [cluster_dictionary(n_clusters)]}


def recipe_initial_model(
    recipe: Union[str, Path], overrides: Sequence[str], label_rate: float, n_clusters: int, data_root: str = ""
) -> Tuple[DictConfig, Dict[str, np.ndarray]]:
    """The recipe's config and its initial weights, seeded by ``common.seed``; no data is read.

    The saved config names ``data_root`` (informative only: loading a checkpoint reads no
    data, but fairseq refuses an empty ``task.data``). A fine-tuning recipe (``hubert_ctc``) builds its
    encoder from ``model.w2v_path`` with the pretrained weights, as fairseq does; the pretrained model's
    config and label symbols are then kept in ``model.w2v_args`` and ``model.w2v_dictionaries``
    (``fed_hubert_ctc``), so that clients and checkpoints build the model without that file.
    """
    data = data_root or "federated"
    cfg = compose_recipe(
        recipe, list(overrides) + [f"++task.label_rate={label_rate}", f"task.data={data}", f"task.label_dir={data}"]
    )
    task = tasks.setup_task(cfg.task)
    task.load_state_dict(task_state(cfg, n_clusters))
    torch.manual_seed(cfg.common.seed)
    model = task.build_model(cfg.model)
    if "w2v_args" in cfg.model:  # fine-tuning: what builds the encoder without the pretrained checkpoint
        pretrained = load_checkpoint(cfg.model.w2v_path)["task_state"]["dictionaries"]
        with open_dict(cfg):
            cfg.model.w2v_args = OmegaConf.create(container(model.cfg.w2v_args))
            cfg.model.w2v_dictionaries = [list(d.symbols) for d in pretrained]
    return cfg, {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def container(cfg: DictConfig) -> Any:
    """``cfg`` as plain containers, interpolations resolved and enums as strings (for JSON and checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


ENCODER_FIELDS = ("w2v_args", "w2v_dictionaries")  # fed_hubert_ctc's: the pretrained model's config and labels


def encoder_args(cfg: DictConfig) -> str:
    """What a fine-tuning config holds of the pretrained model (``ENCODER_FIELDS``) as JSON, which the clients
    build the CTC model's encoder from; empty for other recipes."""
    fields = {key: container(cfg.model[key]) for key in ENCODER_FIELDS if cfg.model.get(key) is not None}
    return json.dumps(fields) if fields else ""
