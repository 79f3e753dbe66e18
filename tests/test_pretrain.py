"""Federated pretraining on the toy corpus: Flower simulation, fairseq trainers, FedAdam, checkpoints, resume."""

import json

import pytest
import torch

from fedhubert_plugin.checkpoints import load_checkpoint
from fedhubert_plugin.federation.simulation import simulate_pretraining
from tests.helpers import (
    REPO,
    SCHEDULE_OF_3_ROUNDS,
    fairseq_hydra_train,
    metric_lines,
    pretrain_settings,
    valid_losses,
)


@pytest.mark.e2e
def test_validation_loss_goes_down_and_metrics_are_complete(federated_run):
    lines = metric_lines(federated_run)
    assert [line["round"] for line in lines] == [1, 2, 3]
    losses = valid_losses(federated_run)
    assert list(losses) == [0, 1, 2, 3] and losses[3] < losses[0]
    for line in lines:
        assert line["participants"] == ["client_000", "client_001", "client_002", "client_003"]
        assert line["rejected"] == []
        for client in line["clients"].values():
            assert client["train_updates"] == 3 and client["train_lr"] > 0
            assert client["train_samples_per_second"] > 0 and client["train_peak_rss_mb"] > 100
            assert client["train_ppl"] > 1 and client["train_setup_seconds"] > 0
            assert client["train_serialize_seconds"] > 0 and client["train_validation_seconds"] > 0
        for validation in line["validations"]:
            assert sorted(validation["clients"]) == line["participants"]
            assert all(0 <= client["acc_masked"] <= 1 for client in validation["clients"].values())
        assert all(seconds >= 0 for seconds in line["server_seconds"].values())
    # one download per round: the clients validate the model they receive, before training;
    # only the last round sends the final model again for its evaluation
    assert [[(v["model_round"], v["how"]) for v in line["validations"]] for line in lines] == [
        [(0, "with training")],
        [(1, "with training")],
        [(2, "with training"), (3, "evaluation")],
    ]
    # simulation: Ray's actor processes serve every round, so only a first message pays a process start
    assert all(client["train_startup_seconds"] == 0 for client in lines[-1]["clients"].values())
    model_bytes = sum(
        v.numel() * 4 for v in load_checkpoint(federated_run / "server" / "checkpoint_last.pt")["model"].values()
    )
    for line in lines:
        evaluated = "clients_evaluate" in line["server_seconds"]
        assert evaluated == (line["round"] == 3)
        assert line["bytes_sent"] / 4 <= (2 if evaluated else 1) * 1.02 * model_bytes
        assert line["bytes_received"] / 4 >= model_bytes


@pytest.mark.e2e
def test_checkpoints_load_in_fairseq_and_stock_s3prl_with_the_same_features(federated_run):
    from fairseq import checkpoint_utils
    from s3prl.upstream.hubert.convert import load_converted_model

    server = federated_run / "server"
    for name in (
        "checkpoint_round1.pt",
        "checkpoint_round2.pt",
        "checkpoint_round3.pt",
        "checkpoint_last.pt",
        "checkpoint_best.pt",
    ):
        state = load_checkpoint(server / name)
        assert all(v.dtype == torch.float32 for v in state["model"].values())  # no float64 from FedAdam
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(server / "checkpoint_best.pt")])
    assert type(task).__name__ == "FedHubertPretrainingTask"
    s3prl_model, _ = load_converted_model(str(server / "best_global_model.pt"))  # plain torch.load, no plugin needed
    audio = torch.randn(1, 24000)
    with torch.no_grad():
        ours, _ = models[0].eval().extract_features(audio, mask=False)
        theirs, _ = s3prl_model.eval().extract_features(audio, mask=False)
    assert torch.equal(ours, theirs)
    best_round = metric_lines(federated_run)[-1]["best_round"]
    assert torch.equal(
        load_checkpoint(server / "checkpoint_best.pt")["model"]["final_proj.weight"],
        load_checkpoint(server / f"checkpoint_round{best_round}.pt")["model"]["final_proj.weight"],
    )


@pytest.mark.e2e
def test_float16_transport_halves_the_traffic_and_keeps_the_loss(federated_run, prepared, tmp_path):
    overrides = ["common.cpu=true", *SCHEDULE_OF_3_ROUNDS]  # round 1 of federated_run's schedule
    settings = pretrain_settings(prepared, tmp_path, rounds=1, transport_dtype="float16", overrides=overrides)
    simulate_pretraining(settings, num_clients=4)
    half, full = metric_lines(tmp_path)[0], metric_lines(federated_run)[-1]  # both a final round, with its evaluation
    assert half["bytes_received"] < 0.55 * full["bytes_received"] and half["bytes_sent"] < 0.55 * full["bytes_sent"]
    # model 1, validated by its round's evaluation here and by round 2's clients there, with the same masks
    assert abs(valid_losses(tmp_path)[1] - valid_losses(federated_run)[1]) < 0.01 * valid_losses(federated_run)[1]
    assert all(
        v.dtype == torch.float32 for v in load_checkpoint(tmp_path / "server" / "checkpoint_last.pt")["model"].values()
    )


@pytest.mark.e2e
def test_local_epochs_continue_the_update_count_and_lr_schedule(prepared, tmp_path):
    warming = ["common.cpu=true", "lr_scheduler.warmup_updates=100"]  # longer than the run: lr rises throughout
    settings = pretrain_settings(prepared, tmp_path, rounds=2, local_updates=0, local_epochs=1, overrides=warming)
    simulate_pretraining(settings, num_clients=4)
    lines = metric_lines(tmp_path)
    per_round = [round(line["train"]["updates"]) for line in lines]
    assert all(n > 0 for n in per_round)
    assert load_checkpoint(tmp_path / "server" / "checkpoint_last.pt")["optimizer_history"][-1]["num_updates"] == sum(
        per_round
    )
    for name, client in lines[1]["clients"].items():
        # each client's schedule spans its own 2 epochs: half-way after round 1, at its end after round 2
        assert lines[0]["clients"][name]["train_schedule_position"] == pytest.approx(0.5)
        assert client["train_schedule_position"] == pytest.approx(1.0)
        assert client["train_lr"] > lines[0]["clients"][name]["train_lr"]  # continued from round 1, not restarted


@pytest.mark.e2e
def test_resume_gives_the_weights_of_an_uninterrupted_run(federated_run, prepared, tmp_path):
    overrides = ["common.cpu=true", *SCHEDULE_OF_3_ROUNDS]  # planned for 3 rounds from the start: resumable to 3
    simulate_pretraining(pretrain_settings(prepared, tmp_path, rounds=2, overrides=overrides), num_clients=4)
    settings = pretrain_settings(prepared, tmp_path, rounds=3, resume=True, overrides=overrides)
    simulate_pretraining(settings, num_clients=4)
    assert [line["round"] for line in metric_lines(tmp_path)] == [1, 2, 3]
    resumed = load_checkpoint(tmp_path / "server" / "checkpoint_last.pt")["model"]
    straight = load_checkpoint(federated_run / "server" / "checkpoint_round3.pt")["model"]
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)


@pytest.mark.e2e
def test_fairseq_hydra_train_continues_from_the_global_checkpoint(federated_run, prepared, tmp_path):
    client = prepared / "clients" / "client_000"
    last = federated_run / "server" / "checkpoint_last.pt"
    overrides = [
        f"task.data={client}",
        f"task.label_dir={client / 'labels'}",
        "optimization.max_update=2",
        f"checkpoint.restore_file={last}",
        "checkpoint.reset_optimizer=true",
        "checkpoint.reset_dataloader=true",
        "checkpoint.reset_meters=true",
        f"checkpoint.save_dir={tmp_path / 'ckpt'}",
    ]
    log = fairseq_hydra_train(REPO / "recipes" / "librispeech" / "pretrain", "tiny", overrides, tmp_path)
    assert f"Loaded checkpoint {last}" in log
    first_loss = float(
        json.loads(
            next(line[line.index("{") :] for line in log.splitlines() if "train_inner" in line and '"loss"' in line)
        )["loss"]
    )
    assert (
        first_loss < metric_lines(federated_run)[0]["train"]["loss"]
    )  # it starts from the federated weights, not from scratch
    assert (tmp_path / "ckpt" / "checkpoint_last.pt").is_file()
