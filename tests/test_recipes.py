"""Recipes are found by name or path, compose as fairseq-hydra-train would, and iteration 2 overrides base."""

import pytest
from omegaconf import OmegaConf

from fedhubert_plugin.recipes import compose_recipe, find_recipe
from tests.helpers import REPO, TINY


def test_recipes_are_found_by_name_or_path(tmp_path, monkeypatch):
    assert find_recipe("tiny") == find_recipe(TINY) == REPO / "recipes" / "librispeech" / "pretrain" / "tiny.yaml"
    assert find_recipe("student").parent.name == "distill" and find_recipe("ks_tiny").parent.name == "superb"
    monkeypatch.chdir(tmp_path)
    assert find_recipe("recipes/librispeech/pretrain/base.yaml").is_file()  # relative to the app, on any node
    with pytest.raises(FileNotFoundError, match=r"recipe tinny not found: give a yaml path or one of \[.*'tiny'"):
        find_recipe("tinny")


def test_the_iteration_2_recipe_is_base_with_50_hz_targets():
    data = ["task.data=d", "task.label_dir=d"]
    iteration2 = OmegaConf.to_container(compose_recipe("base_iter2", data))
    assert iteration2 == OmegaConf.to_container(compose_recipe("base", data + ["task.label_rate=50"]))
    assert iteration2["task"]["label_rate"] == 50 and iteration2["optimization"]["lr"] == [0.0005]
    assert iteration2["model"]["encoder_layers"] == 12
