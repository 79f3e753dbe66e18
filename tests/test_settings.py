"""Every federation setting is declared once; CLI, run config, messages and validation derive from it."""

import tomllib
from dataclasses import fields

import pytest

from fedhubert_plugin.cli import build_parser
from fedhubert_plugin.federation.settings import (
    FederationSettings,
    SettingsError,
    from_run_config,
    run_config_defaults,
)
from fedhubert_plugin.federation.simulation import gpus_per_client_here
from fedhubert_plugin.federation.wire import ClientConfig, config_record, from_config_record
from fedhubert_plugin.recipes import find_recipe
from tests.helpers import REPO


def pyproject_run_config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_pyproject_run_config_is_the_declaration():
    assert pyproject_run_config() == run_config_defaults()


def test_the_base_run_config_uses_declared_keys_and_becomes_settings():
    base = tomllib.loads((REPO / "recipes" / "librispeech" / "flower_base.toml").read_text())
    assert set(base) <= set(run_config_defaults())  # flwr only accepts keys that pyproject declares
    for run_config in (pyproject_run_config(), {**pyproject_run_config(), **base}):
        settings = from_run_config(run_config).validate()
        assert find_recipe(settings.recipe).is_file()
    assert settings.num_server_rounds == 400 and settings.local_updates == 1000 and settings.overrides == []


def test_cli_options_come_from_the_declaration_with_one_name_each():
    args = build_parser().parse_args(
        [
            "pretrain",
            "--data-root",
            "d",
            "--save-dir",
            "s",
            "--num-server-rounds",
            "2",
            "--secagg-shares",
            "0.5",
            "--gpus-per-client",
            "0.25",
            "model.encoder_layers=1",
        ]
    )
    assert (args.num_server_rounds, args.secagg_shares, args.gpus_per_client, args.overrides) == (
        2,
        0.5,
        0.25,
        ["model.encoder_layers=1"],
    )
    assert args.local_updates == 10 == FederationSettings.local_updates  # the default the help states
    old = build_parser().parse_args(["pretrain", "--data", "d", "--save-dir", "s", "--rounds", "2"])  # older spellings
    assert (old.data_root, old.num_server_rounds) == ("d", 2)
    assert (
        build_parser()
        .parse_args(["distill", "--teacher", "t", "--data", "d", "--save-dir", "s", "--rounds", "1"])
        .recipe
        == "student"
    )
    pretrain = next(
        a for a in build_parser()._subparsers._group_actions[0].choices["pretrain"]._actions if a.dest == "eta"
    )
    assert "server learning rate" in pretrain.help and "default 0.01" in pretrain.help
    for f in fields(FederationSettings):
        assert f.metadata["cli"] or f.metadata["run_config"], f.name


def test_run_config_values_become_typed_settings_with_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = from_run_config(
        {**run_config_defaults(), "save-dir": "runs/x", "overrides": "a=1 b=2", "resume": True, "num-server-rounds": 7}
    )
    assert settings.save_dir == str(tmp_path / "runs" / "x") and settings.overrides == ["a=1", "b=2"]
    assert settings.resume is True and settings.num_server_rounds == 7 and settings.recipe == "tiny"


@pytest.mark.parametrize(
    "change, named",
    [
        (
            {"strategy": "fedprox"},
            "--strategy (run config strategy): unknown strategy 'fedprox'; choose one of fedavg",
        ),
        (
            {"secure_aggregation": True, "strategy": "fedadam"},
            "--secure-aggregation (run config secure-aggregation): SecAgg+",
        ),
        ({"dp_clipping_norm": 0.1, "local_epochs": 1}, "--dp-clipping-norm (run config dp-clipping-norm)"),
        ({"local_updates": 0}, "--local-updates (run config local-updates)"),
        ({"init_from": "/nowhere/teacher.pt"}, "--init-from (run config init-from): /nowhere/teacher.pt not found"),
        ({"transport_dtype": "bfloat16"}, "--transport-dtype (run config transport-dtype)"),
        (  # the client would replace it with the labels' rate: refused rather than silently ignored
            {"overrides": ["task.label_rate=50"], "label_rate": 100.0},
            "--overrides (run config overrides): task.label_rate=50, labels: 100 Hz; drop the override",
        ),
    ],
)
def test_validation_names_the_setting_under_both_launchers(change, named):
    with pytest.raises(SettingsError) as err:
        FederationSettings(**change).validate()
    assert named in str(err.value)


def test_local_epochs_replace_local_updates_in_the_messages():
    # besides the settings, a message says where the run stands, whether to validate first, how many
    # data-parallel ranks a client trains on (from --gpus-per-client), and when fine-tuning the pretrained config
    settings = FederationSettings(local_epochs=2)
    config = from_config_record(ClientConfig, config_record(ClientConfig.of(settings, updates_done=5)))
    assert (config.local_updates, config.local_epochs, config.num_updates) == (0, 2, 5)
    assert config.epoch_rounds == 3 * 2  # each client sizes its lr schedule to rounds x local epochs of its data
    message_keys = {"num-updates", "server-round", "validate", "site-processes", "epoch-rounds", "encoder-args"}
    assert set(config_record(config)) <= set(run_config_defaults()) | message_keys


def test_gpus_per_client_on_a_machine_without_a_gpu_trains_on_cpu(monkeypatch, caplog):
    # Ray would wait forever for a GPU the machine does not have
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert gpus_per_client_here(0.5) == 0.0
    assert "--gpus-per-client 0.5: this machine has no GPU" in caplog.text
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    assert gpus_per_client_here(0.25) == 0.25
    assert gpus_per_client_here(0) == 0  # allowed, but Ray hides the GPU from the clients: say so
    assert "has 1 GPU(s) but --gpus-per-client is 0" in caplog.text
