"""``fedhubert export``: checkpoints in s3prl's converted HuBERT format.

Stock s3prl (``-u hubert_local -k X.pt``, no fedhubert installed) reads only that format.
``export_s3prl`` converts any fedhubert or fairseq HuBERT checkpoint; ``export_initial``
writes the untrained model of a recipe (the weights federated round 1 starts from), the
random-init baseline of downstream comparisons.
"""

from pathlib import Path
from typing import Sequence, Union

import torch

from fedhubert_plugin.checkpoints import as_s3prl_state, load_checkpoint, save_s3prl_checkpoint
from fedhubert_plugin.files import atomic_write
from fedhubert_plugin.recipes import recipe_initial_model


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
