"""The clients' validation of one global model, averaged by their valid utterances."""

from dataclasses import dataclass
from typing import Dict

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedhubert_plugin.federation.wire import METRICS, NUM_EXAMPLES


@dataclass
class Validation:
    """The clients' validation of one global model: the model of round ``model_round`` (0: the initial one)."""

    model_round: int
    metrics: Dict[str, float]  # averaged by valid utterances; empty when no client validated
    clients: Dict[str, Dict[str, float]]  # per client
    bytes_sent: int = 0  # a separate evaluation's download; 0 when it came with training

    def score(self, metric: str, maximize: bool = False) -> float:
        """``metric`` as a score where lower is better (negated when ``maximize``); inf when it was not measured."""
        if metric not in self.metrics:
            return float("inf")
        return -float(self.metrics[metric]) if maximize else float(self.metrics[metric])

    def line(self, how: str) -> Dict:
        """This validation in ``metrics.jsonl``; ``how``: ``with training`` or ``evaluation``."""
        return {"model_round": self.model_round, "how": how, "metrics": self.metrics, "clients": self.clients}


# error rates (%) that the clients' error counts give exactly: rate, errors, total (fairseq ctc criterion's)
POOLED_RATES = (("wer", "word_errors", "words"), ("uer", "char_errors", "chars"))


def pooled_rates(metrics: Dict[str, float], rows: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """``metrics`` with each error rate computed from the errors and the words (letters) of all clients, as one
    corpus, as fairseq counts it, instead of averaged by utterances; the counts summed too."""
    pooled = dict(metrics)
    for rate, errors, total in POOLED_RATES:
        if all(errors in row and total in row for row in rows.values()):
            pooled[errors] = sum(row[errors] for row in rows.values())
            pooled[total] = sum(row[total] for row in rows.values())
            pooled[rate] = 100.0 * pooled[errors] / pooled[total] if pooled[total] else float("nan")
    return pooled


def averaged_validation(model_round: int, rows: Dict[str, Dict[str, float]], bytes_sent: int = 0) -> Validation:
    """Per-client validations (each with its ``num-examples``) and their average by valid utterances (error
    rates: ``pooled_rates``)."""
    if not rows:
        return Validation(model_round, {}, {}, bytes_sent)
    records = [RecordDict({METRICS: MetricRecord(row)}) for row in rows.values()]
    metrics = pooled_rates(dict(aggregate_metricrecords(records, NUM_EXAMPLES)), rows)
    clients = {name: {k: v for k, v in row.items() if k != NUM_EXAMPLES} for name, row in rows.items()}
    return Validation(model_round, metrics, clients, bytes_sent)
