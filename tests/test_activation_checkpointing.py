"""fairseq's activation checkpointing (``model.checkpoint_activations=true``) through a federated client."""

import numpy as np
import pytest

from fedhubert_plugin.federation.client.local_trainer import LocalTrainer
from fedhubert_plugin.federation.client.work import FitTask, TrainerSpec
from tests.helpers import TINY


@pytest.mark.e2e
def test_checkpointed_activations_give_the_same_local_update(client_shard):
    """Recomputing the encoder layers' activations in the backward pass changes memory, not the update."""
    plain = LocalTrainer(TrainerSpec(TINY, ("model.checkpoint_activations=false",), label_rate=100))
    plain.client_task(client_shard)
    start = {k: v.detach().float().numpy().copy() for k, v in plain.model.state_dict().items()}
    checkpointed = LocalTrainer(TrainerSpec(TINY, ("model.checkpoint_activations=true",), label_rate=100))
    checkpointed.client_task(client_shard)
    assert all(hasattr(layer, "precheckpoint_forward") for layer in checkpointed.model.encoder.layers)
    assert not any(hasattr(layer, "precheckpoint_forward") for layer in plain.model.encoder.layers)

    updates = {
        name: trainer.fit(FitTask(client_shard, start, local_updates=2))
        for name, trainer in (("plain", plain), ("checkpointed", checkpointed))
    }
    assert updates["plain"].metrics["updates"] == updates["checkpointed"].metrics["updates"] == 2
    assert updates["checkpointed"].metrics["loss"] == pytest.approx(updates["plain"].metrics["loss"], rel=1e-5)
    moved = 0
    for name, value in updates["plain"].arrays.items():
        np.testing.assert_allclose(updates["checkpointed"].arrays[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
        moved += int(not np.array_equal(value, start[name]))
    assert moved > len(start) // 2  # the updates did train
