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

    @property
    def loss(self) -> float:
        return float(self.metrics.get("loss", float("inf")))

    def line(self, how: str) -> Dict:
        """This validation in ``metrics.jsonl``; ``how``: ``with training`` or ``evaluation``."""
        return {"model_round": self.model_round, "how": how, "metrics": self.metrics, "clients": self.clients}


def averaged_validation(model_round: int, rows: Dict[str, Dict[str, float]], bytes_sent: int = 0) -> Validation:
    """Per-client validations (each with its ``num-examples``) and their average by valid utterances."""
    if not rows:
        return Validation(model_round, {}, {}, bytes_sent)
    records = [RecordDict({METRICS: MetricRecord(row)}) for row in rows.values()]
    metrics = dict(aggregate_metricrecords(records, NUM_EXAMPLES))
    clients = {name: {k: v for k, v in row.items() if k != NUM_EXAMPLES} for name, row in rows.items()}
    return Validation(model_round, metrics, clients, bytes_sent)
