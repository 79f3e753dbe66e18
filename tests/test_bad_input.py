"""Bad input stops with an error that names the file and the fix (label files: test_task.py)."""

import shutil

import pytest

from fedhubert_plugin.checkpoints import CheckpointError
from fedhubert_plugin.federation.schedule import plan_schedule
from fedhubert_plugin.federation.server.checkpointing import initial_model
from fedhubert_plugin.federation.simulation import simulate_pretraining
from fedhubert_plugin.recipes import RecipeError, compose_recipe
from tests.helpers import TINY, pretrain_settings


def test_unknown_recipe_keys_name_the_recipe_and_the_key(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(open(TINY).read().replace("model:\n", "model:\n  encoder_layerz: 3\n", 1))
    with pytest.raises(
        RecipeError, match=rf"recipe {recipe} .*encoder_layerz.* not in 'HubertConfig'.*Fix the key's spelling"
    ):
        compose_recipe(recipe)
    with pytest.raises(
        RecipeError, match=r"tiny.yaml with overrides \['model.encoder_layerss=2'\]: Could not override"
    ):
        compose_recipe(TINY, ["model.encoder_layerss=2"])


def test_an_unreadable_checkpoint_to_start_from_is_named(tmp_path):
    broken = tmp_path / "teacher.pt"
    broken.write_bytes(b"not a checkpoint")
    settings = pretrain_settings("unused", tmp_path, rounds=1, init_from=str(broken))
    with pytest.raises(CheckpointError, match=rf"cannot read checkpoint {broken}"):
        initial_model(settings, plan_schedule(settings))


@pytest.mark.e2e
def test_resuming_with_another_architecture_names_the_checkpoint_and_the_tensor(federated_run, prepared, tmp_path):
    shutil.copytree(federated_run, tmp_path / "save")
    settings = pretrain_settings(
        prepared,
        tmp_path / "save",
        rounds=4,
        resume=True,
        overrides=["common.cpu=true", "model.encoder_ffn_embed_dim=64"],
    )
    with pytest.raises(CheckpointError) as err:
        simulate_pretraining(settings, num_clients=4)
    message = str(err.value)
    assert "checkpoint_round3.pt does not match recipe" in message and "model.encoder_ffn_embed_dim=64" in message
    assert (
        "encoder.layers.0.fc1.weight has shape" in message
        and "the recipe and overrides the run started with" in message
    )
