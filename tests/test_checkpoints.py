"""Checkpoints load with weights_only=True and an allow-list; crafted ones are refused unrun."""

import os
import pickle

import pytest
import torch

import fedhubert_plugin  # noqa: F401  (registers the allow-list with torch)
from fedhubert_plugin.checkpoints import CheckpointError, load_checkpoint


class TouchOnUnpickle:
    """Unpickling this runs `touch <marker>`: the shape of a code-execution payload."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def crafted_checkpoint(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "checkpoint_evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": TouchOnUnpickle(marker)}, path)
    return path, marker


def test_crafted_checkpoint_would_run_code_without_the_safety(crafted_checkpoint):
    path, marker = crafted_checkpoint
    torch.load(path, weights_only=False)  # what switching the safety off would do
    assert marker.exists()


def test_crafted_checkpoint_is_refused_and_its_code_does_not_run(crafted_checkpoint):
    path, marker = crafted_checkpoint
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "system" in str(err.value)
    assert not marker.exists()


def test_fairseq_loader_refuses_it_too(crafted_checkpoint):
    from fairseq import checkpoint_utils

    path, marker = crafted_checkpoint
    with pytest.raises(pickle.UnpicklingError):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert not marker.exists()


def test_missing_and_corrupt_files_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    truncated = tmp_path / "truncated.pt"
    torch.save({"model": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=str(truncated)):
        load_checkpoint(truncated)


@pytest.mark.e2e
def test_fairseq_checkpoint_loads_with_the_allow_list(trained_run):
    state = load_checkpoint(trained_run["checkpoint"])
    dictionaries = state["task_state"]["dictionaries"]
    assert len(dictionaries[0]) == 12


@pytest.mark.e2e
def test_the_allow_list_is_exactly_what_the_checkpoint_holds(trained_run):
    from fedhubert_plugin.checkpoints import FAIRSEQ_CHECKPOINT_CLASSES

    registered = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()  # ask torch what the file needs beyond its defaults
    try:
        needed = set(torch.serialization.get_unsafe_globals_in_checkpoint(trained_run["checkpoint"]))
    finally:
        torch.serialization.add_safe_globals(registered)
    allowed = {f"{cls.__module__}.{cls.__qualname__}" for cls in FAIRSEQ_CHECKPOINT_CLASSES}
    assert needed == allowed


@pytest.mark.e2e
def test_load_model_ensemble_and_task_works_with_the_plugin(trained_run):
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(trained_run["checkpoint"])])
    assert type(task).__name__ == "FedHubertPretrainingTask"
    model = models[0].eval()
    with torch.no_grad():
        features, _ = model.extract_features(torch.zeros(1, 16000), mask=False)
    assert features.shape == (1, 49, 128)
