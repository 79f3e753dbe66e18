"""The server's round loop of federated pretraining (and distillation).

Each round ``r``: wait (at most the round timeout) for enough nodes; send the global weights to
train, i.e. the model of round ``r - 1`` (round 1: the initial model). The clients first validate
those weights and return the figures with their update, so a round costs one download of the model
(a round that follows a separate evaluation skips this: that model is already validated). The
strategy screens the replies and aggregates (``strategies``); ``checkpoint_round{r}.pt`` and
``checkpoint_last.pt`` are written. After the last round, and every ``evaluate_every`` rounds when
set, a separate evaluation message asks every node to validate the new model (one more download).

So every model is validated once: model ``k`` by the clients that train round ``k + 1``, or by
the evaluation at the end of round ``k``. Whenever a validation is the best so far (pretraining: the lowest
loss averaged over the clients that validated, by valid utterances; fine-tuning: the lowest WER of all their
words; ``checkpointing.best_metric``), that model (round ``k`` ≥ 1; the initial model is recorded but never
kept) becomes ``checkpoint_best.pt`` and, unless fine-tuned, s3prl's ``best_global_model.pt``
(``checkpointing``). Each round writes one line of ``metrics.jsonl``, holding the validations it made with the
round of the model each one measured, and the resume state (``runlog``). When the run ends, finished or
stopped, ``participation.md`` says per client how many rounds it trained and failed, and its last error.
"""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig
from tqdm.contrib.logging import logging_redirect_tqdm

from fedhubert_plugin.console import progress_bar
from fedhubert_plugin.federation.schedule import Schedule, plan_schedule
from fedhubert_plugin.federation.server.checkpointing import (
    Weights,
    initial_model,
    keep_if_best,
    resume,
    save_round_checkpoint,
)
from fedhubert_plugin.federation.server.grid import wait_for_nodes
from fedhubert_plugin.federation.server.runlog import (
    PARTICIPATION_FILE,
    Progress,
    RunLog,
    participation_table,
    read_metrics,
    round_postfix,
)
from fedhubert_plugin.federation.server.screening import ScreenedStrategy
from fedhubert_plugin.federation.server.secure import secure_average_update, split_report
from fedhubert_plugin.federation.server.strategies import evaluation_strategy, privacy_spent
from fedhubert_plugin.federation.server.streaming import replies_as_they_come
from fedhubert_plugin.federation.server.validation import Validation, averaged_validation
from fedhubert_plugin.federation.settings import FederationSettings
from fedhubert_plugin.federation.wire import (
    METRICS,
    UPDATES,
    ClientConfig,
    broken_data_of,
    client_of,
    config_record,
    message_bytes,
    record_of,
    validation_of,
    views_of,
)
from fedhubert_plugin.files import atomic_write_text
from fedhubert_plugin.recipes import encoder_args
from fedhubert_plugin.reference_curve import reference_curves

logger = logging.getLogger(__name__)


@dataclass
class TrainedRound:
    """A round's training: the new global weights and what the server learnt about the clients."""

    weights: Weights
    metrics: Dict[str, float]  # aggregated over the clients
    clients: Dict[str, Dict[str, float]]  # per client, keys prefixed train_
    validation: Validation  # of the weights the clients received, when they were asked to validate them
    rejected: List[Dict] = field(default_factory=list)
    clipped: List[Dict] = field(default_factory=list)
    bytes_sent: int = 0  # model weights only (SecAgg+ rounds: not counted)
    bytes_received: int = 0


def client_rows(replies: List[Message]) -> Dict[str, Dict[str, float]]:
    """Each replying client's metrics, by name."""
    return {client_of(r): dict(r.content[METRICS]) for r in replies if not r.has_error()}


def train_rows(rows: Dict[str, Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    """Per-client training metrics as ``metrics.jsonl`` holds them: keys prefixed ``train_``."""
    return {name: {f"train_{k}": v for k, v in row.items()} for name, row in rows.items()}


def observed(replies: Iterable[Message], validations: Dict[str, Dict], received: List[int]) -> Iterator[Message]:
    """``replies`` passed on as they come, noting each one's validation and its bytes (as they travelled)."""
    for reply in replies:
        received[0] += message_bytes([reply])
        validation = validation_of(reply)
        if validation:
            validations[client_of(reply)] = validation
        yield reply
        del reply  # a reply is a model's size: not held while the next one is read


def train_round(
    grid: Grid,
    rnd: int,
    strategy: ScreenedStrategy,
    weights: Weights,
    config: ClientConfig,
    settings: FederationSettings,
    timing: Dict[str, float],
) -> TrainedRound:
    """Send the weights to train, and aggregate the replies with ``strategy`` (which screens them) as they come."""
    tic = time.perf_counter()
    outgoing = record_of(weights, settings.transport_dtype)
    timing["serialize"] = time.perf_counter() - tic
    messages = list(strategy.configure_train(rnd, outgoing, config_record(config), grid))
    validations, received = {}, [0]
    replies = observed(replies_as_they_come(grid, messages, settings.round_timeout), validations, received)
    aggregated, metrics = strategy.aggregate_train(rnd, replies)
    # clients train while replies are folded in: "clients_train" holds the aggregation of all but the last
    timing["clients_train"] = time.perf_counter() - tic - timing["serialize"]
    return TrainedRound(
        views_of(aggregated),
        dict(metrics or {}),
        train_rows(strategy.accepted),
        averaged_validation(rnd - 1, validations),
        strategy.rejected,
        strategy.clipped,
        message_bytes(messages),
        received[0],
    )


def secure_train_round(
    grid: Grid, rnd: int, weights: Weights, config: ClientConfig, settings: FederationSettings, timing: Dict[str, float]
) -> TrainedRound:
    """A SecAgg+ round (``secure``): the global weights plus the clients' average update."""
    tic = time.perf_counter()
    update, reports = secure_average_update(grid, rnd, weights, dict(config_record(config)), settings)
    timing["clients_train"] = time.perf_counter() - tic
    trains, validations = {}, {}
    for name, train, validation in map(split_report, reports):
        trains[name] = train
        if validation:
            validations[name] = validation
    metrics = {k: float(np.mean([row[k] for row in trains.values()])) for k in next(iter(trains.values()), {})}
    new_weights = {k: weights[k] + update[k] for k in weights}
    return TrainedRound(new_weights, metrics, train_rows(trains), averaged_validation(rnd - 1, validations))


def evaluate_round(
    grid: Grid,
    rnd: int,
    weights: Weights,
    config: ClientConfig,
    settings: FederationSettings,
    timing: Dict[str, float],
) -> Validation:
    """Every node validates ``weights``, the model of round ``rnd``, in a separate evaluation message."""
    tic = time.perf_counter()
    wait_for_nodes(grid, settings.min_available_nodes, settings.round_timeout)
    outgoing = record_of(weights, settings.transport_dtype)
    messages = list(evaluation_strategy(settings).configure_evaluate(rnd, outgoing, config_record(config), grid))
    replies = replies_as_they_come(grid, messages, settings.round_timeout)
    replies = [r for r in replies if not r.has_error() and not broken_data_of(r)]
    timing["clients_evaluate"] = time.perf_counter() - tic
    return averaged_validation(rnd, client_rows(replies), message_bytes(messages))


def round_line(
    rnd: int,
    settings: FederationSettings,
    strategy: Strategy,
    trained: TrainedRound,
    evaluation: Optional[Validation],
    progress: Progress,
    seconds: float,
    timing: Dict[str, float],
) -> Dict:
    """The round's line of ``metrics.jsonl``."""
    validations = [trained.validation.line("with training")] if trained.validation.metrics else []
    validations += [evaluation.line("evaluation")] if evaluation else []
    return {
        "round": rnd,
        "train": trained.metrics,
        "validations": validations,
        "participants": sorted(trained.clients),
        "rejected": trained.rejected,
        "clipped": trained.clipped,
        "privacy": privacy_spent(strategy),
        "secure_aggregation": settings.secure_aggregation,
        "bytes_sent": trained.bytes_sent + (evaluation.bytes_sent if evaluation else 0),
        "bytes_received": trained.bytes_received,
        "round_seconds": seconds,
        "server_seconds": timing,
        "clients": trained.clients,
        "best_round": progress.best_round,
    }


def run_round(
    grid: Grid,
    rnd: int,
    settings: FederationSettings,
    strategy: Strategy,
    cfg: DictConfig,
    weights: Weights,
    schedule: Schedule,
    progress: Progress,
    log: RunLog,
) -> Tuple[Weights, Dict]:
    """One round (see the module docstring); returns the new global weights and the round's line."""
    start, timing = time.monotonic(), {}
    validate = rnd == 1 or not settings.evaluates(rnd - 1)  # else the evaluation of round rnd - 1 did
    config = ClientConfig.of(settings, progress.updates_done, validate, schedule.overrides, encoder_args(cfg))
    wait_for_nodes(grid, settings.min_available_nodes, settings.round_timeout)
    if settings.secure_aggregation:
        trained = secure_train_round(grid, rnd, weights, config, settings, timing)
    else:
        trained = train_round(grid, rnd, strategy, weights, config, settings, timing)
    # clients report the updates they made (with local epochs it depends on their data)
    progress.updates_done += int(round(float(trained.metrics.get(UPDATES, settings.updates_per_round))))
    tic = time.perf_counter()
    keep_if_best(settings, cfg, weights, trained.validation, progress)
    save_round_checkpoint(settings, cfg, trained.weights, rnd, progress)
    timing["checkpoint"] = time.perf_counter() - tic
    evaluation = None
    if settings.evaluates(rnd):
        evaluation = evaluate_round(grid, rnd, trained.weights, config, settings, timing)
        keep_if_best(settings, cfg, trained.weights, evaluation, progress)
    line = round_line(rnd, settings, strategy, trained, evaluation, progress, time.monotonic() - start, timing)
    log.append(line)
    progress.round_done = rnd
    log.save_state(progress, strategy)
    return trained.weights, line


def run_rounds(grid: Grid, settings: FederationSettings, strategy: Strategy) -> None:
    """Rounds until ``settings.num_server_rounds``, after those a resumed run already completed."""
    tiny = Path(settings.recipe).stem == "tiny"  # the recipe the reference curves are of
    log = RunLog(settings.server_dir, reference_curves()["runs"].get(settings.strategy) if tiny else None)
    schedule = plan_schedule(settings)
    logger.info("%s", schedule.describe(settings))
    cfg, weights = initial_model(settings, schedule)
    progress, weights = resume(settings, strategy, log, weights, schedule)
    weights = views_of(record_of(weights))  # held once: as the bytes round 1 sends, not beside them
    settings.save(settings.server_dir / "settings.json")
    stopped: List[Dict] = []  # a round that raised: its rejections, for the participation table
    bar = progress_bar(total=settings.num_server_rounds, initial=progress.round_done, desc="rounds", unit="round")
    try:
        with logging_redirect_tqdm():
            for rnd in range(progress.round_done + 1, settings.num_server_rounds + 1):
                stopped = [{"round": rnd, "participants": [], "rejected": []}]
                weights, line = run_round(grid, rnd, settings, strategy, cfg, weights, schedule, progress, log)
                stopped = []
                bar.set_postfix(round_postfix(line), refresh=False)
                bar.update()
    finally:
        bar.close()
        log.close()
        for line in stopped:
            line["rejected"] = list(getattr(strategy, "rejected", []))
        table = participation_table(read_metrics(settings.server_dir) + stopped)
        atomic_write_text(settings.server_dir / PARTICIPATION_FILE, table + "\n")
        logger.info("participation (also in %s):\n%s", settings.server_dir / PARTICIPATION_FILE, table)
