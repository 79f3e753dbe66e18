"""The server optimizers held in place: Flower's results, and memory within six model sizes."""

import tracemalloc

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedYogi

from fedhubert_plugin.federation.server.optimizers import (
    InPlaceFedAdagrad,
    InPlaceFedAdam,
    InPlaceFedYogi,
    StreamingFedAvg,
)
from fedhubert_plugin.federation.server.screening import ScreenedStrategy
from fedhubert_plugin.federation.wire import npy_bytes_of, record_of, views_of
from tests.helpers import Nodes

FLOWER_AND_OURS = [(FedAdam, InPlaceFedAdam), (FedYogi, InPlaceFedYogi), (FedAdagrad, InPlaceFedAdagrad)]
ARGUMENTS = dict(min_available_nodes=1, min_train_nodes=1, eta=0.05, eta_l=1.0, tau=1e-3)


def reply_to(message: Message, arrays: dict, examples: float) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": examples, "loss": examples / 10}),
            "client": ConfigRecord({"name": f"client_{message.metadata.dst_node_id:03d}"}),
        }
    )
    return Message(content, reply_to=message)


def model(rng, tensors: int = 3, size: int = 50) -> dict:
    return {f"t{i}": rng.standard_normal(size).astype(np.float32) for i in range(tensors)}


def one_round(strategy, rnd: int, weights: dict, rng, examples=(1.0, 1.0)) -> dict:
    """Send ``weights``, answer with each client's weights moved a little, aggregate: the new weights.
    Clients weighing the same make Flower's float32 mean and ours the same number: what is left to
    compare is the server step."""
    messages = list(strategy.configure_train(rnd, record_of(weights), ConfigRecord({}), Nodes(len(examples))))
    replies = [
        reply_to(m, {k: v + 0.01 * rng.standard_normal(v.shape) for k, v in weights.items()}, n)
        for m, n in zip(messages, examples)
    ]
    arrays, metrics = strategy.aggregate_train(rnd, replies)
    assert metrics["loss"] == pytest.approx(sum(n * n / 10 for n in examples) / sum(examples), rel=1e-9)
    return {k: v.numpy().astype(np.float32) for k, v in arrays.items()}  # the server keeps float32 weights


@pytest.mark.parametrize("flower, ours", FLOWER_AND_OURS, ids=["fedadam", "fedyogi", "fedadagrad"])
def test_the_in_place_optimizers_give_flowers_weights_and_moments(in_a_run, flower, ours):
    theirs, mine = flower(**ARGUMENTS), ours(**ARGUMENTS)
    start = model(np.random.default_rng(0))
    weights = {"flower": start, "ours": start}
    for rnd in (1, 2, 3, 4):
        for name, strategy in (("flower", theirs), ("ours", mine)):
            weights[name] = one_round(strategy, rnd, weights[name], np.random.default_rng(rnd))
        for k in start:
            np.testing.assert_allclose(weights["ours"][k], weights["flower"][k], rtol=0, atol=1e-6)
            assert weights["ours"][k].dtype == np.float32
            np.testing.assert_allclose(mine.m_t[k], theirs.m_t[k], rtol=1e-6, atol=0)
            np.testing.assert_allclose(mine.v_t[k], theirs.v_t[k], rtol=1e-6, atol=0)
    assert not np.allclose(weights["ours"]["t0"], start["t0"], atol=1e-3)  # it moved


def test_replies_weigh_by_their_examples(in_a_run):
    weights, examples = model(np.random.default_rng(3)), (10.0, 20.0, 30.0)
    ours = one_round(InPlaceFedAdam(**ARGUMENTS), 1, weights, np.random.default_rng(4), examples)
    moved = np.random.default_rng(4)  # the same replies again
    replies = [
        {k: np.asarray(v + 0.01 * moved.standard_normal(v.shape), np.float32) for k, v in weights.items()}
        for _ in examples
    ]
    mean = {k: sum(n * r[k].astype(np.float64) for n, r in zip(examples, replies)) / sum(examples) for k in weights}
    flower = FedAdam(**ARGUMENTS)
    messages = list(flower.configure_train(1, record_of(weights), ConfigRecord({}), Nodes(1)))
    # Flower's step from one reply holding the weighted mean is ours from the three replies
    arrays, _ = flower.aggregate_train(1, [reply_to(messages[0], mean, 1.0)])
    for k in weights:
        np.testing.assert_allclose(ours[k], arrays[k].numpy(), rtol=0, atol=1e-6)


def test_the_in_place_optimizer_reads_the_weights_sent_and_updates_its_moments_in_place(in_a_run):
    strategy, rng = InPlaceFedAdam(**ARGUMENTS), np.random.default_rng(0)
    weights = one_round(strategy, 1, model(rng), rng)
    moments = {k: v for k, v in strategy.m_t.items()}
    sent = record_of(weights)
    list(strategy.configure_train(2, sent, ConfigRecord({}), Nodes(3)))
    assert all(npy_bytes_of(strategy.current_arrays[k]) is sent[k].data for k in weights)  # no copy
    one_round(strategy, 2, weights, rng)
    assert all(strategy.m_t[k] is moments[k] and moments[k].dtype == np.float32 for k in moments)


def test_the_new_weights_are_sent_from_the_bytes_they_were_written_to(in_a_run):
    strategy = ScreenedStrategy(StreamingFedAvg(min_available_nodes=3), 0.0, 3, 60, streaming=True)
    weights = model(np.random.default_rng(1))
    messages = list(strategy.configure_train(1, record_of(weights), ConfigRecord({}), Nodes(3)))
    replies = [reply_to(m, {k: v + 0.1 * i for k, v in weights.items()}, 1.0) for i, m in enumerate(messages)]
    aggregated, _ = strategy.aggregate_train(1, replies)
    new = views_of(aggregated)
    np.testing.assert_allclose(new["t1"], weights["t1"] + 0.1, rtol=0, atol=1e-6)
    assert all(record_of(new)[k].data is aggregated[k].data for k in new)
    assert record_of(new, "float16")["t1"].dtype == "float16"


def round_peaks(strategy, clients: int, tensors: int = 64, size: int = 20_000) -> list:
    """Two rounds of ``strategy`` (screened, streamed when it can be) on a model of ``tensors`` x ``size`` float32
    values, each reply made only when the server reads it, tensor by tensor, as one arrives: the peak of the heap
    in each round, counting the global weights and everything else the server holds, in sizes of the model."""
    model_bytes = 4 * tensors * size
    streaming = hasattr(strategy, "step")
    screened = ScreenedStrategy(strategy, 0.0, clients, 60, streaming=streaming)
    rng = np.random.default_rng(0)

    def arriving(messages, weights):
        for message in messages:  # nothing of a reply is kept here once it is read
            noisy = ArrayRecord(
                {k: Array(v + 0.01 * rng.standard_normal(v.shape, np.float32)) for k, v in weights.items()}
            )
            yield Message(RecordDict({**reply_to(message, {}, 1.0).content, "arrays": noisy}), reply_to=message)
            del noisy

    peaks = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        weights = model(np.random.default_rng(2), tensors, size)
        for rnd in (1, 2):  # round 2 with both moments held
            tracemalloc.reset_peak()
            messages = list(screened.configure_train(rnd, record_of(weights), ConfigRecord({}), Nodes(clients)))
            aggregated, _ = screened.aggregate_train(rnd, arriving(messages, views_of(messages[0].content["arrays"])))
            weights = views_of(aggregated)
            del messages, aggregated
            peaks.append((tracemalloc.get_traced_memory()[1] - before) / model_bytes)
    finally:
        tracemalloc.stop()
    return peaks


def test_a_streamed_fedadam_round_holds_six_model_sizes_whatever_the_clients(in_a_run):
    ours = {
        n: round_peaks(InPlaceFedAdam(**{**ARGUMENTS, "min_available_nodes": n, "min_train_nodes": n}), n)
        for n in (2, 8)
    }
    flowers = round_peaks(FedAdam(**ARGUMENTS), 3)  # Flower's own FedAdam, which is given the list of replies
    print(f"peak heap per round, in model sizes: ours {ours}, Flower's FedAdam with 3 clients {flowers}")
    # the global weights, two moments, the float64 sum of the updates (two) and the reply being read, plus a few
    # working copies of one tensor (1/64 of the model here); Flower adds its copy while it reads a reply
    assert all(peak <= 6.25 for peaks in ours.values() for peak in peaks), ours
    assert flowers[1] > 9.0, flowers
