"""The server's round loop of federated pretraining (and distillation).

Each round ``r``: wait (at most the round timeout) for enough nodes; send the global weights
to train; the strategy screens the replies and aggregates (``strategies``); ask every client
to validate the new weights; write ``checkpoint_round{r}.pt``, ``checkpoint_last.pt`` and,
when the validation loss is the best so far, ``checkpoint_best.pt`` and s3prl's
``best_global_model.pt``; then one line of ``metrics.jsonl`` and the resume state (``runlog``).
When the run ends, finished or stopped, ``participation.md`` says per client how many rounds it
trained and failed, and its last error.
"""

import logging
import shutil
import time
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig

from fedhubert_plugin.checkpoints import (
    check_architecture,
    copy_fitting_tensors,
    load_checkpoint,
    save_fairseq_checkpoint,
    save_s3prl_checkpoint,
)
from fedhubert_plugin.federation.nodes import wait_for_nodes
from fedhubert_plugin.federation.runlog import PARTICIPATION_FILE, Progress, RunLog, participation_table, read_metrics
from fedhubert_plugin.federation.screening import ScreenedStrategy
from fedhubert_plugin.federation.secure import secure_average_update
from fedhubert_plugin.federation.settings import FederationSettings
from fedhubert_plugin.federation.strategies import evaluation_strategy, privacy_spent
from fedhubert_plugin.federation.wire import (
    METRICS,
    UPDATES,
    ClientConfig,
    broken_data_of,
    client_of,
    config_record,
    message_bytes,
    record_of,
)
from fedhubert_plugin.files import atomic_write, atomic_write_text
from fedhubert_plugin.recipes import recipe_initial_model

logger = logging.getLogger(__name__)

Weights = Dict[str, np.ndarray]


@dataclass
class TrainedRound:
    """A round's training: the new global weights and what the server learnt about the clients."""

    weights: Weights
    metrics: Dict[str, float]  # aggregated over the clients
    clients: Dict[str, Dict[str, float]]  # per client, keys prefixed train_
    rejected: List[Dict] = field(default_factory=list)
    clipped: List[Dict] = field(default_factory=list)
    bytes_sent: int = 0  # model weights only (SecAgg+ rounds: not counted)
    bytes_received: int = 0


def initial_model(settings: FederationSettings) -> Tuple[DictConfig, Weights]:
    """The recipe's config and seeded initial weights, built on the server without client data."""
    cfg, weights = recipe_initial_model(
        settings.recipe, settings.overrides, settings.label_rate, settings.n_clusters, settings.data_root
    )
    if settings.init_from:
        weights = copy_fitting_tensors(weights, settings.init_from)
    return cfg, weights


def client_rows(replies: List[Message], prefix: str) -> Dict[str, Dict[str, float]]:
    """Each replying client's metrics, keys prefixed with ``prefix``."""
    return {
        client_of(r): {f"{prefix}{k}": v for k, v in r.content[METRICS].items()} for r in replies if not r.has_error()
    }


def train_round(
    grid: Grid,
    rnd: int,
    strategy: Strategy,
    weights: Weights,
    config: ClientConfig,
    settings: FederationSettings,
    timing: Dict[str, float],
) -> TrainedRound:
    """Send the weights to train, and aggregate the replies with ``strategy`` (which screens them)."""
    tic = time.perf_counter()
    outgoing = record_of(weights, settings.transport_dtype)
    timing["serialize"] = time.perf_counter() - tic
    messages = list(strategy.configure_train(rnd, outgoing, config_record(config), grid))
    replies = list(grid.send_and_receive(messages, timeout=settings.round_timeout))
    timing["clients_train"] = time.perf_counter() - tic - timing["serialize"]
    bytes_received = message_bytes(replies)  # as they travelled, before widening to float32
    tic = time.perf_counter()
    aggregated, metrics = strategy.aggregate_train(rnd, replies)
    timing["aggregate"] = time.perf_counter() - tic
    new_weights = {k: v.numpy().astype(weights[k].dtype, copy=False) for k, v in aggregated.items()}
    if isinstance(strategy, ScreenedStrategy):  # the clients whose updates were aggregated, and why others were not
        accepted, rejected, clipped = strategy.accepted, strategy.rejected, strategy.clipped
    else:
        accepted, rejected, clipped = [r for r in replies if not r.has_error()], [], []
    clients = client_rows(accepted, "train_")
    return TrainedRound(
        new_weights, dict(metrics or {}), clients, rejected, clipped, message_bytes(messages), bytes_received
    )


def secure_train_round(
    grid: Grid, rnd: int, weights: Weights, config: ClientConfig, settings: FederationSettings, timing: Dict[str, float]
) -> TrainedRound:
    """A SecAgg+ round (``secure``): the global weights plus the clients' average update."""
    tic = time.perf_counter()
    update, reports = secure_average_update(grid, rnd, weights, dict(config_record(config)), settings)
    timing["clients_train"] = time.perf_counter() - tic
    clients = {str(r.pop("client")): {f"train_{k}": v for k, v in r.items()} for r in reports}
    metrics = {k: float(np.mean([r[k] for r in reports])) for k in reports[0]} if reports else {}
    return TrainedRound({k: weights[k] + update[k] for k in weights}, metrics, clients)


@dataclass
class Validation:
    """Every client's validation of the new global weights."""

    metrics: Dict[str, float]  # averaged by valid utterances
    clients: Dict[str, Dict[str, float]]  # per client, keys prefixed valid_
    bytes_sent: int

    @property
    def loss(self) -> float:
        return float(self.metrics.get("loss", float("inf")))


def evaluate_round(
    grid: Grid,
    rnd: int,
    weights: Weights,
    config: ClientConfig,
    settings: FederationSettings,
    timing: Dict[str, float],
) -> Validation:
    """Every client validates ``weights`` (metrics averaged with FedAvg, whatever the training strategy)."""
    tic = time.perf_counter()
    evaluation = evaluation_strategy(settings)
    wait_for_nodes(grid, settings.min_available_nodes, settings.round_timeout)
    outgoing = record_of(weights, settings.transport_dtype)
    messages = list(evaluation.configure_evaluate(rnd, outgoing, config_record(config), grid))
    replies = grid.send_and_receive(messages, timeout=settings.round_timeout)
    replies = [r for r in replies if not r.has_error() and not broken_data_of(r)]
    timing["clients_evaluate"] = time.perf_counter() - tic
    metrics = dict(evaluation.aggregate_evaluate(rnd, replies) or {})
    return Validation(metrics, client_rows(replies, "valid_"), message_bytes(messages))


def save_checkpoints(
    settings: FederationSettings, cfg: DictConfig, weights: Weights, rnd: int, valid_loss: float, progress: Progress
) -> None:
    """The round's checkpoint, ``checkpoint_last.pt``, and the best ones when ``valid_loss`` is the best so far."""
    server_dir = settings.server_dir
    round_path = server_dir / f"checkpoint_round{rnd}.pt"
    extra = {"federated_round": rnd, "valid_loss": valid_loss}
    save_fairseq_checkpoint(round_path, cfg, weights, settings.n_clusters, progress.updates_done, extra)
    atomic_write(server_dir / "checkpoint_last.pt", lambda tmp: shutil.copyfile(round_path, tmp))
    if valid_loss < progress.best_loss:
        progress.best_loss, progress.best_round = valid_loss, rnd
        atomic_write(server_dir / "checkpoint_best.pt", lambda tmp: shutil.copyfile(round_path, tmp))
        save_s3prl_checkpoint(server_dir / "best_global_model.pt", cfg, weights, settings.n_clusters)


def round_line(
    rnd: int,
    settings: FederationSettings,
    strategy: Strategy,
    trained: TrainedRound,
    validation: Validation,
    progress: Progress,
    seconds: float,
    timing: Dict[str, float],
) -> Dict:
    """The round's line of ``metrics.jsonl``."""
    clients = {name: dict(row) for name, row in trained.clients.items()}
    for name, row in validation.clients.items():
        clients.setdefault(name, {}).update(row)
    return {
        "round": rnd,
        "train": trained.metrics,
        "valid": validation.metrics,
        "participants": sorted(trained.clients),
        "rejected": trained.rejected,
        "clipped": trained.clipped,
        "privacy": privacy_spent(strategy),
        "secure_aggregation": settings.secure_aggregation,
        "bytes_sent": trained.bytes_sent + validation.bytes_sent,
        "bytes_received": trained.bytes_received,
        "round_seconds": seconds,
        "server_seconds": timing,
        "clients": clients,
        "best_round": progress.best_round,
    }


def run_round(
    grid: Grid,
    rnd: int,
    settings: FederationSettings,
    strategy: Strategy,
    cfg: DictConfig,
    weights: Weights,
    progress: Progress,
    log: RunLog,
) -> Weights:
    """One round (see the module docstring); returns the new global weights."""
    start, timing = time.monotonic(), {}
    config = ClientConfig.of(settings, progress.updates_done)
    wait_for_nodes(grid, settings.min_available_nodes, settings.round_timeout)
    if settings.secure_aggregation:
        trained = secure_train_round(grid, rnd, weights, config, settings, timing)
    else:
        trained = train_round(grid, rnd, strategy, weights, config, settings, timing)
    # clients report the updates they made (with local epochs it depends on their data)
    progress.updates_done += int(round(float(trained.metrics.get(UPDATES, settings.updates_per_round))))
    validation = evaluate_round(grid, rnd, trained.weights, config, settings, timing)
    tic = time.perf_counter()
    save_checkpoints(settings, cfg, trained.weights, rnd, validation.loss, progress)
    timing["checkpoint"] = time.perf_counter() - tic
    log.append(round_line(rnd, settings, strategy, trained, validation, progress, time.monotonic() - start, timing))
    progress.round_done = rnd
    log.save_state(progress, strategy)
    return trained.weights


def resume(settings: FederationSettings, strategy: Strategy, log: RunLog, weights: Weights) -> Tuple[Progress, Weights]:
    """With ``resume`` and a saved state: the progress and the weights of the last completed round."""
    if not settings.resume or not log.state_path.is_file():
        if settings.resume:
            logger.info("resume: no server state in %s, starting at round 1", settings.server_dir)
        return Progress(), weights
    progress = log.restore_state(strategy)
    # the round's own checkpoint: checkpoint_last.pt may already hold a round killed before its state was saved
    last = settings.server_dir / f"checkpoint_round{progress.round_done}.pt"
    resumed = load_checkpoint(last)["model"]
    check_architecture(weights, resumed, last, f"{settings.recipe} {' '.join(settings.overrides)}".strip())
    logger.info(
        "resuming after round %d (best valid loss %.4f at round %d)",
        progress.round_done,
        progress.best_loss,
        progress.best_round,
    )
    return progress, {k: v.numpy() for k, v in resumed.items()}


def run_rounds(grid: Grid, settings: FederationSettings, strategy: Strategy) -> None:
    """Rounds until ``settings.num_server_rounds``, after those a resumed run already completed."""
    log = RunLog(settings.server_dir)
    settings.save(settings.server_dir / "settings.json")
    cfg, weights = initial_model(settings)
    progress, weights = resume(settings, strategy, log, weights)
    stopped: List[Dict] = []  # a round that raised: its rejections, for the participation table
    try:
        for rnd in range(progress.round_done + 1, settings.num_server_rounds + 1):
            stopped = [{"round": rnd, "participants": [], "rejected": []}]
            weights = run_round(grid, rnd, settings, strategy, cfg, weights, progress, log)
            stopped = []
    finally:
        log.close()
        for line in stopped:
            line["rejected"] = list(getattr(strategy, "rejected", []))
        table = participation_table(read_metrics(settings.server_dir) + stopped)
        atomic_write_text(settings.server_dir / PARTICIPATION_FILE, table + "\n")
        logger.info("participation (also in %s):\n%s", settings.server_dir / PARTICIPATION_FILE, table)
