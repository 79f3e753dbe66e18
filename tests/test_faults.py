"""Faults a federation meets: killed, stalled and garbage-sending clients, a killed server, robust aggregation."""

import os
import shutil
import signal
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import ray.cloudpickle
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedhubert_plugin.checkpoints import load_checkpoint
from fedhubert_plugin.federation.client import app as client_app
from fedhubert_plugin.federation.server.app import server_app_for
from fedhubert_plugin.federation.server.grid import wait_for_nodes
from fedhubert_plugin.federation.server.screening import screen_reply
from fedhubert_plugin.federation.server.strategies import base_strategy
from fedhubert_plugin.federation.simulation import ray_backend_config, simulate, simulate_pretraining
from fedhubert_plugin.federation.wire import record_of
from tests.helpers import TINY, Nodes, metric_lines, pretrain_settings, valid_losses

# Ray workers cannot import this test module: ship its functions by value
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

TIMEOUT_SECONDS = 35.0  # round 1 of client_000 (start-up, 2 updates, its reply) takes about 15 s on 2 cores
STALL_SECONDS = 45  # past the round timeout; the simulation ends when it does
# (simulated partition, round) -> what that client does instead of behaving; client_003 has no train.km
FAULTS = {(1, 1): "kill", (2, 1): "stall"}
faulty_app = ClientApp()


@faulty_app.train()
def faulty_train(msg: Message, context: Context) -> Message:
    fault = FAULTS.get((int(context.node_config["partition-id"]), int(msg.content["config"]["server-round"])))
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "stall":
        time.sleep(STALL_SECONDS)
    return client_app.train(msg, context)


@faulty_app.evaluate()
def faulty_evaluate(msg: Message, context: Context) -> Message:
    return client_app.evaluate(msg, context)


@pytest.mark.e2e
def test_killed_stalled_and_failing_clients_leave_the_round_to_the_others(prepared, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    (data / "clients" / "client_003" / "labels" / "train.km").unlink()  # this client raises a ShardError
    settings = pretrain_settings(
        data,
        tmp_path,
        rounds=2,
        local_updates=2,
        round_timeout=TIMEOUT_SECONDS,
        min_train_nodes=1,
        tolerate_broken_data=True,
    )
    # one Ray actor per client, so that a stalled client holds up nobody else
    simulate(server_app_for(settings), faulty_app, 4, ray_backend_config(num_cpus_per_client=0.5))
    first, second = metric_lines(tmp_path)
    assert first["participants"] == ["client_000"]
    reasons = [r["reason"] for r in first["rejected"]]
    assert len(reasons) == 3
    assert any(r.startswith("client error") and "Actor" in r for r in reasons)  # the killed one
    assert f"no reply within the round timeout ({TIMEOUT_SECONDS:.0f} s)" in reasons  # the stalled one
    assert any("client_003/labels/train.km not found" in r for r in reasons)  # names the missing file
    assert TIMEOUT_SECONDS <= first["server_seconds"]["clients_train"] < TIMEOUT_SECONDS + STALL_SECONDS
    # Ray restarted the killed client's process and the stalled one is free again: both train in round 2
    assert second["participants"] == ["client_000", "client_001", "client_002"]
    (failing,) = second["rejected"]
    assert "client_003/labels/train.km not found" in failing["reason"]
    weights = load_checkpoint(tmp_path / "server" / "checkpoint_last.pt")["model"]
    assert all(torch.isfinite(v).all() and v.abs().max() < 100 for v in weights.values())
    losses = valid_losses(tmp_path)
    assert list(losses) == [0, 1, 2] and losses[2] < losses[1]
    table = (tmp_path / "server" / "participation.md").read_text()
    assert (
        "| client_000 | 2 | 0 |  |" in table and "| client_001 | 1 | 0 |" in table and "| client_002 | 1 | 0 |" in table
    )
    # round 1's killed and stalled clients had not answered before: named by node id
    assert len([line for line in table.splitlines() if line.startswith("| node ") and "| 0 | 1 | round 1" in line]) == 2
    assert "| client_003 | 0 | 2 | round 2: broken data: " in table and "client_003/labels/train.km not found" in table


@pytest.mark.e2e
def test_a_client_with_broken_data_stops_the_run_in_round_1_naming_its_file(prepared, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    (data / "clients" / "client_002" / "labels" / "train.km").unlink()
    settings = pretrain_settings(data, tmp_path, rounds=3, local_updates=1)
    with pytest.raises(RuntimeError, match=r"round 1: the data of client_002 is broken: .*client_002/labels/train.km"):
        simulate_pretraining(settings, 4)
    assert metric_lines(tmp_path) == []  # nothing aggregated, no checkpoint
    assert not (tmp_path / "server" / "checkpoint_last.pt").exists()
    table = (tmp_path / "server" / "participation.md").read_text()
    assert "| client_002 | 0 | 1 | round 1: broken data: " in table


def reply(name, arrays):
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": 10, "updates": 3}),
            "client": ConfigRecord({"name": name}),
        }
    )
    return Message(content, dst_node_id=1, message_type="train")


def screen(replies, reference, max_update_norm=0.0):
    """Every reply through ``screen_reply``: the kept ones, the rejections, the clippings."""
    model_norm = float(np.sqrt(sum(np.square(v, dtype=np.float64).sum() for v in reference.values())))
    decisions = [screen_reply(r, reference, model_norm, max_update_norm) for r in replies]
    return [[d[i] for d in decisions if d[i] is not None] for i in range(3)]


def test_bad_updates_are_rejected_or_clipped_with_the_client(in_a_run):
    reference = {"w": np.ones(3, np.float32), "b": np.ones(1, np.float32)}
    good = reply("client_000", {"w": [1.1, 1, 1], "b": [1]})
    big = reply("client_004", {"w": [1, 1.4, 1], "b": [1.3]})  # update norm 0.5
    nan = reply("client_001", {"w": [1, np.nan, 0], "b": [1]})
    inf = reply("client_002", {"w": [1, 1, 1], "b": [np.inf]})
    other = reply("client_003", {"w": [1, 1, 1]})
    absurd = reply("client_005", {"w": [1, 1, 1], "b": [100]})
    kept, rejected, clipped = screen([good, big, nan, inf, other, absurd], reference, max_update_norm=0.25)
    assert kept == [good, big]
    assert [(r["client"], r["reason"].split(" (")[0]) for r in rejected] == [
        ("client_001", "update holds NaN or Inf"),
        ("client_002", "update holds NaN or Inf"),
        ("client_003", "weights do not match the model's parameter names"),
        ("client_005", "update norm 99 exceeds the global model's norm 2"),
    ]
    assert clipped == [{"client": "client_004", "norm": pytest.approx(0.5), "clipped_to": 0.25}]
    np.testing.assert_allclose(big.content["arrays"]["w"].numpy(), [1, 1.2, 1], rtol=1e-6)
    np.testing.assert_allclose(big.content["arrays"]["b"].numpy(), [1.15], rtol=1e-6)
    assert good.content["metrics"]["update_norm"] == pytest.approx(0.1)


@pytest.mark.parametrize("robust", ["fedmedian", "fedtrimmedavg", "krum", "multikrum"])
def test_a_robust_strategy_barely_moves_under_one_garbage_client_and_plain_averaging_does(robust, in_a_run):
    from fedhubert_plugin.recipes import recipe_initial_model

    _, initial = recipe_initial_model(Path(TINY), ["common.cpu=true"], 100, 100)
    rng = np.random.default_rng(0)
    honest = [
        reply(f"client_00{i}", {k: v + 1e-3 * rng.standard_normal(v.shape) for k, v in initial.items()})
        for i in range(4)
    ]
    # finite and below the screen's absurd-norm bound, so only the strategy can stop it
    garbage = reply("client_004", {k: v + 0.05 * rng.standard_normal(v.shape) for k, v in initial.items()})

    def shift(strategy: str) -> float:
        settings = pretrain_settings(
            "unused", "unused", rounds=1, strategy=strategy, min_available_nodes=5, trimmed_beta=0.2
        )
        kept, rejected, _ = screen(honest + [garbage], initial)
        assert len(kept) == 5 and not rejected
        aggregated, _ = base_strategy(settings).aggregate_train(1, kept)
        return float(np.sqrt(sum(np.square(aggregated[k].numpy() - v).sum() for k, v in initial.items())))

    honest_norm = float(np.sqrt(sum(np.square(1e-3 * np.ones(v.shape)).sum() for v in initial.values())))
    plain, robust_shift = shift("fedavg"), shift(robust)
    assert plain > 5 * honest_norm  # averaging lets the garbage through
    assert robust_shift < 1.5 * honest_norm  # about one honest update from where it started


def test_waiting_for_missing_nodes_stops_after_the_timeout_with_the_count():
    # two SuperNodes connected, the third never comes
    with pytest.raises(
        RuntimeError, match=r"only 2 of the 3 nodes needed are connected after 0.5 s \(min-available-nodes"
    ):
        wait_for_nodes(Nodes(2), 3, timeout=0.5)
    assert wait_for_nodes(Nodes(2), 2, timeout=0.5) == [1, 2]  # enough: returns at once


def test_the_screened_strategy_aggregates_only_what_passes_and_names_the_rest(in_a_run):
    from flwr.serverapp.strategy import FedAvg

    from fedhubert_plugin.federation.server.screening import ScreenedStrategy

    reference = {"w": np.ones(3, np.float32)}
    strategy = ScreenedStrategy(
        FedAvg(min_available_nodes=3, min_train_nodes=1), 0.0, min_train_nodes=2, round_timeout=9
    )
    outgoing = ArrayRecord({"w": Array(reference["w"].astype(np.float16))})  # float16 transport
    messages = list(strategy.configure_train(1, outgoing, ConfigRecord({}), Nodes(3)))
    assert len(messages) == 3 and strategy.reference["w"].dtype == np.float32

    def answer(message, name, w):
        return Message(reply(name, {"w": w}).content, reply_to=message)

    good = [answer(messages[i - 1], f"client_00{i}", [1 + i / 10, 1, 1]) for i in (1, 2)]
    nan = answer(messages[2], "client_003", [np.nan, 1, 1])
    aggregated, _ = strategy.aggregate_train(1, good + [nan])
    assert aggregated["w"].numpy().dtype == np.float32
    np.testing.assert_allclose(aggregated["w"].numpy(), [1.15, 1, 1], rtol=1e-6)
    assert list(strategy.accepted) == ["client_001", "client_002"] and [r["client"] for r in strategy.rejected] == [
        "client_003"
    ]
    messages = list(strategy.configure_train(2, outgoing, ConfigRecord({}), Nodes(3)))
    replies = [answer(messages[0], "client_001", [1.1, 1, 1]), answer(messages[1], "client_003", [np.nan, 1, 1])]
    with pytest.raises(
        RuntimeError, match=r"round 2: 1 usable client updates of 3 .*--resume \(flwr run: --run-config"
    ):
        strategy.aggregate_train(2, replies)
    assert strategy.rejected[0] == {"client": "client_003", "reason": "update holds NaN or Inf"}


def test_a_second_reply_under_a_clients_name_is_rejected_not_merged(in_a_run):
    from fedhubert_plugin.federation.server.optimizers import StreamingFedAvg
    from fedhubert_plugin.federation.server.screening import SAME_NAME, ScreenedStrategy

    strategy = ScreenedStrategy(StreamingFedAvg(min_available_nodes=3), 0.0, 2, 9, streaming=True)
    messages = list(strategy.configure_train(1, record_of({"w": np.ones(3, np.float32)}), ConfigRecord({}), Nodes(3)))
    # two SuperNodes given the same data-dir reply under one client name
    names_and_values = [("client_001", 1.1), ("client_002", 1.2), ("client_001", 1.3)]
    replies = [Message(reply(n, {"w": [v, 1, 1]}).content, reply_to=m) for m, (n, v) in zip(messages, names_and_values)]
    aggregated, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(aggregated["w"].numpy(), [1.15, 1, 1], rtol=1e-6)
    assert list(strategy.accepted) == ["client_001", "client_002"]
    assert strategy.rejected == [{"client": "client_001", "reason": SAME_NAME}]


def test_broken_data_stops_the_round_unless_tolerated(in_a_run):
    from flwr.serverapp.strategy import FedAvg

    from fedhubert_plugin.federation.server.screening import ScreenedStrategy
    from fedhubert_plugin.federation.wire import broken_data_reply

    outgoing = ArrayRecord({"w": Array(np.ones(3, np.float32))})
    for tolerate in (False, True):
        strategy = ScreenedStrategy(FedAvg(min_available_nodes=2, min_train_nodes=1), 0.0, 1, 9, tolerate)
        messages = list(strategy.configure_train(1, outgoing, ConfigRecord({}), Nodes(2)))
        good = Message(reply("client_000", {"w": [1.1, 1, 1]}).content, reply_to=messages[0])
        broken = broken_data_reply(messages[1], Path("clients/client_001"), ValueError("x/valid.km not found"))
        if not tolerate:
            with pytest.raises(RuntimeError, match=r"round 1: the data of client_001 is broken: .*--tolerate-broken"):
                strategy.aggregate_train(1, [good, broken])
            continue
        aggregated, _ = strategy.aggregate_train(1, [good, broken])
        np.testing.assert_allclose(aggregated["w"].numpy(), [1.1, 1, 1], rtol=1e-6)
        assert strategy.rejected == [
            {"client": "client_001", "reason": "broken data: x/valid.km not found", "broken_data": True}
        ]


@pytest.mark.parametrize("name", ["fedavg", "fedadam"])
def test_folding_replies_as_they_come_aggregates_like_the_list_of_all_replies(name, in_a_run):
    from fedhubert_plugin.federation.server.screening import ScreenedStrategy

    rng = np.random.default_rng(0)
    reference = {"w": rng.standard_normal(1000).astype(np.float32), "b": np.ones(3, np.float32)}
    noise = {
        (rnd, i): {k: 0.01 * rng.standard_normal(v.shape) for k, v in reference.items()}
        for rnd in (1, 2)
        for i in range(4)
    }
    settings = pretrain_settings("unused", "unused", rounds=2, strategy=name, min_available_nodes=4)
    results = []
    for streaming in (True, False):
        strategy = ScreenedStrategy(base_strategy(settings), 0.0, 2, 9, streaming=streaming)
        for rnd in (1, 2):  # FedAdam's moments carry over to round 2
            messages = list(strategy.configure_train(rnd, record_of(reference), ConfigRecord({}), Nodes(4)))
            replies = []
            for i, message in enumerate(messages):
                answer = reply(f"client_00{i}", {k: v + noise[rnd, i][k] for k, v in reference.items()})
                answer.content["metrics"]["num-examples"] = 10 + i  # unequal weights
                replies.append(Message(answer.content, reply_to=message))
            if streaming:
                replies = reversed(replies)  # another arrival order
            aggregated, metrics = strategy.aggregate_train(rnd, replies)
        results.append(({k: v.numpy() for k, v in aggregated.items()}, dict(metrics), sorted(strategy.accepted)))
    (streamed, streamed_metrics, streamed_clients), (listed, listed_metrics, listed_clients) = results
    for key in reference:
        np.testing.assert_allclose(streamed[key], listed[key], atol=1e-6)  # float32 rounding of the two sums
    assert streamed_metrics == pytest.approx(listed_metrics) and streamed_clients == listed_clients


class ReadyGrid(Nodes):
    """A grid on which every reply is ready as soon as the messages are pushed; it counts the replies it
    made that are still alive."""

    def __init__(self, count: int):
        super().__init__(count)
        self.replies, self.made = {}, weakref.WeakSet()

    def push_messages(self, messages):
        self.replies = {f"sent-{i}": m for i, m in enumerate(messages)}  # Flower sets the ids as it pushes
        return list(self.replies)

    def pull_messages(self, message_ids):
        ready = [i for i in message_ids if i in self.replies]
        pulled = [Message(reply("client_000", {"w": [1.0]}).content, reply_to=self.replies.pop(i)) for i in ready]
        self.made.update(pulled)
        return pulled


def test_replies_that_arrive_together_are_read_one_at_a_time(in_a_run):
    from flwr.serverapp.strategy import FedAvg

    from fedhubert_plugin.federation.server.streaming import replies_as_they_come

    grid = ReadyGrid(4)
    messages = list(
        FedAvg(min_available_nodes=4).configure_train(1, record_of({"w": np.ones(1)}), ConfigRecord({}), grid)
    )
    alive = []
    for answer in replies_as_they_come(grid, messages, timeout=5):
        alive.append(len(grid.made))  # each reply is a model's size: the one being read, and no other
        del answer
    assert alive == [1, 1, 1, 1] and not grid.replies


@pytest.mark.e2e
def test_a_client_step_that_fails_raises_its_own_error_and_fairseqs_crash_dump_is_kept(client_shard):
    from fedhubert_plugin.federation.client.local_trainer import LocalTrainer, crash_dir
    from fedhubert_plugin.federation.client.work import FitTask, TrainerSpec
    from fedhubert_plugin.recipes import recipe_initial_model

    _, start = recipe_initial_model(TINY, ["common.cpu=true"], 100, 8)
    diverged = {k: np.full_like(v, np.nan) if v.dtype.kind == "f" else v for k, v in start.items()}
    (crash_dir(client_shard) / "crash.pt").unlink(missing_ok=True)
    trainer = LocalTrainer(TrainerSpec(TINY, ("common.cpu=true",), label_rate=100))
    # fairseq's own error, not the FileNotFoundError of its dump into a relative checkpoints/ folder
    with pytest.raises(FloatingPointError, match="gradients are Nan/Inf"):
        trainer.fit(FitTask(client_shard, diverged, local_updates=1, server_round=1))
    assert load_checkpoint(crash_dir(client_shard) / "crash.pt")["model"]
