"""Federated HuBERT pretraining: Flower ClientApp running fairseq trainers, ServerApp aggregating.

Server, each round ``r``: wait (at most the round timeout) for enough nodes, send the
global weights (``train``), screen the replies (``screening``: failed, late, non-finite or
absurd updates are rejected and logged with the client; ``--max-update-norm`` clips),
aggregate with the strategy (``strategies``: FedAdam by default, robust ones, DP), cast
back to the model's dtypes, ask every client to validate (``evaluate``),
then write ``SAVE/server/checkpoint_round{r}.pt``, ``checkpoint_last.pt``, the best by
validation loss (``checkpoint_best.pt`` and s3prl's ``best_global_model.pt``), the server
state for ``--resume``, one JSON line in ``metrics.jsonl`` and TensorBoard scalars in ``tb/``.
"""
import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from omegaconf import DictConfig
from tensorboardX import SummaryWriter

from fedhubert_plugin.checkpoints import check_architecture, copy_fitting_tensors, load_checkpoint, save_fairseq_checkpoint, save_s3prl_checkpoint
from fedhubert_plugin.federation.local_trainer import local_trainer, train_locally
from fedhubert_plugin.federation.nodes import client_folder, client_reply, ray_backend_config, simulate
from fedhubert_plugin.federation.recipe import recipe_initial_model
from fedhubert_plugin.federation.screening import missing_replies, screen
from fedhubert_plugin.federation.secure import is_secure_round, secure_aggregation_mod, secure_average_update, secure_train
from fedhubert_plugin.federation.strategies import (
    accountant_state,
    build_strategy,
    evaluation_strategy,
    privacy_spent,
    restore_accountant,
)
from fedhubert_plugin.files import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

TRANSPORT_DTYPES = ("float32", "float16")


def arrays_of(record: ArrayRecord) -> Dict[str, np.ndarray]:
    """Arrays of a record; half-precision transport is widened back to float32."""
    return {k: (a.astype(np.float32) if a.dtype == np.float16 else a) for k, a in ((k, v.numpy()) for k, v in record.items())}


def record_of(arrays: Dict[str, np.ndarray], transport_dtype: str = "float32") -> ArrayRecord:
    """A record of ``arrays``; float32 ones are sent as ``transport_dtype`` (float16 halves the traffic)."""
    def wire(a: np.ndarray) -> np.ndarray:
        return a.astype(transport_dtype) if a.dtype == np.float32 else a

    return ArrayRecord({k: Array(np.ascontiguousarray(wire(v))) for k, v in arrays.items()})


def dp_clipping_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's ``fixedclipping_mod`` on train messages whose config carries a DP clipping norm."""
    config = msg.content.config_records.get("config")
    if config is not None and KEY_CLIPPING_NORM in config:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


client_app = ClientApp(mods=[dp_clipping_mod, secure_aggregation_mod])


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Local fairseq training from the global weights."""
    if is_secure_round(msg):
        return secure_train(msg, context)
    config = msg.content["config"]
    folder = client_folder(context, config)
    start = time.perf_counter()
    arrays = arrays_of(msg.content["arrays"])
    decode_seconds = time.perf_counter() - start
    result = train_locally(config, folder, arrays)
    start = time.perf_counter()
    reply_arrays = record_of(result.arrays, str(config["transport-dtype"]))
    serialize_seconds = decode_seconds + time.perf_counter() - start
    metrics = {**result.metrics, "serialize_seconds": serialize_seconds, "num-examples": result.num_examples}
    return client_reply(msg, folder, metrics, arrays=reply_arrays)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Validation of the global weights on the client's valid split."""
    config = msg.content["config"]
    folder = client_folder(context, config)
    result = local_trainer(config).evaluate(folder, arrays_of(msg.content["arrays"]), round_seed=int(config["server-round"]))
    return client_reply(msg, folder, {**result.metrics, "num-examples": result.num_examples})


@dataclass
class PretrainSettings:
    """Everything the server needs for a federated pretraining run."""

    save_dir: str
    recipe: str
    label_rate: float
    n_clusters: int
    rounds: int
    data_root: str = ""  # simulation: the prepared data folder; deployment: empty (nodes know theirs)
    overrides: List[str] = field(default_factory=list)
    strategy: str = "fedadam"  # or fedavg, fedyogi, fedadagrad; robust: fedmedian, fedtrimmedavg, krum, multikrum
    eta: float = 1e-3
    eta_l: float = 0.0  # client learning rate sent to clients; 0: the recipe's
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-6
    local_updates: int = 10
    local_epochs: int = 0
    fraction_train: float = 1.0
    min_train_nodes: int = 2
    min_available_nodes: int = 2
    seed: int = 0
    resume: bool = False
    timeout: float = 6 * 3600.0  # round timeout (s): a Base round of 1000 updates takes ~0.5 h on one GPU, hours on CPU
    transport_dtype: str = "float32"  # float16: weights travel in half precision both ways
    init_from: str = ""  # start from the fitting tensors of this checkpoint (iteration 1's model, a student's teacher)
    max_update_norm: float = 0.0  # clip client updates (L2, client minus global) above this; 0: no clipping
    trimmed_beta: float = 0.2  # fedtrimmedavg: share cut at each end per coordinate
    malicious_nodes: int = 1  # krum / multikrum: bad clients to tolerate
    dp_clipping_norm: float = 0.0  # > 0: central DP, updates clipped on the clients to this L2 norm
    dp_noise_multiplier: float = 0.0  # Gaussian noise std = multiplier * clipping norm / sampled clients
    dp_target_delta: float = 1e-5  # delta at which the privacy spent (epsilon) is reported
    secure_aggregation: bool = False  # SecAgg+: the server sees only the sum of the clients' masked updates
    secagg_shares: float = 1.0  # SecAgg+: each client's key shares, as a share of the sampled clients
    secagg_threshold: float = 0.67  # SecAgg+: share of them needed to reconstruct a dropped client's mask
    secagg_clipping_range: float = 1.0  # SecAgg+: update values are clipped to +-this before quantisation


def initial_model(settings: PretrainSettings) -> Tuple[DictConfig, Dict[str, np.ndarray]]:
    """The recipe's config and seeded initial weights, built on the server without client data."""
    cfg, weights = recipe_initial_model(Path(settings.recipe), settings.overrides, settings.label_rate, settings.n_clusters, settings.data_root)
    if settings.init_from:
        weights = copy_fitting_tensors(weights, settings.init_from)
    return cfg, weights


def client_rows(replies: List[Message], prefix: str) -> Dict[str, Dict[str, float]]:
    rows = {}
    for reply in replies:
        if not reply.has_error():
            metrics = dict(reply.content["metrics"])
            rows[str(reply.content["client"]["name"])] = {f"{prefix}{k}": v for k, v in metrics.items()}
    return rows


def message_bytes(messages: List[Message]) -> int:
    return int(sum(r.count_bytes() for m in messages if m.has_content() for r in m.content.array_records.values()))


def server_optimizer(strategy):
    """The strategy holding FedOpt's moments ``m_t``/``v_t`` (inside a DP wrapper, the wrapped one)."""
    return getattr(strategy, "strategy", strategy)


class ServerState:
    """What ``--resume`` needs: the round done, the updates done, the best so far, strategy moments,
    the privacy spent, RNG."""

    def __init__(self, server_dir: Path):
        self.path = server_dir / "server_state.pt"

    def save(self, round_done: int, updates_done: int, best_loss: float, best_round: int, strategy) -> None:
        optimizer = server_optimizer(strategy)
        moments = {name: {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in (getattr(optimizer, name, None) or {}).items()}
                   for name in ("m_t", "v_t")}
        state = {"round": round_done, "updates": updates_done, "best_loss": best_loss, "best_round": best_round,
                 "random": random.getstate(), "accountant": accountant_state(strategy), **moments}
        atomic_write(self.path, lambda tmp: torch.save(state, tmp))

    def restore(self, strategy) -> Tuple[int, int, float, int]:
        state = load_checkpoint(self.path)
        random.setstate(state["random"])
        optimizer = server_optimizer(strategy)
        for name in ("m_t", "v_t"):
            if state[name]:
                setattr(optimizer, name, {k: v.numpy() for k, v in state[name].items()})
        restore_accountant(strategy, state.get("accountant", ""))
        return int(state["round"]), int(state["updates"]), float(state["best_loss"]), int(state["best_round"])


def settings_from_run_config(run_config: Dict) -> PretrainSettings:
    """Settings from ``[tool.flwr.app.config]`` of pyproject.toml (``flwr run``); save-dir and data-root
    relative to the SuperLink's working directory."""
    def path(key: str) -> str:
        value = str(run_config[key])
        return str(Path(value).resolve()) if value else ""

    return PretrainSettings(
        save_dir=path("save-dir"),
        recipe=str(run_config["recipe"]),  # relative: inside the app, resolved by each node
        label_rate=float(run_config["label-rate"]),
        n_clusters=int(run_config["n-clusters"]),
        rounds=int(run_config["num-server-rounds"]),
        data_root=path("data-root"),
        overrides=str(run_config["overrides"]).split(),
        strategy=str(run_config["strategy"]),
        eta=float(run_config["eta"]),
        eta_l=float(run_config["eta-l"]),
        beta_1=float(run_config["beta-1"]),
        beta_2=float(run_config["beta-2"]),
        tau=float(run_config["tau"]),
        local_updates=int(run_config["local-updates"]),
        local_epochs=int(run_config["local-epochs"]),
        fraction_train=float(run_config["fraction-train"]),
        min_train_nodes=int(run_config["min-train-nodes"]),
        min_available_nodes=int(run_config["min-available-nodes"]),
        seed=int(run_config["seed"]),
        resume=bool(run_config["resume"]),
        timeout=float(run_config["round-timeout"]),
        transport_dtype=str(run_config["transport-dtype"]),
        init_from=path("init-from"),
        max_update_norm=float(run_config["max-update-norm"]),
        trimmed_beta=float(run_config["trimmed-beta"]),
        malicious_nodes=int(run_config["malicious-nodes"]),
        dp_clipping_norm=float(run_config["dp-clipping-norm"]),
        dp_noise_multiplier=float(run_config["dp-noise-multiplier"]),
        dp_target_delta=float(run_config["dp-target-delta"]),
        secure_aggregation=bool(run_config["secure-aggregation"]),
        secagg_shares=float(run_config["secagg-shares"]),
        secagg_threshold=float(run_config["secagg-threshold"]),
        secagg_clipping_range=float(run_config["secagg-clipping-range"]),
    )


server_app = ServerApp()


@server_app.main()
def flwr_run_main(grid: Grid, context: Context) -> None:
    """Entry of ``flwr run`` (deployment or Flower's own simulation): settings from the run config."""
    run_rounds(grid, settings_from_run_config(context.run_config))


def prepared_settings(data: Path, **options) -> Tuple[PretrainSettings, int]:
    """Settings for a run on the clients of a ``fedhubert prepare`` folder, and their number.

    Label rate, cluster count and clients come from its ``prepare.json``; ``min_train_nodes``
    is capped at the number of clients. ``options`` are the other ``PretrainSettings`` fields.
    """
    prepared = Path(data) / "prepare.json"
    if not prepared.is_file():
        raise FileNotFoundError(f"{prepared} not found: run `fedhubert prepare --out {data}` first (or let it finish)")
    meta = json.loads(prepared.read_text())
    options["min_train_nodes"] = min(options.get("min_train_nodes", PretrainSettings.min_train_nodes), meta["num_clients"])
    settings = PretrainSettings(label_rate=meta["label_rate"], n_clusters=meta["n_clusters"], data_root=str(Path(data).resolve()),
                                min_available_nodes=meta["num_clients"], **options)
    return settings, meta["num_clients"]


def simulate_pretraining(settings: PretrainSettings, num_clients: int, cpus_per_client: float = 1.0, gpus_per_client: float = 0.0) -> None:
    """Run the federation with Flower's simulation runtime (Ray), one virtual SuperNode per client."""
    simulate(pretrain_server_app(settings), client_app, num_clients, ray_backend_config(cpus_per_client, gpus_per_client))


def pretrain_server_app(settings: PretrainSettings) -> ServerApp:
    """A ServerApp running ``settings.rounds`` rounds of federated pretraining."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_rounds(grid, settings)

    return app


@dataclass
class TrainedRound:
    """A round's training: the new global weights and what the server learnt about the clients."""

    weights: Dict[str, np.ndarray]
    metrics: Dict[str, float]  # aggregated over the clients
    clients: Dict[str, Dict[str, float]]  # per client, keys prefixed train_
    rejected: List[Dict] = field(default_factory=list)
    clipped: List[Dict] = field(default_factory=list)
    bytes_sent: int = 0  # model weights only (SecAgg+ rounds: not counted)
    bytes_received: int = 0


def train_round(grid: Grid, rnd: int, strategy, weights: Dict[str, np.ndarray], train_config: ConfigRecord,
                settings: PretrainSettings, names: Dict[int, str], timing: Dict[str, float]) -> TrainedRound:
    """Send the weights, screen the replies, aggregate with ``strategy``; stop when too few are usable."""
    tic = time.perf_counter()
    outgoing = record_of(weights, settings.transport_dtype)
    timing["serialize"] = time.perf_counter() - tic
    messages = list(strategy.configure_train(rnd, outgoing, train_config, grid))
    replies = list(grid.send_and_receive(messages, timeout=settings.timeout))
    timing["clients_train"] = time.perf_counter() - tic - timing["serialize"]
    bytes_received = message_bytes(replies)  # as they travelled, before widening to float32
    tic = time.perf_counter()
    for reply in replies:  # aggregate in float32 whatever the transport
        if not reply.has_error() and settings.transport_dtype != "float32":
            reply.content["arrays"] = record_of(arrays_of(reply.content["arrays"]))
    good, rejected, clipped = screen(replies, weights, settings.max_update_norm, names, messages)
    rejected += missing_replies(messages, replies, names, settings.timeout)
    aggregated, metrics = strategy.aggregate_train(rnd, good) if len(good) >= settings.min_train_nodes else (None, None)
    if aggregated is None:
        kept = f"the global model of round {rnd - 1} (checkpoint_round{rnd - 1}.pt)" if rnd > 1 else "no global model yet"
        if len(good) >= settings.min_train_nodes:  # Flower's DP accountant needs every sampled client
            kept += "; DP accounting needs an update from every sampled client"
        raise RuntimeError(
            f"round {rnd}: {len(good)} usable client updates of {len(messages)} (--min-train-nodes {settings.min_train_nodes}); "
            f"rejected: {rejected}. Nothing was aggregated: {kept}; fix the clients and run again with --resume."
        )
    new_weights = {k: v.numpy().astype(weights[k].dtype) for k, v in aggregated.items()}  # Flower's FedOpt returns float64
    optimizer = server_optimizer(strategy)
    for name in ("m_t", "v_t"):
        if getattr(optimizer, name, None):
            setattr(optimizer, name, {k: v.astype(np.float32) for k, v in getattr(optimizer, name).items()})
    timing["aggregate"] = time.perf_counter() - tic
    return TrainedRound(new_weights, dict(metrics or {}), client_rows(good, "train_"), rejected, clipped,
                        message_bytes(messages), bytes_received)


def secure_train_round(grid: Grid, rnd: int, weights: Dict[str, np.ndarray], train_config: ConfigRecord,
                       settings: PretrainSettings, timing: Dict[str, float]) -> TrainedRound:
    """A SecAgg+ round (``secure``): the global weights plus the clients' average update."""
    tic = time.perf_counter()
    update, reports = secure_average_update(grid, rnd, weights, dict(train_config), settings)
    timing["clients_train"] = time.perf_counter() - tic
    clients = {str(r.pop("client")): {f"train_{k}": v for k, v in r.items()} for r in reports}
    metrics = {k: float(np.mean([r[k] for r in reports])) for k in reports[0]} if reports else {}
    return TrainedRound({k: weights[k] + update[k] for k in weights}, metrics, clients)


def evaluate_config(settings: PretrainSettings) -> Dict:
    """What every message tells a client: the recipe to build, where data lives, the transport."""
    return {
        "recipe": settings.recipe,
        "overrides": list(settings.overrides),
        "label-rate": float(settings.label_rate),
        "lr": float(settings.eta_l),
        "data-root": settings.data_root,
        "transport-dtype": settings.transport_dtype,
    }


def train_config_after(settings: PretrainSettings, updates_done: int) -> Dict:
    """A train message's config; num-updates: the clients' LR schedules continue from there."""
    return {**evaluate_config(settings), "num-updates": updates_done, "local-updates": settings.local_updates,
            "local-epochs": settings.local_epochs}


def metric_lines_until(path: Path, done: int) -> List[str]:
    """The lines of ``metrics.jsonl`` for rounds up to ``done``; a line cut short by a kill is dropped."""
    keep = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            if json.loads(line)["round"] <= done:
                keep.append(line)
        except json.JSONDecodeError:
            logger.warning("%s: dropping a line cut short (the server was killed while writing it)", path)
    return keep


def wait_for_nodes(grid: Grid, needed: int, timeout: float) -> None:
    """Return once ``needed`` nodes are connected; raise after ``timeout`` seconds (Flower would wait forever)."""
    deadline = time.monotonic() + timeout
    while (connected := len(list(grid.get_node_ids()))) < needed:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {connected} of the {needed} nodes of --min-available-nodes are connected after the "
                               f"round timeout ({timeout:g} s); start the missing SuperNodes or lower --min-available-nodes")
        time.sleep(1.0)


def run_rounds(grid: Grid, settings: PretrainSettings) -> None:
    """The round loop (see the module docstring)."""
    server_dir = Path(settings.save_dir) / "server"
    server_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(server_dir / "settings.json", json.dumps(asdict(settings), indent=2) + "\n")
    random.seed(settings.seed)
    np.random.seed(settings.seed)  # Flower's DP noise
    strategy, evaluation = build_strategy(settings), evaluation_strategy(settings)
    cfg, weights = initial_model(settings)
    state = ServerState(server_dir)
    # TensorBoard scalars per round in fairseq's layout (tb/train, tb/valid), with the writer fairseq uses
    boards = {tag: SummaryWriter(str(server_dir / "tb" / tag)) for tag in ("train", "valid")}
    names: Dict[int, str] = {}  # node id -> client name, to name a client whose reply is an error
    first_round, updates_done, best_loss, best_round = 1, 0, float("inf"), 0
    if settings.resume and state.path.is_file():
        done, updates_done, best_loss, best_round = state.restore(strategy)
        for stale in server_dir.glob(".*.tmp"):  # a write cut short by a kill; its target is whole or absent
            logger.warning("removing %s, left by a server killed while writing", stale)
            stale.unlink()
        # the round's own checkpoint: checkpoint_last.pt may already hold a round killed before its state was saved
        last = server_dir / f"checkpoint_round{done}.pt"
        resumed = load_checkpoint(last)["model"]
        check_architecture(weights, resumed, last, f"{settings.recipe} {' '.join(settings.overrides)}".strip())
        weights = {k: v.numpy() for k, v in resumed.items()}
        first_round = done + 1
        atomic_write_text(server_dir / "metrics.jsonl", "".join(line + "\n" for line in metric_lines_until(server_dir / "metrics.jsonl", done)))
        logger.info("resuming after round %d (best valid loss %.4f at round %d)", done, best_loss, best_round)
    elif settings.resume:
        logger.info("--resume: no server state in %s, starting at round 1", server_dir)

    base_config = evaluate_config(settings)
    if settings.transport_dtype not in TRANSPORT_DTYPES:
        raise ValueError(f"transport dtype {settings.transport_dtype!r}: choose one of {', '.join(TRANSPORT_DTYPES)}")
    for rnd in range(first_round, settings.rounds + 1):
        start = time.monotonic()
        train_config = ConfigRecord(train_config_after(settings, updates_done))
        timing = {}
        wait_for_nodes(grid, settings.min_available_nodes, settings.timeout)
        if settings.secure_aggregation:
            trained = secure_train_round(grid, rnd, weights, train_config, settings, timing)
        else:
            trained = train_round(grid, rnd, strategy, weights, train_config, settings, names, timing)
        weights = trained.weights
        # clients report the updates they made (with --local-epochs it depends on their data)
        updates_done += int(round(float(trained.metrics.get("updates", settings.local_updates))))

        tic = time.perf_counter()
        wait_for_nodes(grid, settings.min_available_nodes, settings.timeout)
        eval_messages = list(evaluation.configure_evaluate(rnd, record_of(weights, settings.transport_dtype), ConfigRecord(dict(base_config)), grid))
        eval_replies = list(grid.send_and_receive(eval_messages, timeout=settings.timeout))
        timing["clients_evaluate"] = time.perf_counter() - tic
        eval_good = [r for r in eval_replies if not r.has_error()]
        valid = dict(evaluation.aggregate_evaluate(rnd, eval_good) or {})
        valid_loss = float(valid.get("loss", float("inf")))

        tic = time.perf_counter()
        extra = {"federated_round": rnd, "valid_loss": valid_loss}
        round_path = server_dir / f"checkpoint_round{rnd}.pt"
        save_fairseq_checkpoint(round_path, cfg, weights, settings.n_clusters, updates_done, extra)
        atomic_write(server_dir / "checkpoint_last.pt", lambda tmp: shutil.copyfile(round_path, tmp))
        if valid_loss < best_loss:
            best_loss, best_round = valid_loss, rnd
            atomic_write(server_dir / "checkpoint_best.pt", lambda tmp: shutil.copyfile(round_path, tmp))
            save_s3prl_checkpoint(server_dir / "best_global_model.pt", cfg, weights, settings.n_clusters)
        timing["checkpoint"] = time.perf_counter() - tic

        clients = {name: dict(row) for name, row in trained.clients.items()}
        for name, row in client_rows(eval_good, "valid_").items():
            clients.setdefault(name, {}).update(row)
        line = {
            "round": rnd,
            "train": trained.metrics,
            "valid": valid,
            "participants": sorted(trained.clients),
            "rejected": trained.rejected,
            "clipped": trained.clipped,
            "privacy": privacy_spent(strategy),
            "secure_aggregation": settings.secure_aggregation,
            "bytes_sent": trained.bytes_sent + message_bytes(eval_messages),
            "bytes_received": trained.bytes_received,
            "round_seconds": time.monotonic() - start,
            "server_seconds": timing,
            "clients": clients,
            "best_round": best_round,
        }
        with open(server_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        privacy = {"epsilon": line["privacy"]["epsilon"]} if line["privacy"] else {}
        for tag, scalars in (("train", {**line["train"], **privacy, "bytes_sent": line["bytes_sent"], "bytes_received": line["bytes_received"]}),
                             ("valid", line["valid"])):
            for key, value in scalars.items():
                boards[tag].add_scalar(key, value, rnd)
            boards[tag].flush()
        state.save(rnd, updates_done, best_loss, best_round, strategy)
        logger.info("round %d: train loss %.4f, valid loss %.4f, masked acc %.4f (%d clients, %.1f s)%s",
                    rnd, line["train"].get("loss", float("nan")), valid_loss, valid.get("acc_masked", float("nan")),
                    len(trained.clients), line["round_seconds"], f", privacy spent epsilon {privacy['epsilon']:.3f}" if privacy else "")
    for board in boards.values():
        board.close()
