"""The server optimizers (FedAdam, FedYogi, FedAdagrad) and FedAvg's mean, holding the model's memory in place.

Flower's FedOpt strategies copy the weights they send, and each round build the mean, the update,
both moments and the new weights as new dicts: twelve to thirteen model sizes at the peak of a
round (``tests/test_optimizers.py``). The subclasses here keep Flower's classes and arguments as
the public face and change only how memory is held:

- the weights sent are read where Flower's record holds them (``wire.views_of``), not copied;
- the moments are float32 arrays, updated in place tensor by tensor;
- the new weights are made tensor by tensor from the running float64 sum of the replies' updates
  (``streaming.RunningMean``), whose tensors are freed as they are used, and are written straight
  into Flower's Arrays, which the next round sends without a copy.

At the server that is the global model, two moments, the sum (two sizes: in float32, the order
replies arrive in changed the weights of a resumed run by up to 2.5e-6) and the one reply being
folded in: six model sizes whatever the number of clients, since the grid is asked for one reply
at a time (``streaming.replies_as_they_come``). Flower's deployment transport adds one while it
reads a reply: its ``inflate_object_from_contents`` keeps every chunk of the message until the
message's last Array is made (``benchmarks/results/server_memory.md``). The arithmetic is Flower's,
in float32 from the float32 mean, as Flower's own strategies compute it on float32 weights
(``tests/test_optimizers.py``).
"""

from typing import Iterable, Optional, Tuple

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedYogi

from fedhubert_plugin.federation.server.streaming import RunningMean
from fedhubert_plugin.federation.wire import views_of


class InPlaceFedOpt:
    """What FedAdam, FedYogi and FedAdagrad share, in place; mixed in before Flower's class."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # FedOpt.configure_train would keep a copy of ``arrays``: FedAvg's makes the messages, and the
        # weights sent are read where the record holds them
        messages = FedAvg.configure_train(self, server_round, arrays, config, grid)
        self.current_arrays = views_of(arrays)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> Tuple[Optional[ArrayRecord], Optional[MetricRecord]]:
        """Flower's interface: the replies' weighted mean, then the server step."""
        mean = RunningMean(self.weighted_by_key, self.current_arrays)
        for reply in replies:
            mean.add(reply)
        return self.step(server_round, mean) if mean.weight else (None, None)

    def step(self, server_round: int, mean: RunningMean) -> Tuple[ArrayRecord, MetricRecord]:
        """The new global weights from the replies' running mean (consumed), and the replies' mean metrics."""
        metrics = mean.metric_record()
        self.m_t, self.v_t = self.m_t or {}, self.v_t or {}
        eta = self.step_size(server_round)
        new = {}
        for name in mean.names():
            current = self.current_arrays[name]
            delta = mean.pop_mean(name) - current
            m = self.m_t.setdefault(name, np.zeros(current.shape, np.float32))
            v = self.v_t.setdefault(name, np.zeros(current.shape, np.float32))
            m[...] = self.beta_1 * m + (1 - self.beta_1) * delta
            v[...] = self.second_moment(v, delta**2)
            new[name] = Array(current + eta * m / (np.sqrt(v) + self.tau))
        return ArrayRecord(new), metrics

    def step_size(self, server_round: int) -> float:
        return self.eta

    def second_moment(self, v: np.ndarray, delta_squared: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class InPlaceFedAdam(InPlaceFedOpt, FedAdam):
    """Flower's FedAdam, in place."""

    def step_size(self, server_round: int) -> float:
        """Flower's bias-corrected step (Kingma and Ba's alpha_t)."""
        t = server_round + 1.0
        return self.eta * np.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)

    def second_moment(self, v: np.ndarray, delta_squared: np.ndarray) -> np.ndarray:
        return self.beta_2 * v + (1 - self.beta_2) * delta_squared


class InPlaceFedYogi(InPlaceFedOpt, FedYogi):
    """Flower's FedYogi, in place."""

    def second_moment(self, v: np.ndarray, delta_squared: np.ndarray) -> np.ndarray:
        return v - (1.0 - self.beta_2) * delta_squared * np.sign(v - delta_squared)


class InPlaceFedAdagrad(InPlaceFedOpt, FedAdagrad):
    """Flower's FedAdagrad, in place."""

    def second_moment(self, v: np.ndarray, delta_squared: np.ndarray) -> np.ndarray:
        return v + delta_squared


class StreamingFedAvg(FedAvg):
    """Flower's FedAvg, whose step from a running mean is that mean."""

    def step(self, server_round: int, mean: RunningMean) -> Tuple[ArrayRecord, MetricRecord]:
        """The replies' weighted mean as the new global weights (the sums consumed), and their mean metrics."""
        arrays = ArrayRecord({name: Array(mean.pop_mean(name)) for name in mean.names()})
        return arrays, mean.metric_record()
