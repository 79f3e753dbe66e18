"""fp16/bf16 training keeps fairseq's fp32 master weights across rounds (bf16 runs on CPU; fp16 needs a GPU: on a
machine without one the fp16 case is reported as skipped, with the command for a GPU machine)."""

import numpy as np
import pytest
import torch

from fedhubert_plugin.federation.client.local_trainer import LocalTrainer
from fedhubert_plugin.federation.client.work import FitTask, TrainerSpec
from tests.helpers import TINY

FP16_NEEDS_A_GPU = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="fairseq's fp16 trains on CUDA only; on a GPU machine: pytest tests/test_mixed_precision.py",
)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "precision, dtype",
    [("bf16", torch.bfloat16), pytest.param("fp16", torch.float16, marks=FP16_NEEDS_A_GPU)],
)
def test_half_precision_rounds_return_and_resume_from_the_fp32_master_weights(client_shard, precision, dtype):
    # learning rate 0: whatever the model computes in half precision, the fp32 master weights must come back to the
    # bit (fairseq's flat fp32 master buffer, not the half copy it trains)
    trainer = LocalTrainer(TrainerSpec(TINY, (f"common.{precision}=true", "optimization.lr=[0.0]"), label_rate=100))
    trainer.client_task(client_shard)  # builds the model
    rng = np.random.default_rng(0)
    global_weights = {
        k: (v.detach().float().numpy() + 1e-4 * rng.standard_normal(v.shape)).astype(np.float32)
        for k, v in trainer.model.state_dict().items()
    }
    result = trainer.fit(FitTask(client_shard, global_weights, local_updates=2))
    assert result.metrics["updates"] == 2 and np.isfinite(result.metrics["loss"])
    assert next(trainer.model.parameters()).dtype == dtype  # fairseq trained the half copy
    parameters = [name for name, _ in trainer.model.named_parameters()]
    lost_in_half = 0
    for name in parameters:
        np.testing.assert_array_equal(result.arrays[name], global_weights[name], err_msg=name)
        as_half = torch.from_numpy(global_weights[name]).to(dtype).float().numpy()
        lost_in_half += int((as_half != global_weights[name]).sum())
    assert lost_in_half > 0.9 * sum(global_weights[name].size for name in parameters)  # the copy alone would lose them


def test_fp16_on_a_client_without_a_gpu_stops_with_what_to_pass(monkeypatch):
    # fairseq itself fails deep in its FP16Optimizer ("No CUDA GPUs are available") after building the model
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ValueError, match="common.fp16=true trains on a GPU only.*--gpus-per-client"):
        LocalTrainer(TrainerSpec(TINY, ("common.fp16=true",)))
