"""Replies as they arrive, and aggregation that holds one reply at a time.

``replies_as_they_come`` pushes a round's messages and yields each reply as soon as the grid has
it, polling every ``PULL_INTERVAL`` seconds (Flower's ``send_and_receive`` returns only when every
reply is in, and its deployment grid polls every 3 s).

FedAvg, FedAdam, FedYogi and FedAdagrad (without DP) aggregate a weighted mean of the client
weights and then take their server step. ``RunningMean`` folds each screened reply into a
weighted sum as it arrives (weighted like Flower, by the strategy's ``weighted_by_key``; in float64,
so that the order replies arrive in does not change the float32 result), and ``as_reply`` hands the
wrapped Flower strategy one reply holding the mean: its own step (FedAdam's moments...) runs
unchanged, and the server never holds more than one client's weights. Robust strategies (median,
trimmed mean, Krum) need every reply at once, and Flower's DP wrapper calibrates its noise on the
replies it is given: those keep the list of replies (``streams``).
"""

import time
from typing import Dict, Iterable, Iterator

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedhubert_plugin.federation.wire import ARRAYS, METRICS

STREAMING_STRATEGIES = ("fedavg", "fedadam", "fedyogi", "fedadagrad")
PULL_INTERVAL = 0.2  # seconds between polls of the grid for replies


def streams(settings) -> bool:
    """Whether the run of ``settings`` (``FederationSettings``) aggregates replies as they arrive."""
    return settings.strategy in STREAMING_STRATEGIES and not settings.dp_clipping_norm


def replies_as_they_come(grid: Grid, messages: Iterable[Message], timeout: float) -> Iterator[Message]:
    """Push ``messages``; yield each reply as it arrives, until all are in or ``timeout`` seconds passed."""
    waiting = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(waiting)):
            waiting.discard(reply.metadata.reply_to_message_id)
            yield reply
        if waiting:
            time.sleep(PULL_INTERVAL)


class RunningMean:
    """The weighted mean of the replies added so far, arrays and metrics, holding only the sums."""

    def __init__(self, weighted_by_key: str):
        self.key = weighted_by_key
        self.weight = 0.0
        self.arrays: Dict[str, np.ndarray] = {}
        self.metrics: Dict[str, float] = {}

    def add(self, reply: Message) -> None:
        """Fold a screened reply in."""
        metrics = reply.content[METRICS]
        weight = float(metrics[self.key])
        for name, array in reply.content[ARRAYS].items():
            weighted = array.numpy().astype(np.float64) * weight
            if name in self.arrays:
                self.arrays[name] += weighted
            else:
                self.arrays[name] = weighted
        for name, value in metrics.items():
            if name != self.key:
                self.metrics[name] = self.metrics.get(name, 0.0) + float(value) * weight
        self.weight += weight

    def as_reply(self, reply_to: Message) -> Message:
        """One reply holding the mean (arrays in float32), weighing what every folded reply weighed together.
        Consumes the sums, tensor by tensor, so that they and the mean are never both whole in memory."""
        arrays = ArrayRecord(
            {k: Array((self.arrays.pop(k) / self.weight).astype(np.float32)) for k in list(self.arrays)}
        )
        metrics = MetricRecord({**{k: v / self.weight for k, v in self.metrics.items()}, self.key: self.weight})
        return Message(RecordDict({ARRAYS: arrays, METRICS: metrics}), reply_to=reply_to)
