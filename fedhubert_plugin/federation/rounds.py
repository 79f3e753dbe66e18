"""The server's round loop of federated pretraining (and distillation).

Each round ``r``: wait (at most the round timeout) for enough nodes; send the global weights to
train, i.e. the model of round ``r - 1`` (round 1: the initial model). The clients first validate
those weights and return the figures with their update, so a round costs one download of the model
(a round that follows a separate evaluation skips this: that model is already validated). The
strategy screens the replies and aggregates (``strategies``); ``checkpoint_round{r}.pt`` and
``checkpoint_last.pt`` are written. After the last round, and every ``evaluate_every`` rounds when
set, a separate evaluation message asks every node to validate the new model (one more download).

So every model is validated once: model ``k`` by the clients that train round ``k + 1``, or by
the evaluation at the end of round ``k``. Whenever a validation has the lowest loss so far (the
loss averaged over the clients that validated, by valid utterances), that model (round ``k`` ≥ 1;
the initial model is recorded but never kept) becomes ``checkpoint_best.pt`` and s3prl's
``best_global_model.pt``. Each round writes one line of ``metrics.jsonl``, holding the
validations it made with the round of the model each one measured, and the resume state
(``runlog``). When the run ends, finished or stopped, ``participation.md`` says per client how
many rounds it trained and failed, and its last error.
"""

import logging
import shutil
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from omegaconf import DictConfig
from tqdm.contrib.logging import logging_redirect_tqdm

from fedhubert_plugin.checkpoints import (
    check_architecture,
    copy_fitting_tensors,
    load_checkpoint,
    save_fairseq_checkpoint,
    save_s3prl_checkpoint,
)
from fedhubert_plugin.console import progress_bar
from fedhubert_plugin.federation.nodes import wait_for_nodes
from fedhubert_plugin.federation.runlog import (
    PARTICIPATION_FILE,
    Progress,
    RunLog,
    participation_table,
    read_metrics,
    round_postfix,
)
from fedhubert_plugin.federation.schedule import Schedule, plan_schedule
from fedhubert_plugin.federation.screening import ScreenedStrategy
from fedhubert_plugin.federation.secure import secure_average_update, split_report
from fedhubert_plugin.federation.settings import FederationSettings, SettingsError
from fedhubert_plugin.federation.strategies import evaluation_strategy, privacy_spent
from fedhubert_plugin.federation.streaming import replies_as_they_come
from fedhubert_plugin.federation.wire import (
    METRICS,
    NUM_EXAMPLES,
    UPDATES,
    ClientConfig,
    broken_data_of,
    client_of,
    config_record,
    message_bytes,
    record_of,
    validation_of,
)
from fedhubert_plugin.files import atomic_write, atomic_write_text
from fedhubert_plugin.recipes import recipe_initial_model

logger = logging.getLogger(__name__)

Weights = Dict[str, np.ndarray]


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


def initial_model(settings: FederationSettings, schedule: Schedule) -> Tuple[DictConfig, Weights]:
    """The recipe's config (with the run's lr schedule) and seeded initial weights, built on the server without
    client data."""
    cfg, weights = recipe_initial_model(
        settings.recipe, schedule.overrides, settings.label_rate, settings.n_clusters, settings.data_root
    )
    if settings.init_from:
        weights = copy_fitting_tensors(weights, settings.init_from)
    return cfg, weights


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
    new_weights = {k: v.numpy().astype(weights[k].dtype, copy=False) for k, v in aggregated.items()}
    return TrainedRound(
        new_weights,
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


def save_round_checkpoint(
    settings: FederationSettings, cfg: DictConfig, weights: Weights, rnd: int, progress: Progress
) -> None:
    """``checkpoint_round{rnd}.pt`` and ``checkpoint_last.pt``."""
    round_path = settings.server_dir / f"checkpoint_round{rnd}.pt"
    save_fairseq_checkpoint(
        round_path, cfg, weights, settings.n_clusters, progress.updates_done, {"federated_round": rnd}
    )
    atomic_write(settings.server_dir / "checkpoint_last.pt", lambda tmp: shutil.copyfile(round_path, tmp))


def keep_if_best(
    settings: FederationSettings, cfg: DictConfig, weights: Weights, validation: Validation, progress: Progress
) -> None:
    """When ``validation`` of the model of a round ≥ 1 (``weights``) has the lowest loss so far, that model
    becomes ``checkpoint_best.pt`` and ``best_global_model.pt``."""
    rnd = validation.model_round
    if rnd < 1 or not validation.loss < progress.best_loss:
        return
    progress.best_loss, progress.best_round = validation.loss, rnd
    server_dir = settings.server_dir
    round_path = server_dir / f"checkpoint_round{rnd}.pt"
    atomic_write(server_dir / "checkpoint_best.pt", lambda tmp: shutil.copyfile(round_path, tmp))
    save_s3prl_checkpoint(server_dir / "best_global_model.pt", cfg, weights, settings.n_clusters)


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
    config = ClientConfig.of(settings, progress.updates_done, validate, schedule.overrides)
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


def check_same_schedule(settings: FederationSettings, saved: Dict[str, int], schedule: Schedule) -> None:
    """A resumed run must train on the lr schedule its completed rounds trained on: resuming then equals an
    uninterrupted run. ``SettingsError`` naming both schedules and the fixes when it would change (a state saved
    before schedules were sized to the run has none to compare)."""
    if saved and saved != schedule.key:
        raise SettingsError(
            f"resume: the rounds in {settings.server_dir} trained on the lr schedule {saved}; these settings give "
            f"{schedule.key} (the schedule is sized to num-server-rounds x local-updates). Resuming would change the "
            f"schedule under the rounds already trained. Resume with the first run's --num-server-rounds and "
            f"--local-updates; to train further, start a new run from its weights (--init-from "
            f"{settings.server_dir / 'checkpoint_last.pt'}); to plan for extending a run, give "
            f"optimization.max_update for the longest run from its start"
        )


def resume(
    settings: FederationSettings, strategy: Strategy, log: RunLog, weights: Weights, schedule: Schedule
) -> Tuple[Progress, Weights]:
    """With ``resume`` and a saved state: the progress and the weights of the last completed round."""
    if not settings.resume or not log.state_path.is_file():
        if settings.resume:
            logger.info("resume: no server state in %s, starting at round 1", settings.server_dir)
        return Progress(schedule=schedule.key), weights
    progress = log.restore_state(strategy)
    # the round's own checkpoint: checkpoint_last.pt may already hold a round killed before its state was saved
    last = settings.server_dir / f"checkpoint_round{progress.round_done}.pt"
    resumed = load_checkpoint(last)["model"]
    check_architecture(weights, resumed, last, f"{settings.recipe} {' '.join(settings.overrides)}".strip())
    check_same_schedule(settings, progress.schedule, schedule)
    progress.schedule = schedule.key
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
    schedule = plan_schedule(settings)
    logger.info("%s", schedule.describe(settings))
    cfg, weights = initial_model(settings, schedule)
    progress, weights = resume(settings, strategy, log, weights, schedule)
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
