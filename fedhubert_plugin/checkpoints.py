"""Safe loading of fairseq HuBERT checkpoints on torch >= 2.6.

Checkpoints from other sites are untrusted: they are unpickled with ``weights_only=True``
and an explicit allow-list of the classes that fairseq HuBERT checkpoints hold, never
with the safety switched off. ``allow_fairseq_checkpoint_classes()`` (run when the plugin
is imported) registers the same allow-list with torch so that fairseq's own
``checkpoint_utils.load_model_ensemble_and_task`` works on these checkpoints too.
"""

import io
import logging
import math
import pickle
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Union

import numpy as np
import torch
from fairseq.data.dictionary import Dictionary
from omegaconf import DictConfig, OmegaConf

from fedhubert_plugin.files import atomic_write

logger = logging.getLogger(__name__)

# Every non-container class a fairseq HuBERT checkpoint (trainer state included) holds.
FAIRSEQ_CHECKPOINT_CLASSES: List[type] = [Dictionary]


S3PRL_KEYS = {"task_cfg", "model_cfg", "model_weight", "dictionaries_symbols"}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or holds something that is not allowed."""


def allow_fairseq_checkpoint_classes() -> None:
    """Allow-list the classes of fairseq HuBERT checkpoints for every ``torch.load``."""
    torch.serialization.add_safe_globals(FAIRSEQ_CHECKPOINT_CLASSES)


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a fairseq (or s3prl-converted) HuBERT checkpoint with ``weights_only=True``.

    Raises ``CheckpointError`` naming the file when it is missing, not a torch
    checkpoint, or holds an object outside the allow-list (the object is not built, so
    code hidden in the pickle never runs).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    # Not torch's `safe_globals` context manager: on exit it removes the classes from the
    # process-wide allow-list too, which fairseq's own loader relies on.
    allow_fairseq_checkpoint_classes()
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported operand" in str(err) or "load key" in str(err):  # bytes that are no pickle at all
            raise CheckpointError(f"cannot read checkpoint {path}: not a torch checkpoint (or a damaged one)") from None
        raise CheckpointError(
            f"refused to load {path}: it holds objects outside the allow-list of fairseq HuBERT "
            f"checkpoints, and loading them could run code ({blocked_global(err)}). Use checkpoints "
            f"written by fairseq or fedhubert only"
        ) from None
    except RuntimeError as err:
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a torch checkpoint?): {err}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint dictionary")
    return state


def blocked_global(err: Exception) -> str:
    """The line of torch's weights-only error that names the refused global."""
    for line in str(err).splitlines():
        if "global" in line.lower() and "weights_only" not in line:
            return line.strip().rstrip(".")
    return "an object torch could not load safely"


def cluster_dictionary(n_clusters: int) -> Dictionary:
    """The fairseq dictionary that ``dict.km.txt`` of ``n_clusters`` clusters loads to."""
    return Dictionary.load(io.StringIO("".join(f"{i} 1\n" for i in range(n_clusters))))


def dictionary_of(symbols: Sequence[str]) -> Dictionary:
    """The fairseq dictionary whose symbols are ``symbols`` (its special symbols first, as saved)."""
    dictionary = Dictionary()
    for symbol in list(symbols)[dictionary.nspecial :]:
        dictionary.add_symbol(symbol)
    return dictionary


def tensor_of(array: Any) -> torch.Tensor:
    """A tensor sharing ``array``'s memory, to save. The server's weights are read-only views of the bytes
    Flower holds; torch warns that it cannot write to them, which saving never does."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(array))


def save_fairseq_checkpoint(
    path: Path,
    cfg: DictConfig,
    weights: Mapping[str, np.ndarray],
    task_state: Dict[str, Any],
    num_updates: int,
    extra: Dict[str, Any],
) -> None:
    """A fairseq checkpoint of ``weights`` (HuBERT, or HuBERT CTC when ``cfg`` fine-tunes) and its task's label
    dictionaries (``recipes.task_state``) that ``load_model_ensemble_and_task`` loads."""
    state = {
        "args": None,
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": {k: tensor_of(v) for k, v in weights.items()},
        "optimizer_history": [
            {
                "criterion_name": "HubertCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {},
                "num_updates": num_updates,
            }
        ],
        "task_state": task_state,
        "extra_state": extra,
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def s3prl_state(
    task_cfg: Mapping, model_cfg: Mapping, weights: Mapping[str, Any], symbols: List[List[str]]
) -> Dict[str, Any]:
    """A checkpoint in s3prl's converted HuBERT format (plain containers and tensors only)."""
    return {
        "task_cfg": dict(task_cfg),
        "model_cfg": dict(model_cfg),
        "model_weight": {k: v if torch.is_tensor(v) else tensor_of(v) for k, v in weights.items()},
        "dictionaries_symbols": [list(s) for s in symbols],
    }


def save_s3prl_checkpoint(path: Path, cfg: DictConfig, weights: Mapping[str, np.ndarray], n_clusters: int) -> None:
    """s3prl's converted HuBERT format: stock ``hubert_local`` loads it."""
    state = s3prl_state(
        OmegaConf.to_container(cfg.task, resolve=True, enum_to_str=True),
        OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True),
        weights,
        [cluster_dictionary(n_clusters).symbols],
    )
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def as_s3prl_state(state: Mapping[str, Any], path: Union[str, Path]) -> Dict[str, Any]:
    """Any HuBERT checkpoint we write (s3prl-converted or fairseq format) in s3prl's format.

    ``state`` is what ``load_checkpoint(path)`` returned; ``path`` names the file in errors.
    """
    if S3PRL_KEYS <= state.keys():
        return s3prl_state(state["task_cfg"], state["model_cfg"], state["model_weight"], state["dictionaries_symbols"])
    if isinstance(state.get("cfg"), Mapping) and "model" in state and "task_state" in state:
        cfg = state["cfg"]
        if OmegaConf.is_config(cfg):
            cfg = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        symbols = [d.symbols for d in state["task_state"]["dictionaries"]]
        return s3prl_state(cfg["task"], cfg["model"], state["model"], symbols)
    raise CheckpointError(
        f"{path} is neither an s3prl HuBERT checkpoint (keys {sorted(S3PRL_KEYS)}) nor a fairseq checkpoint "
        f"with 'cfg', 'model' and 'task_state' (it has {sorted(state)[:8]}); pass a checkpoint written by "
        f"fairseq-hydra-train or fedhubert (SAVE/server/checkpoint_best.pt or best_global_model.pt)"
    )


def normalization_of(state: Mapping[str, Any], path: Union[str, Path]) -> str:
    """``true`` or ``false``: whether the HuBERT checkpoint ``state`` (of ``path``) heard normalised waveforms: the
    ``task.normalize`` of a model trained from it (a student, a CTC model: fairseq asserts that they agree)."""
    return str(bool(as_s3prl_state(state, path)["task_cfg"].get("normalize", False))).lower()


def load_hubert_model(path: Union[str, Path]):
    """fairseq's ``HubertModel`` with the weights of any HuBERT checkpoint we write (either format),
    and its task config (``normalize``, ``label_rate``).

    No task or data is set up: the config and the label dictionary come from the file.
    """
    return hubert_model(as_s3prl_state(load_checkpoint(path), path))


def hubert_model(state: Mapping[str, Any], load_weights: bool = True):
    """fairseq's ``HubertModel`` and task config of an s3prl-format ``state``; without ``load_weights``
    the model keeps its initialisation (seed torch first for a reproducible one)."""
    from fairseq.models.hubert.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

    def config(cls, values: Mapping[str, Any]):
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})

    dictionaries = [dictionary_of(symbols) for symbols in state["dictionaries_symbols"]]
    task_cfg = config(HubertPretrainingConfig, state["task_cfg"])
    model = HubertModel(config(HubertConfig, state["model_cfg"]), task_cfg, dictionaries)
    if load_weights:
        model.load_state_dict(state["model_weight"])
    return model, task_cfg


def matching_layer(layer: int, layers: int, other_layers: int) -> int:
    """The layer (1-based) of an ``other_layers``-deep model that layer ``layer`` of a ``layers``-deep one maps to."""
    return math.ceil(layer * other_layers / layers)


def copy_fitting_tensors(weights: Mapping[str, np.ndarray], checkpoint: Union[str, Path]) -> Dict[str, np.ndarray]:
    """``weights`` with every tensor of ``checkpoint`` that has the same name and shape copied in.

    Encoder layer i (of L) takes the checkpoint's layer ``matching_layer(i, L, L_ckpt)``: the
    same layer for the same depth (continuing HuBERT's next iteration), evenly spread layers
    for a shallower student. What does not fit (another width, another cluster count) stays.
    """
    source = {k: v.numpy() for k, v in as_s3prl_state(load_checkpoint(checkpoint), checkpoint)["model_weight"].items()}

    def depth(names) -> int:
        return 1 + max((int(k.split(".")[2]) for k in names if k.startswith("encoder.layers.")), default=-1)

    layers, source_layers = depth(weights), depth(source)
    result, copied = dict(weights), 0
    for name, value in weights.items():
        parts = name.split(".")
        if name.startswith("encoder.layers."):
            parts[2] = str(matching_layer(int(parts[2]) + 1, layers, source_layers) - 1)
        origin = ".".join(parts)
        if origin in source and source[origin].shape == value.shape:
            result[name] = source[origin].astype(value.dtype)
            copied += 1
    if not copied:
        raise ValueError(
            f"no tensor of {checkpoint} fits the model: starting from it needs the same conv extractor or width"
        )
    logger.info("initialised from %s: %d of %d tensors copied", checkpoint, copied, len(weights))
    return result


def check_architecture(
    expected: Mapping[str, np.ndarray], found: Mapping[str, Any], checkpoint: Union[str, Path], recipe: str
) -> None:
    """Raise ``CheckpointError`` unless ``found`` (a checkpoint's weights) has the tensors of ``expected``
    (the recipe's model)."""
    for name, value in expected.items():
        if name not in found or tuple(found[name].shape) != tuple(value.shape):
            held = f"shape {tuple(found[name].shape)}" if name in found else "no such tensor"
            raise CheckpointError(
                f"checkpoint {checkpoint} does not match recipe {recipe}: {name} has {held} there and shape "
                f"{tuple(value.shape)} in the recipe's model. Use the recipe and overrides the run started with, "
                "or another checkpoint"
            )
    extra = sorted(set(found) - set(expected))
    if extra:
        raise CheckpointError(
            f"checkpoint {checkpoint} does not match recipe {recipe}: it has tensors the recipe's model lacks, "
            f"e.g. {extra[0]}. Use the recipe and overrides the run started with, or another checkpoint"
        )
