"""What the server checks in each client update before it aggregates, as a strategy wrapper.

``ScreenedStrategy`` wraps the run's strategy the way Flower's DP wrappers do: each reply is
screened before the wrapped strategy aggregates (``screen_reply``), a node that never answered is
listed (``missing_replies``), and a round with too few usable updates stops, naming every
rejection and the fix, with nothing aggregated.

An update is rejected when the client failed, found its data broken (which stops the run
unless ``tolerate_broken_data``) or sent no reply within the round timeout,
when its weights do not match the model's names, when they hold NaN or Inf, or when the
update (client weights minus the global weights) is larger than the global model itself
(L2 norms): nothing a few local steps of HuBERT produce. With ``max_update_norm`` set, an
update above it is scaled down to it (clipped) and kept. Every decision is logged with the
client's name (or its node id when it never replied).
"""

import logging
import math
import re
from typing import Dict, Iterable, Iterator, List, Optional, Set, Tuple

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedhubert_plugin.federation.server.streaming import RunningMean
from fedhubert_plugin.federation.settings import RESUME_ADVICE
from fedhubert_plugin.federation.wire import (
    ARRAYS,
    METRICS,
    arrays_of,
    broken_data_of,
    client_of,
    record_of,
    view_of,
    views_of,
)

logger = logging.getLogger(__name__)

# an update larger than this times the global model's norm is garbage, not training
ABSURD_UPDATE_RATIO = 1.0
SAME_NAME = (
    "a second reply this round from a client of this name: two nodes share a client folder "
    "(each SuperNode needs its own --node-config data-dir); only the first reply is aggregated"
)


def l2_norm(arrays) -> float:
    """L2 norm over all arrays, in float64."""
    return float(np.sqrt(sum(float(np.square(a, dtype=np.float64).sum()) for a in arrays)))


def update_norm(arrays: ArrayRecord, reference: Dict[str, np.ndarray]) -> float:
    """L2 norm of ``arrays`` minus ``reference`` (NaN when they hold NaN or Inf)."""
    return l2_norm(view_of(a).astype(np.float64) - reference[k] for k, a in arrays.items())


def clipped(arrays: ArrayRecord, reference: Dict[str, np.ndarray], scale: float) -> ArrayRecord:
    """``reference + scale * (arrays - reference)``, in the arrays' dtypes."""
    return ArrayRecord(
        {k: Array((reference[k] + scale * (view_of(a) - reference[k])).astype(a.dtype)) for k, a in arrays.items()}
    )


def sender(reply: Message, messages: List[Message]) -> int:
    """The node a reply answers for: the destination of the message it replies to (an error the
    SuperLink writes for an unreachable node comes from the SuperLink itself)."""
    for message in messages:
        if message.metadata.message_id == reply.metadata.reply_to_message_id:
            return message.metadata.dst_node_id
    return reply.metadata.src_node_id


def error_summary(reason: str) -> str:
    """The informative line of a client's error (Ray wraps it in colour codes and tracebacks)."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", reason).splitlines() if line.strip()]
    message = next((line for line in reversed(lines) if "Message:" in line), lines[0] if lines else "")
    return message[:500]


def is_half(arrays: ArrayRecord) -> bool:
    """Whether a record holds float16 arrays (half-precision transport), read from its headers."""
    return any(array.dtype == "float16" for array in arrays.values())


def unfit_update(arrays: ArrayRecord, reference: Dict[str, np.ndarray], norm: float, model_norm: float) -> str:
    """Why an update (of L2 ``norm``) cannot be aggregated; empty when it can."""
    if set(arrays.keys()) != set(reference):
        return "weights do not match the model's parameter names"
    if not np.isfinite(norm):
        return "update holds NaN or Inf"
    if norm > ABSURD_UPDATE_RATIO * model_norm:
        return f"update norm {norm:.4g} exceeds the global model's norm {model_norm:.4g}"
    return ""


def screen_reply(
    reply: Message,
    reference: Dict[str, np.ndarray],
    model_norm: float,
    max_update_norm: float = 0.0,
    names: Optional[Dict[int, str]] = None,
    messages: Optional[List[Message]] = None,
) -> Tuple[Optional[Message], Optional[Dict], Optional[Dict]]:
    """One reply screened: the reply fit to aggregate (clipped when asked) or None, its rejection or None,
    its clipping or None.

    ``names`` maps node ids to client names seen before, to name a client whose reply is an
    error (it learns this reply's); ``messages`` are the ones the replies answer.
    """
    names = names if names is not None else {}
    if reply.has_error():
        node = sender(reply, messages or [])
        reason = error_summary(str(reply.error.reason))
        return (
            None,
            {"client": names.get(node, f"node {node}"), "reason": f"client error: {reply.error.code}: {reason}"},
            None,
        )
    name = client_of(reply)
    names[sender(reply, messages or [])] = name
    if broken_data_of(reply):
        return None, {"client": name, "reason": f"broken data: {broken_data_of(reply)}", "broken_data": True}, None
    arrays = reply.content[ARRAYS]
    norm = update_norm(arrays, reference) if set(arrays.keys()) == set(reference) else math.nan
    reason = unfit_update(arrays, reference, norm, model_norm)
    if reason:
        return None, {"client": name, "reason": reason}, None
    clip = None
    if max_update_norm and norm > max_update_norm:
        reply.content[ARRAYS] = clipped(arrays, reference, max_update_norm / norm)
        clip = {"client": name, "norm": norm, "clipped_to": max_update_norm}
        logger.warning("update of %s clipped: norm %.4g > --max-update-norm %.4g", name, norm, max_update_norm)
    reply.content[METRICS]["update_norm"] = norm
    return reply, None, clip


def missing_replies(messages: List[Message], answered: Set[str], names: Dict[int, str], timeout: float) -> List[Dict]:
    """A rejection per node that was sent a message and did not answer (ids in ``answered``) within ``timeout``."""
    missing = [m.metadata.dst_node_id for m in messages if m.metadata.message_id not in answered]
    rejected = [
        {"client": names.get(node, f"node {node}"), "reason": f"no reply within the round timeout ({timeout:g} s)"}
        for node in missing
    ]
    for r in rejected:
        logger.warning("round update missing: %s", r)
    return rejected


def layers(strategy: Strategy) -> List[Strategy]:
    """A strategy and those it wraps (ours and Flower's DP wrappers), outermost first; the last is the
    aggregating one, holding e.g. FedOpt's moments."""
    found = [strategy]
    while hasattr(found[-1], "strategy"):
        found.append(found[-1].strategy)
    return found


class ScreenedStrategy(Strategy):
    """``strategy`` with every reply screened before it aggregates; the result in the dtypes sent.

    With ``streaming`` (``streaming.streams``), each screened reply is folded into a running mean as
    it arrives and ``strategy`` (one of ``optimizers``) steps from it; otherwise it gets the list of screened
    replies. After each ``aggregate_train``, ``accepted`` holds the aggregated clients' metrics by
    name, ``rejected`` and ``clipped`` that round's other decisions.
    Robust strategies that return float64 are cast back (float64 would double the traffic).
    """

    def __init__(
        self,
        strategy: Strategy,
        max_update_norm: float,
        min_train_nodes: int,
        round_timeout: float,
        tolerate_broken_data: bool = False,
        streaming: bool = False,
    ):
        if streaming and not hasattr(strategy, "step"):
            raise TypeError(f"{type(strategy).__name__} cannot step from a running mean: use one of server.optimizers")
        self.strategy = strategy
        self.max_update_norm, self.min_train_nodes, self.round_timeout = max_update_norm, min_train_nodes, round_timeout
        self.tolerate_broken_data, self.streaming = tolerate_broken_data, streaming
        self.names: Dict[int, str] = {}  # node id -> client name, to name a client whose reply is an error
        self.reference: Dict[str, np.ndarray] = {}
        self.messages: List[Message] = []
        self.accepted: Dict[str, Dict] = {}
        self.rejected: List[Dict] = []
        self.clipped: List[Dict] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.reference = arrays_of(arrays) if is_half(arrays) else views_of(arrays)  # float32 either way
        self.accepted, self.rejected, self.clipped = {}, [], []
        self.messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        return self.messages

    def screened(self, replies: Iterable[Message]) -> Iterator[Message]:
        """The replies fit to aggregate, in float32 whatever the transport, as they come; records every decision."""
        model_norm, answered = l2_norm(self.reference.values()), set()
        for reply in replies:
            answered.add(reply.metadata.reply_to_message_id)
            if not reply.has_error() and ARRAYS in reply.content and is_half(reply.content[ARRAYS]):
                reply.content[ARRAYS] = record_of(arrays_of(reply.content[ARRAYS]))
            kept, rejection, clip = screen_reply(
                reply, self.reference, model_norm, self.max_update_norm, self.names, self.messages
            )
            self.clipped += [clip] if clip else []
            if kept is not None and client_of(kept) in self.accepted:
                kept, rejection = None, {"client": client_of(reply), "reason": SAME_NAME}
            if rejection:
                logger.warning("round update rejected: %s", rejection)
                self.rejected.append(rejection)
            else:
                self.accepted[client_of(kept)] = dict(kept.content[METRICS])
                yield kept
            del reply, kept  # a reply is a model's size: not held while the next one is read
        self.rejected += missing_replies(self.messages, answered, self.names, self.round_timeout)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> Tuple[Optional[ArrayRecord], Optional[MetricRecord]]:
        if self.streaming:  # the strategy is one of ``optimizers``, unwrapped (``streaming.streams``)
            mean = RunningMean(self.strategy.weighted_by_key, self.reference)
            for reply in self.screened(replies):
                mean.add(reply)
                del reply  # one reply at a time: not held while the next one is read
        else:  # a fixed summation order: FedAdam's m/sqrt(v) amplifies last-bit differences of near-zero updates
            to_aggregate = sorted(self.screened(replies), key=client_of)
        self.stop_on_broken_data(server_round)
        aggregated, metrics = (None, None)
        if len(self.accepted) >= self.min_train_nodes:
            if self.streaming:
                aggregated, metrics = self.strategy.step(server_round, mean)
            else:
                aggregated, metrics = self.strategy.aggregate_train(server_round, to_aggregate)
        if aggregated is None:
            self.stop_without_update(server_round)
        dtypes = {k: str(v.dtype) for k, v in self.reference.items()}
        as_sent = {k: v if v.dtype == dtypes[k] else Array(view_of(v).astype(dtypes[k])) for k, v in aggregated.items()}
        return ArrayRecord(as_sent), metrics

    def stop_on_broken_data(self, server_round: int) -> None:
        """Raise, naming each client whose data is broken and the fix, unless ``tolerate_broken_data``."""
        broken = [r for r in self.rejected if r.get("broken_data")]
        if broken and not self.tolerate_broken_data:
            raise RuntimeError(
                f"round {server_round}: the data of {', '.join(r['client'] for r in broken)} is broken: "
                f"{'; '.join(r['reason'] for r in broken)}. Nothing was aggregated. Fix those files, or leave "
                "those clients out: --tolerate-broken-data (flwr run: --run-config 'tolerate-broken-data=true')."
            )

    def stop_without_update(self, server_round: int) -> None:
        """Raise: the round has no aggregate (too few usable updates), naming every rejection and the fix."""
        kept = (
            f"the global model of round {server_round - 1} (checkpoint_round{server_round - 1}.pt)"
            if server_round > 1
            else "no global model yet"
        )
        if len(self.accepted) >= self.min_train_nodes:  # Flower's DP accountant needs every sampled client
            kept += "; DP accounting needs an update from every sampled client"
        raise RuntimeError(
            f"round {server_round}: {len(self.accepted)} usable client updates of {len(self.messages)} "
            f"(min-train-nodes {self.min_train_nodes}); rejected: {self.rejected}. "
            f"Nothing was aggregated: {kept}; fix the clients and {RESUME_ADVICE}."
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> Optional[MetricRecord]:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()
