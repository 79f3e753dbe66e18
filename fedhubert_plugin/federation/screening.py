"""What the server checks in each client update before it aggregates.

An update is rejected when the client failed or sent no reply within the round timeout,
when its weights do not match the model's names, when they hold NaN or Inf, or when the
update (client weights minus the global weights) is larger than the global model itself
(L2 norms): nothing a few local steps of HuBERT produce. With ``max_update_norm`` set, an
update above it is scaled down to it (clipped) and kept. Every decision is logged with the
client's name (or its node id when it never replied).
"""
import logging
import re
from typing import Dict, List, Optional, Tuple

import numpy as np
from flwr.app import Array, ArrayRecord, Message

logger = logging.getLogger(__name__)

# an update larger than this times the global model's norm is garbage, not training
ABSURD_UPDATE_RATIO = 1.0


def l2_norm(arrays) -> float:
    """L2 norm over all arrays, in float64."""
    return float(np.sqrt(sum(float(np.square(a, dtype=np.float64).sum()) for a in arrays)))


def update_norm(arrays: ArrayRecord, reference: Dict[str, np.ndarray]) -> float:
    """L2 norm of ``arrays`` minus ``reference`` (NaN when they hold NaN or Inf)."""
    return l2_norm(a.numpy().astype(np.float64) - reference[k] for k, a in arrays.items())


def clipped(arrays: ArrayRecord, reference: Dict[str, np.ndarray], scale: float) -> ArrayRecord:
    """``reference + scale * (arrays - reference)``, in the arrays' dtypes."""
    return ArrayRecord({k: Array((reference[k] + scale * (a.numpy() - reference[k])).astype(a.dtype)) for k, a in arrays.items()})


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


def screen(
    replies: List[Message],
    reference: Dict[str, np.ndarray],
    max_update_norm: float = 0.0,
    names: Optional[Dict[int, str]] = None,
    messages: Optional[List[Message]] = None,
) -> Tuple[List[Message], List[Dict], List[Dict]]:
    """Replies fit to aggregate (sorted by client), the rejected ones and the clipped ones.

    ``names`` maps node ids to client names seen before, to name a client whose reply is an
    error; ``messages`` are the ones the replies answer.
    """
    names = names if names is not None else {}
    good, rejected, clipped_updates = [], [], []
    model_norm = l2_norm(reference.values())
    for reply in replies:
        if reply.has_error():
            node = sender(reply, messages or [])
            reason = error_summary(str(reply.error.reason))
            rejected.append({"client": names.get(node, f"node {node}"), "reason": f"client error: {reply.error.code}: {reason}"})
            continue
        name = str(reply.content["client"]["name"])
        names[sender(reply, messages or [])] = name
        arrays = reply.content["arrays"]
        if set(arrays.keys()) != set(reference):
            rejected.append({"client": name, "reason": "weights do not match the model's parameter names"})
            continue
        norm = update_norm(arrays, reference)
        if not np.isfinite(norm):
            rejected.append({"client": name, "reason": "update holds NaN or Inf"})
        elif norm > ABSURD_UPDATE_RATIO * model_norm:
            rejected.append({"client": name, "reason": f"update norm {norm:.4g} exceeds the global model's norm {model_norm:.4g}"})
        else:
            if max_update_norm and norm > max_update_norm:
                reply.content["arrays"] = clipped(arrays, reference, max_update_norm / norm)
                clipped_updates.append({"client": name, "norm": norm, "clipped_to": max_update_norm})
                logger.warning("update of %s clipped: norm %.4g > --max-update-norm %.4g", name, norm, max_update_norm)
            reply.content["metrics"]["update_norm"] = norm
            good.append(reply)
    # a fixed summation order: FedAdam's m/sqrt(v) amplifies last-bit differences of near-zero updates
    good.sort(key=lambda reply: str(reply.content["client"]["name"]))
    for r in rejected:
        logger.warning("round update rejected: %s", r)
    return good, rejected, clipped_updates


def missing_replies(messages: List[Message], replies: List[Message], names: Dict[int, str], timeout: float) -> List[Dict]:
    """A rejection per node that was sent a message and did not answer within ``timeout`` seconds."""
    answered = {reply.metadata.reply_to_message_id for reply in replies}
    missing = [m.metadata.dst_node_id for m in messages if m.metadata.message_id not in answered]
    rejected = [{"client": names.get(node, f"node {node}"), "reason": f"no reply within the round timeout ({timeout:g} s)"} for node in missing]
    for r in rejected:
        logger.warning("round update missing: %s", r)
    return rejected
