"""Checkpoints load with weights_only=True and an allow-list; crafted ones are refused unrun; --init-from
copies exactly the tensors that fit."""

import os
import pickle

import numpy as np
import pytest
import torch

import fedhubert_plugin  # noqa: F401  (registers the allow-list with torch)
from fedhubert_plugin.checkpoints import CheckpointError, copy_fitting_tensors, load_checkpoint, save_s3prl_checkpoint
from fedhubert_plugin.recipes import recipe_initial_model
from tests.helpers import TINY, TINY_STUDENT, teacher_tensors_in_tiny_student


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


def source_checkpoint(path, n_clusters):
    """A 2-layer tiny model with every tensor moved by 1 (unlike any fresh one), saved; its weights."""
    cfg, weights = recipe_initial_model(TINY, ["common.cpu=true"], 100, n_clusters)
    weights = {k: v + 1 for k, v in weights.items()}
    save_s3prl_checkpoint(path, cfg, weights, n_clusters)
    return weights


def check_copied(result, fresh, source, copied, origin=lambda name: name):
    """The names in ``copied`` hold their ``origin``'s source tensor, every other name its fresh value."""
    assert result.keys() == fresh.keys()
    for name in fresh:
        expected = source[origin(name)] if name in copied else fresh[name]
        np.testing.assert_array_equal(result[name], expected, err_msg=name)
        assert result[name].dtype == fresh[name].dtype


def test_init_from_a_deeper_model_copies_every_fitting_tensor_from_the_mapped_layer(tmp_path):
    """1 layer from 2: layer 0 takes layer 1; the label embeddings of another cluster count stay fresh."""
    source = source_checkpoint(tmp_path / "source.pt", n_clusters=50)
    _, fresh = recipe_initial_model(TINY, ["common.cpu=true", "model.encoder_layers=1"], 100, 20)
    assert fresh["label_embs_concat"].shape != source["label_embs_concat"].shape  # 24 rows against 54
    result = copy_fitting_tensors(fresh, tmp_path / "source.pt")
    copied = set(fresh) - {"label_embs_concat"}
    check_copied(result, fresh, source, copied, lambda name: name.replace("encoder.layers.0.", "encoder.layers.1."))


def test_init_from_teacher_copies_only_what_fits_a_narrower_student(tmp_path):
    """Width 64 against 128: 14 tensors are the teacher's (the conv extractor among them); the encoder stays fresh."""
    source = source_checkpoint(tmp_path / "teacher.pt", n_clusters=20)
    overrides = ["common.cpu=true", "criterion.teacher_checkpoint=unused"]
    _, fresh = recipe_initial_model(TINY_STUDENT, overrides, 100, 20)
    result = copy_fitting_tensors(fresh, tmp_path / "teacher.pt")
    copied = teacher_tensors_in_tiny_student(fresh)
    assert len(copied) == 14 and "encoder.layers.0.fc1.weight" in fresh and "post_extract_proj.weight" in fresh
    check_copied(result, fresh, source, copied)


def test_init_from_a_model_with_nothing_in_common_is_refused(tmp_path):
    cfg, weights = recipe_initial_model(TINY, ["common.cpu=true"], 100, 20)
    save_s3prl_checkpoint(tmp_path / "other.pt", cfg, {f"other.{k}": v for k, v in weights.items()}, 20)
    with pytest.raises(ValueError, match="no tensor of .*other.pt fits the model"):
        copy_fitting_tensors(weights, tmp_path / "other.pt")


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
