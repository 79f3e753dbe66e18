"""Federated HuBERT pretraining: Flower ClientApp running fairseq trainers, ServerApp aggregating.

Server, each round ``r``: send the global weights (``train``), drop replies that failed or
hold non-finite numbers (logged with the client), aggregate with the strategy (FedAdam by
default), cast back to the model's dtypes, ask every client to validate (``evaluate``),
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
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedYogi
from omegaconf import DictConfig
from tensorboardX import SummaryWriter

from fedhubert_plugin.checkpoints import copy_fitting_tensors, load_checkpoint, save_fairseq_checkpoint, save_s3prl_checkpoint
from fedhubert_plugin.federation.local_trainer import LocalTrainer
from fedhubert_plugin.federation.nodes import client_folder, client_reply, ray_backend_config, simulate
from fedhubert_plugin.federation.recipe import recipe_initial_model
from fedhubert_plugin.files import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

_TRAINERS: Dict[tuple, LocalTrainer] = {}


def local_trainer(config: ConfigRecord) -> LocalTrainer:
    """This process's trainer for the run's recipe (built once, reused by every client it serves)."""
    key = (str(config["recipe"]), tuple(config["overrides"]), float(config["label-rate"]), float(config["lr"]))
    if key not in _TRAINERS:
        _TRAINERS.clear()
        _TRAINERS[key] = LocalTrainer(Path(key[0]), key[1], label_rate=key[2], lr=key[3] or None)
    return _TRAINERS[key]


TRANSPORT_DTYPES = ("float32", "float16")


def arrays_of(record: ArrayRecord) -> Dict[str, np.ndarray]:
    """Arrays of a record; half-precision transport is widened back to float32."""
    return {k: (a.astype(np.float32) if a.dtype == np.float16 else a) for k, a in ((k, v.numpy()) for k, v in record.items())}


def record_of(arrays: Dict[str, np.ndarray], transport_dtype: str = "float32") -> ArrayRecord:
    """A record of ``arrays``; float32 ones are sent as ``transport_dtype`` (float16 halves the traffic)."""
    def wire(a: np.ndarray) -> np.ndarray:
        return a.astype(transport_dtype) if a.dtype == np.float32 else a

    return ArrayRecord({k: Array(np.ascontiguousarray(wire(v))) for k, v in arrays.items()})


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Local fairseq training from the global weights."""
    config = msg.content["config"]
    folder = client_folder(context, config)
    start = time.perf_counter()
    arrays = arrays_of(msg.content["arrays"])
    decode_seconds = time.perf_counter() - start
    result = local_trainer(config).fit(
        folder,
        arrays,
        num_updates=int(config["num-updates"]),
        local_updates=int(config["local-updates"]),
        local_epochs=int(config["local-epochs"]),
        round_seed=int(config["server-round"]),
    )
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
    strategy: str = "fedadam"
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
    timeout: float = 6 * 3600.0
    transport_dtype: str = "float32"  # float16: weights travel in half precision both ways
    init_from: str = ""  # start from the fitting tensors of this checkpoint (iteration 1's model, a student's teacher)


def build_strategy(settings: PretrainSettings):
    """The Flower strategy named by ``settings.strategy``."""
    common = dict(
        fraction_train=settings.fraction_train,
        fraction_evaluate=1.0,
        min_train_nodes=settings.min_train_nodes,
        min_evaluate_nodes=settings.min_train_nodes,
        min_available_nodes=settings.min_available_nodes,
    )
    adaptive = dict(eta=settings.eta, eta_l=settings.eta_l or 1.0, tau=settings.tau)
    if settings.strategy == "fedavg":
        return FedAvg(**common)
    if settings.strategy == "fedadagrad":
        return FedAdagrad(**common, **adaptive)
    if settings.strategy in ("fedadam", "fedyogi"):
        cls = FedAdam if settings.strategy == "fedadam" else FedYogi
        return cls(**common, **adaptive, beta_1=settings.beta_1, beta_2=settings.beta_2)
    raise ValueError(f"unknown strategy {settings.strategy!r}; choose fedadam, fedavg, fedyogi or fedadagrad")


def initial_model(settings: PretrainSettings) -> Tuple[DictConfig, Dict[str, np.ndarray]]:
    """The recipe's config and seeded initial weights, built on the server without client data."""
    cfg, weights = recipe_initial_model(Path(settings.recipe), settings.overrides, settings.label_rate, settings.n_clusters, settings.data_root)
    if settings.init_from:
        weights = copy_fitting_tensors(weights, settings.init_from)
    return cfg, weights


def screen(replies: List[Message], reference: Dict[str, np.ndarray]) -> Tuple[List[Message], List[Dict]]:
    """Replies fit to aggregate, and the rejected ones with the client and the reason."""
    good, rejected = [], []
    for reply in replies:
        if reply.has_error():
            rejected.append({"node": reply.metadata.src_node_id, "reason": f"client error: {reply.error.reason}"})
            continue
        name = str(reply.content["client"]["name"])
        arrays = reply.content["arrays"]
        if set(arrays.keys()) != set(reference):
            rejected.append({"client": name, "reason": "weights do not match the model's parameter names"})
        elif not all(np.isfinite(a.numpy()).all() for a in arrays.values()):
            rejected.append({"client": name, "reason": "update holds NaN or Inf"})
        else:
            good.append(reply)
    # a fixed summation order: FedAdam's m/sqrt(v) amplifies last-bit differences of near-zero updates
    good.sort(key=lambda reply: str(reply.content["client"]["name"]))
    for r in rejected:
        logger.warning("round update rejected: %s", r)
    return good, rejected


def client_rows(replies: List[Message], prefix: str) -> Dict[str, Dict[str, float]]:
    rows = {}
    for reply in replies:
        if not reply.has_error():
            metrics = dict(reply.content["metrics"])
            rows[str(reply.content["client"]["name"])] = {f"{prefix}{k}": v for k, v in metrics.items()}
    return rows


def message_bytes(messages: List[Message]) -> int:
    return int(sum(r.count_bytes() for m in messages if m.has_content() for r in m.content.array_records.values()))


class ServerState:
    """What ``--resume`` needs: the round done, the updates done, the best so far, strategy moments, RNG."""

    def __init__(self, server_dir: Path):
        self.path = server_dir / "server_state.pt"

    def save(self, round_done: int, updates_done: int, best_loss: float, best_round: int, strategy) -> None:
        moments = {name: {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in (getattr(strategy, name, None) or {}).items()}
                   for name in ("m_t", "v_t")}
        state = {"round": round_done, "updates": updates_done, "best_loss": best_loss, "best_round": best_round,
                 "random": random.getstate(), **moments}
        atomic_write(self.path, lambda tmp: torch.save(state, tmp))

    def restore(self, strategy) -> Tuple[int, int, float, int]:
        state = load_checkpoint(self.path)
        random.setstate(state["random"])
        for name in ("m_t", "v_t"):
            if state[name]:
                setattr(strategy, name, {k: v.numpy() for k, v in state[name].items()})
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


def run_rounds(grid: Grid, settings: PretrainSettings) -> None:
    """The round loop (see the module docstring)."""
    server_dir = Path(settings.save_dir) / "server"
    server_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(server_dir / "settings.json", json.dumps(asdict(settings), indent=2) + "\n")
    random.seed(settings.seed)
    strategy = build_strategy(settings)
    cfg, weights = initial_model(settings)
    dtypes = {k: v.dtype for k, v in weights.items()}
    state = ServerState(server_dir)
    # TensorBoard scalars per round in fairseq's layout (tb/train, tb/valid), with the writer fairseq uses
    boards = {tag: SummaryWriter(str(server_dir / "tb" / tag)) for tag in ("train", "valid")}
    first_round, updates_done, best_loss, best_round = 1, 0, float("inf"), 0
    if settings.resume and state.path.is_file():
        done, updates_done, best_loss, best_round = state.restore(strategy)
        weights = {k: v.numpy() for k, v in load_checkpoint(server_dir / "checkpoint_last.pt")["model"].items()}
        first_round = done + 1
        keep = [line for line in (server_dir / "metrics.jsonl").read_text().splitlines() if json.loads(line)["round"] <= done]
        atomic_write_text(server_dir / "metrics.jsonl", "".join(line + "\n" for line in keep))
        logger.info("resuming after round %d (best valid loss %.4f at round %d)", done, best_loss, best_round)
    elif settings.resume:
        logger.info("--resume: no server state in %s, starting at round 1", server_dir)

    base_config = {
        "recipe": settings.recipe,
        "overrides": list(settings.overrides),
        "label-rate": float(settings.label_rate),
        "lr": float(settings.eta_l),
        "data-root": settings.data_root,
        "transport-dtype": settings.transport_dtype,
    }
    if settings.transport_dtype not in TRANSPORT_DTYPES:
        raise ValueError(f"transport dtype {settings.transport_dtype!r}: choose one of {', '.join(TRANSPORT_DTYPES)}")
    for rnd in range(first_round, settings.rounds + 1):
        start = time.monotonic()
        train_config = ConfigRecord(  # num-updates: the clients' LR schedules continue from there
            {**base_config, "num-updates": updates_done, "local-updates": settings.local_updates, "local-epochs": settings.local_epochs}
        )
        timing = {}
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
        good, rejected = screen(replies, weights)
        if len(good) < settings.min_train_nodes:
            raise RuntimeError(
                f"round {rnd}: {len(good)} usable client updates, fewer than --min-train-nodes {settings.min_train_nodes}; "
                f"rejected: {rejected}. The global model is unchanged since round {rnd - 1} (checkpoint_last.pt)."
            )
        aggregated, train_metrics = strategy.aggregate_train(rnd, good)
        weights = {k: v.numpy().astype(dtypes[k]) for k, v in aggregated.items()}  # Flower's FedOpt returns float64
        for name in ("m_t", "v_t"):
            if getattr(strategy, name, None):
                setattr(strategy, name, {k: v.astype(np.float32) for k, v in getattr(strategy, name).items()})
        timing["aggregate"] = time.perf_counter() - tic
        # clients report the updates they made (with --local-epochs it depends on their data)
        updates_done += int(round(float((train_metrics or {}).get("updates", settings.local_updates))))

        tic = time.perf_counter()
        eval_messages = list(strategy.configure_evaluate(rnd, record_of(weights, settings.transport_dtype), ConfigRecord(dict(base_config)), grid))
        eval_replies = list(grid.send_and_receive(eval_messages, timeout=settings.timeout))
        timing["clients_evaluate"] = time.perf_counter() - tic
        eval_good = [r for r in eval_replies if not r.has_error()]
        valid = dict(strategy.aggregate_evaluate(rnd, eval_good) or {})
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

        clients = client_rows(good, "train_")
        for name, row in client_rows(eval_good, "valid_").items():
            clients.setdefault(name, {}).update(row)
        line = {
            "round": rnd,
            "train": dict(train_metrics or {}),
            "valid": valid,
            "participants": sorted(clients),
            "rejected": rejected,
            "bytes_sent": message_bytes(messages) + message_bytes(eval_messages),
            "bytes_received": bytes_received,
            "round_seconds": time.monotonic() - start,
            "server_seconds": timing,
            "clients": clients,
            "best_round": best_round,
        }
        with open(server_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        for tag, scalars in (("train", {**line["train"], "bytes_sent": line["bytes_sent"], "bytes_received": line["bytes_received"]}),
                             ("valid", line["valid"])):
            for key, value in scalars.items():
                boards[tag].add_scalar(key, value, rnd)
            boards[tag].flush()
        state.save(rnd, updates_done, best_loss, best_round, strategy)
        logger.info("round %d: train loss %.4f, valid loss %.4f, masked acc %.4f (%d clients, %.1f s)",
                    rnd, line["train"].get("loss", float("nan")), valid_loss, valid.get("acc_masked", float("nan")),
                    len(good), line["round_seconds"])
    for board in boards.values():
        board.close()
