"""Secure aggregation of the clients' updates with Flower's SecAgg+ (``--secure-aggregation``): the server's half.

With ``client/secure.py`` (the client's half), the only modules that touch Flower's legacy and compat internals.

Flower 1.41 runs SecAgg+ as a workflow of its legacy strategy API: the server side is
``SecAggPlusWorkflow`` with a ``LegacyContext``, the client side the ``secaggplus_mod``
around a handler that speaks the legacy ``fitins``/``fitres`` records. Each client sends
its update (local weights minus the global weights), masked; the server only ever
reconstructs their sum and so learns the average update, never one client's.

What that costs, by construction:
- The average is uniform (every client counts once). SecAgg+ multiplies a client's values
  by its weight before quantising, so weighting by utterance counts would lose precision.
- Values are clipped to ``±clipping_range`` and quantised to 2**22 levels: with the default
  range 1.0 a step is 4.8e-7, well below a HuBERT update's typical coordinate.
- The server cannot screen single updates (NaN, norms) nor use robust or adaptive
  strategies: the new global model is the old one plus the average update (FedAvg).
"""

import logging
from typing import Dict, List, Tuple

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from fedhubert_plugin.federation.settings import RESUME_ADVICE, FederationSettings
from fedhubert_plugin.federation.wire import VALID_PREFIX

logger = logging.getLogger(__name__)


def split_report(report: Dict) -> Tuple[str, Dict[str, float], Dict[str, float]]:
    """A client's legacy metrics as its name, its training metrics and its validation (unprefixed)."""
    train = {k: float(v) for k, v in report.items() if k != "client" and not k.startswith(VALID_PREFIX)}
    validation = {k[len(VALID_PREFIX) :]: float(v) for k, v in report.items() if k.startswith(VALID_PREFIX)}
    return str(report["client"]), train, validation


def secure_average_update(
    grid: Grid, rnd: int, weights: Dict[str, np.ndarray], config: Dict, settings: FederationSettings
) -> Tuple[Dict[str, np.ndarray], List[Dict]]:
    """Server: one SecAgg+ training round; the clients' average update and their metrics.

    ``config`` is the round's train config; raises when the protocol halts (too few clients
    answered a stage to reconstruct the sum).
    """
    reports: List[Dict] = []

    def keep_metrics(results):
        reports.extend(dict(metrics) for _, metrics in results)
        return {}

    strategy = LegacyFedAvg(
        fraction_fit=settings.fraction_train,
        fraction_evaluate=0.0,
        min_fit_clients=settings.min_train_nodes,
        min_available_clients=settings.min_available_nodes,
        fit_metrics_aggregation_fn=keep_metrics,
        on_fit_config_fn=lambda _: {**config, "server-round": rnd, "param-names": list(weights)},
    )
    manager = SimpleClientManager()
    for node in grid.get_node_ids():
        manager.register(GridClientProxy(node, grid, grid.run.run_id))
    context = LegacyContext(
        Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        strategy=strategy,
        client_manager=manager,
    )
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: rnd})
    sent = ArrayRecord(numpy_ndarrays=list(weights.values()))
    context.state.array_records[MAIN_PARAMS_RECORD] = sent
    workflow = SecAggPlusWorkflow(
        num_shares=settings.secagg_shares,
        reconstruction_threshold=settings.secagg_threshold,
        clipping_range=settings.secagg_clipping_range,
        max_weight=1.0,
        timeout=settings.round_timeout,
    )
    workflow(grid, context)
    result = context.state.array_records[MAIN_PARAMS_RECORD]
    if result is sent:
        raise RuntimeError(
            f"round {rnd}: SecAgg+ halted (too few clients answered a stage of the protocol; see Flower's log). "
            f"Nothing was aggregated; start the missing clients and {RESUME_ADVICE}."
        )
    update = {name: a.numpy().astype(weights[name].dtype) for name, a in zip(weights, result.values())}
    return update, reports
