"""fp16/bf16 training keeps fairseq's fp32 master weights across rounds (bf16 runs on CPU; fp16 needs a GPU)."""

import numpy as np
import pytest
import torch

from fedhubert_plugin.federation.client.local_trainer import LocalTrainer
from fedhubert_plugin.federation.client.work import FitTask, TrainerSpec
from tests.helpers import TINY


@pytest.mark.e2e
def test_bf16_rounds_return_and_resume_from_the_fp32_master_weights(client_shard):
    # learning rate 0: whatever the model computes in bf16, the fp32 master weights must come back to the bit
    trainer = LocalTrainer(TrainerSpec(TINY, ("common.bf16=true", "optimization.lr=[0.0]"), label_rate=100))
    trainer.client_task(client_shard)  # builds the model
    rng = np.random.default_rng(0)
    global_weights = {
        k: (v.detach().float().numpy() + 1e-4 * rng.standard_normal(v.shape)).astype(np.float32)
        for k, v in trainer.model.state_dict().items()
    }
    result = trainer.fit(FitTask(client_shard, global_weights, local_updates=2))
    assert result.metrics["updates"] == 2 and np.isfinite(result.metrics["loss"])
    assert next(trainer.model.parameters()).dtype == torch.bfloat16  # fairseq trained the bf16 copy
    parameters = [name for name, _ in trainer.model.named_parameters()]
    lost_in_bf16 = 0
    for name in parameters:
        np.testing.assert_array_equal(result.arrays[name], global_weights[name], err_msg=name)
        as_bf16 = torch.from_numpy(global_weights[name]).bfloat16().float().numpy()
        lost_in_bf16 += int((as_bf16 != global_weights[name]).sum())
    assert lost_in_bf16 > 0.9 * sum(global_weights[name].size for name in parameters)  # the copy alone would lose them
