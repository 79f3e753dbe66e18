"""`fairseq-hydra-train` with the tiny recipe and `common.user_dir` trains on a client shard."""

import math

import pytest
import torch


@pytest.mark.e2e
def test_tiny_recipe_trains_logs_and_writes_a_checkpoint(trained_run):
    assert trained_run["checkpoint"].is_file()
    assert "fed_hubert_pretraining" in trained_run["log"]
    updates = [r for r in trained_run["records"] if "num_updates" in r and "loss" in r]
    assert [int(r["num_updates"]) for r in updates] == [1, 2, 3, 4], trained_run["log"][-3000:]
    for record in updates:
        assert math.isfinite(float(record["loss"])) and float(record["loss"]) > 0
        # fairseq's hubert criterion logs masked-prediction accuracy as correct_m_0 (a ratio)
        assert 0.0 <= float(record["correct_m_0"]) <= 1.0
        assert int(record["count_m_0"]) > 0
    valid = [r for r in trained_run["records"] if "valid_loss" in r]
    assert valid and math.isfinite(float(valid[-1]["valid_loss"])) and "valid_correct_m_0" in valid[-1]


@pytest.mark.e2e
def test_checkpoint_holds_the_task_and_the_hubert_model(trained_run):
    from fedhubert_plugin.checkpoints import load_checkpoint

    state = load_checkpoint(trained_run["checkpoint"])
    assert state["cfg"]["task"]["_name"] == "fed_hubert_pretraining"
    assert state["cfg"]["model"]["_name"] == "hubert"
    assert state["optimizer_history"][-1]["num_updates"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
