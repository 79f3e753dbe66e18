"""The clients' learning-rate schedule is sized to the federated run: rounds x local updates."""

import math

import pytest

from fedhubert_plugin.federation.client.local_trainer import LocalTrainer
from fedhubert_plugin.federation.client.work import FitTask, TrainerSpec
from fedhubert_plugin.federation.schedule import plan_schedule
from fedhubert_plugin.federation.server.checkpointing import initial_model, save_round_checkpoint
from fedhubert_plugin.federation.server.rounds import run_rounds
from fedhubert_plugin.federation.server.strategies import build_strategy
from fedhubert_plugin.federation.settings import FederationSettings, SettingsError
from fedhubert_plugin.federation.simulation import simulate_pretraining
from fedhubert_plugin.recipes import compose_recipe
from tests.helpers import TINY, metric_lines, pretrain_settings


def planned(recipe: str, rounds: int, local_updates: int, *overrides: str):
    settings = FederationSettings(
        recipe=recipe, num_server_rounds=rounds, local_updates=local_updates, overrides=list(overrides)
    )
    return plan_schedule(settings.validate()), settings


def test_the_schedule_spans_the_run_with_the_recipes_share_of_warm_up():
    schedule, _ = planned(TINY, 12, 10)
    assert (schedule.max_update, schedule.warmup) == (120, 12)  # tiny: 10 of 100
    cfg = compose_recipe(TINY, schedule.overrides)
    assert cfg.lr_scheduler.total_num_update == 120  # fairseq's polynomial decay ends with the run
    schedule, settings = planned("base", 100, 1000)
    assert (schedule.max_update, schedule.warmup) == (100_000, 8_000)  # Base: 32,000 of 400,000
    assert "100 rounds × 1000 local updates = 100000" in schedule.describe(settings)


def test_a_users_own_max_update_is_kept_refused_when_shorter_than_the_run():
    schedule, settings = planned(TINY, 12, 10, "optimization.max_update=200", "lr_scheduler.warmup_updates=5")
    assert (schedule.max_update, schedule.warmup) == (200, 5)
    assert "ends at 60% of the schedule" in schedule.describe(settings)
    with pytest.raises(SettingsError, match=r"optimization.max_update=100 .*12 rounds x 10 local updates = 120"):
        planned(TINY, 12, 10, "optimization.max_update=100")


def test_a_resume_that_would_change_the_schedule_is_refused(tmp_path):
    from fedhubert_plugin.federation.server.runlog import Progress, RunLog

    first = FederationSettings(save_dir=str(tmp_path), recipe=TINY, num_server_rounds=12, local_updates=10)
    schedule = plan_schedule(first)
    progress = Progress(round_done=12, updates_done=120, schedule=schedule.key)
    save_round_checkpoint(first, *initial_model(first, schedule), 12, progress)  # as the first run left it
    log = RunLog(first.server_dir)
    log.save_state(progress, build_strategy(first))
    log.close()
    longer = FederationSettings(**{**first.__dict__, "num_server_rounds": 14, "resume": True})
    with pytest.raises(SettingsError, match=r"resume: .*'max_update': 120.*'max_update': 140.*--init-from"):
        run_rounds(None, longer, build_strategy(longer))


@pytest.mark.e2e
def test_local_epochs_size_each_clients_schedule_to_its_own_data(client_shard):
    from fedhubert_plugin.recipes import recipe_initial_model

    _, start = recipe_initial_model(TINY, ["common.cpu=true"], 100, 8)
    trainer = LocalTrainer(TrainerSpec(TINY, ("common.cpu=true",), label_rate=100))
    last = trainer.fit(FitTask(client_shard, start, local_epochs=1, server_round=3, epoch_rounds=3))
    per_epoch = last.metrics["updates"]
    cfg, _ = trainer.epoch_schedule(client_shard, 3)
    assert cfg.optimization.max_update == 3 * per_epoch  # not the recipe's 100
    assert last.metrics["lr"] > 0 and last.metrics["schedule_position"] == 1.0


@pytest.mark.e2e
def test_a_twelve_round_run_trains_to_the_end_of_its_schedule(prepared, tmp_path):
    small_batches = ["common.cpu=true", "dataset.max_tokens=16000", "task.max_sample_size=16000"]
    settings = pretrain_settings(
        prepared, tmp_path, rounds=12, local_updates=10, overrides=small_batches, min_available_nodes=2
    )
    simulate_pretraining(settings, num_clients=2)
    lines = metric_lines(tmp_path)
    assert len(lines) == 12
    lrs = [line["train"]["lr"] for line in lines]
    assert all(lr > 0 for lr in lrs) and lrs[-1] < lrs[2]  # warm-up, then decay that ends with the run
    for client in lines[-1]["clients"].values():
        assert client["train_lr"] > 0 and client["train_update_norm"] > 0
        assert math.isclose(client["train_schedule_position"], 1.0)  # update 120 of optimization.max_update 120
    for client in lines[5]["clients"].values():
        assert math.isclose(client["train_schedule_position"], 0.5)
