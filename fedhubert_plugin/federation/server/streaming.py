"""Replies as they arrive, and aggregation that holds one reply at a time.

``replies_as_they_come`` pushes a round's messages and yields each reply as soon as the grid has
it, polling every ``PULL_INTERVAL`` seconds (Flower's ``send_and_receive`` returns only when every
reply is in, and its deployment grid polls every 3 s).

FedAvg, FedAdam, FedYogi and FedAdagrad (without DP) aggregate a weighted mean of the client
weights and then take their server step. ``RunningMean`` folds each screened reply into a
weighted sum of the updates as it arrives (weighted like Flower, by the strategy's
``weighted_by_key``), and the server's step (``optimizers``) takes the mean from it tensor by
tensor: the server folds one client's weights at a time. Robust strategies (median, trimmed
mean, Krum) need every reply at once, and Flower's DP wrapper calibrates its noise on the replies
it is given: those keep the list of replies (``streams``).
"""

import time
from typing import Dict, Iterable, Iterator, List, Mapping

import numpy as np
from flwr.app import Message, MetricRecord
from flwr.serverapp import Grid

from fedhubert_plugin.federation.wire import ARRAYS, METRICS, view_of

STREAMING_STRATEGIES = ("fedavg", "fedadam", "fedyogi", "fedadagrad")
PULL_INTERVAL = 0.2  # seconds between polls of the grid for replies
FOLD_CHUNK = 1 << 20  # values of a tensor folded into the sum at a time (an 8 MiB float64 working copy)


def streams(settings) -> bool:
    """Whether the run of ``settings`` (``FederationSettings``) aggregates replies as they arrive."""
    return settings.strategy in STREAMING_STRATEGIES and not settings.dp_clipping_norm


def replies_as_they_come(grid: Grid, messages: Iterable[Message], timeout: float) -> Iterator[Message]:
    """Push ``messages``; yield each reply as it arrives, until all are in or ``timeout`` seconds passed.

    The grid is asked for one message id at a time: Flower's pull inflates every reply it returns,
    so asking for all the waiting ids would hold every reply that arrived since the last poll."""
    waiting = list(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        arrived = False
        for message_id in list(waiting):
            reply = next(iter(grid.pull_messages([message_id])), None)
            if reply is None:
                continue
            waiting.remove(message_id)
            arrived = True
            yield reply
            del reply  # a reply is a model's size: not held while the next one is read
        if waiting and not arrived:
            time.sleep(PULL_INTERVAL)


class RunningMean:
    """The weighted mean of the replies added so far, arrays and metrics, holding only the float64 sums of the
    updates (each reply minus the weights sent). In float64, the order replies arrive in does not show in the
    float32 mean: a run repeated, or resumed, gives the same weights."""

    def __init__(self, weighted_by_key: str, sent: Mapping[str, np.ndarray]):
        self.key, self.sent = weighted_by_key, sent
        self.weight = 0.0
        self.updates: Dict[str, np.ndarray] = {}
        self.metrics: Dict[str, float] = {}

    def add(self, reply: Message) -> None:
        """Fold a screened reply in, tensor by tensor, reading its arrays where Flower holds them."""
        metrics = reply.content[METRICS]
        weight = float(metrics[self.key])
        for name, array in reply.content[ARRAYS].items():
            received, sent = view_of(array).reshape(-1), self.sent[name].reshape(-1)
            if name not in self.updates:
                self.updates[name] = np.zeros(received.size, np.float64)
            total = self.updates[name]
            for start in range(0, received.size, FOLD_CHUNK):  # float64 working copies of a chunk, not a tensor
                part = slice(start, start + FOLD_CHUNK)
                update = np.subtract(received[part], sent[part], dtype=np.float64)
                update *= weight
                total[part] += update
        for name, value in metrics.items():
            if name != self.key:
                self.metrics[name] = self.metrics.get(name, 0.0) + float(value) * weight
        self.weight += weight

    def names(self) -> List[str]:
        """The tensors whose means are still to be taken."""
        return list(self.updates)

    def pop_mean(self, name: str) -> np.ndarray:
        """The mean of tensor ``name`` in float32, its sum given up: the sums shrink as the means are taken."""
        mean = self.updates.pop(name).reshape(self.sent[name].shape)
        mean /= self.weight
        mean += self.sent[name]
        return mean.astype(np.float32)

    def metric_record(self) -> MetricRecord:
        """The weighted mean of every metric but the weighing key, as Flower's FedAvg reports them."""
        return MetricRecord({k: v / self.weight for k, v in self.metrics.items()})
