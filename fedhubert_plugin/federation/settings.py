"""Every setting of a federated run, declared once.

Each field of ``FederationSettings`` carries its default and its help; its one name is the
field's name with dashes: ``--local-updates`` on the command line, ``local-updates`` in
``[tool.flwr.app.config]`` of pyproject.toml (``flwr run --run-config``) and in the messages
to clients. The CLI options (``fedhubert_plugin.options.add_options``), the run-config parser
(``from_run_config``) and the run-config defaults (``run_config_defaults``, which a test compares
with pyproject) are derived from these fields, and ``validate`` checks them all before any round
starts.

This module imports no Flower: ``fedhubert --help`` builds its options from it.
"""

from dataclasses import Field, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from fedhubert_plugin.files import atomic_write_json
from fedhubert_plugin.options import dashed, mapping_defaults, mapping_values, option

MAX_UPDATE, WARMUP = "optimization.max_update", "lr_scheduler.warmup_updates"  # the schedule's recipe keys
STRATEGIES = ("fedavg", "fedadam", "fedyogi", "fedadagrad", "fedmedian", "fedtrimmedavg", "krum", "multikrum")
TRANSPORT_DTYPES = ("float32", "float16")


def setting(default: Any, help: str, *, run_config: bool = True, **cli: Any) -> Any:
    """A settings field: an ``option`` (``cli``, ``path`` and the other keywords are its) that is also a
    run-config key unless ``run_config`` is False (Ray's resources per virtual client belong to ``fedhubert``'s
    own simulation); a ``path`` is resolved against the working directory there too."""
    return option(default, help, run_config=run_config, **cli)


Check = Tuple[bool, str, str, str]  # passes, the setting, the problem, the fix


class SettingsError(ValueError):
    """A setting has a value the run cannot use; the message names the setting and the fix."""


def spelled(name: str) -> str:
    """How a user sets the field ``name``, under both launchers: ``--local-updates (run config local-updates)``."""
    key = dashed(name)
    return f"--{key} (run config {key})"


RESUME_ADVICE = "run again with --resume (flwr run: --run-config 'resume=true')"


def override_value(overrides: Sequence[str], key: str) -> Optional[str]:
    """The value a hydra override in ``overrides`` gives ``key`` (the last one wins); None when none does."""
    values = [o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=", 1)[0] == key and "=" in o]
    return values[-1] if values else None


@dataclass
class FederationSettings:
    """A federated pretraining, distillation or fine-tuning run: model, data, rounds, aggregation, robustness,
    privacy."""

    save_dir: str = setting(
        "runs/flwr/save",
        "the server's checkpoints, metrics.jsonl and TensorBoard go to SAVE_DIR/server/",
        required=True,
        path=True,
    )
    recipe: str = setting(
        "tiny",
        "fairseq hydra recipe: a yaml path, or a name (tiny, base, base_iter2; distillation: student, tiny_student; "
        "fine-tuning: tiny_ctc, base_10h)",
    )
    overrides: List[str] = setting(
        [],
        "fairseq/hydra overrides of the recipe, e.g. model.encoder_layers=4 (CLI: trailing "
        "KEY=VALUE arguments; run config: one string, space-separated)",
        positional=True,
    )
    data_root: str = setting(
        "",
        "the folder made by `fedhubert prepare` (simulation); empty in deployment, where each "
        "SuperNode names its client folder with --node-config 'data-dir=...'",
        required=True,
        path=True,
        aliases=("--data",),
    )
    label_rate: float = setting(
        100.0, "label rate of the k-means targets in Hz (CLI: read from DATA_ROOT/prepare.json)", cli=False
    )
    n_clusters: int = setting(100, "k-means clusters of the targets (CLI: read from DATA_ROOT/prepare.json)", cli=False)
    num_server_rounds: int = setting(3, "federated rounds", required=True, aliases=("--rounds",))
    strategy: str = setting(
        "fedavg",
        "Flower strategy; fedmedian, fedtrimmedavg, krum and multikrum resist a few bad clients",
        choices=STRATEGIES,
    )
    eta: float = setting(1e-2, "server learning rate (fedadam, fedyogi, fedadagrad)")
    eta_l: float = setting(0.0, "client peak learning rate sent to clients; 0: the recipe's optimization.lr")
    beta_1: float = setting(0.9, "first-moment decay of fedadam and fedyogi")
    beta_2: float = setting(0.99, "second-moment decay of fedadam and fedyogi")
    tau: float = setting(1e-6, "adaptivity of fedadam, fedyogi and fedadagrad")
    local_updates: int = setting(10, "fairseq updates per client per round (ignored when local-epochs > 0)")
    local_epochs: int = setting(0, "local epochs per round instead of local-updates; 0: use local-updates")
    fraction_train: float = setting(1.0, "share of the connected clients sampled to train each round")
    min_train_nodes: int = setting(2, "fewest usable client updates a round needs (CLI: at most the prepared clients)")
    min_available_nodes: int = setting(2, "connected nodes a round waits for (CLI: every prepared client)", cli=False)
    evaluate_every: int = setting(
        0,
        "also validate the new global model on every node with a separate message every N rounds (one more "
        "download of the model); 0: only the final model. Other models are validated by the clients that train "
        "the next round, before training, within the round's one download",
    )
    seed: int = setting(0, "seed of the server's sampling and DP noise (the recipe's common.seed seeds the model)")
    resume: bool = setting(False, "continue after the last completed round in SAVE_DIR/server")
    round_timeout: float = setting(
        6 * 3600.0,
        "seconds to wait for clients per round; late ones are left out of the round "
        "(a HuBERT Base round of 1000 updates takes about 0.5 h on one GPU, hours on CPU)",
    )
    transport_dtype: str = setting(
        "float32",
        "precision of the weights on the wire, both ways (float16 halves the traffic; aggregation stays float32)",
        choices=TRANSPORT_DTYPES,
    )
    init_from: str = setting(
        "",
        "start from the fitting tensors of this checkpoint (HuBERT iteration 2 continued from iteration 1, or a "
        "student from its teacher; with a fine-tuning recipe, the pretrained HuBERT the CTC model is built on); "
        "default: from scratch",
        path=True,
    )
    max_update_norm: float = setting(
        0.0, "clip each client update (client minus global weights, L2) to this norm; 0: off"
    )
    tolerate_broken_data: bool = setting(
        False,
        "train without clients whose data is broken (missing or mismatched manifests and labels) instead of "
        "stopping the run in the round that finds them",
    )
    trimmed_beta: float = setting(0.2, "fedtrimmedavg: share cut at each end per coordinate")
    malicious_nodes: int = setting(1, "krum and multikrum: bad clients to tolerate")
    dp_clipping_norm: float = setting(
        0.0, "differential privacy: clients clip their updates to this L2 norm (Flower's fixedclipping_mod); 0: off"
    )
    dp_noise_multiplier: float = setting(
        0.0, "differential privacy: server noise std = multiplier * clipping norm / sampled clients"
    )
    dp_target_delta: float = setting(
        1e-5, "differential privacy: delta at which the privacy spent (epsilon) is reported"
    )
    secure_aggregation: bool = setting(
        False,
        "Flower's SecAgg+: the server learns only the average of the masked client updates (needs strategy fedavg)",
    )
    secagg_shares: float = setting(1.0, "SecAgg+: each client's key shares, as a share of the sampled clients")
    secagg_threshold: float = setting(
        0.67, "SecAgg+: share of the shares needed to reconstruct a dropped client's mask"
    )
    secagg_clipping_range: float = setting(1.0, "SecAgg+: update values are clipped to +-this before quantisation")
    cpus_per_client: float = setting(
        1.0, "Ray CPUs per virtual client (`flwr run`: the federation's client-resources)", run_config=False
    )
    gpus_per_client: float = setting(
        0.0,
        "Ray GPUs per virtual client, e.g. 0.25 for four clients on one GPU "
        "(`flwr run`: the federation's client-resources)",
        run_config=False,
    )

    @property
    def server_dir(self) -> Path:
        """Where the server writes: ``SAVE_DIR/server``."""
        return Path(self.save_dir) / "server"

    @property
    def updates_per_round(self) -> int:
        """The local updates a client makes per round; 0 when it trains ``local_epochs`` epochs instead."""
        return 0 if self.local_epochs > 0 else self.local_updates

    @property
    def planned_updates(self) -> int:
        """The updates each client makes over the run; 0 with ``local_epochs`` (they depend on its data)."""
        return self.num_server_rounds * self.updates_per_round

    def evaluates(self, rnd: int) -> bool:
        """Whether round ``rnd`` ends with a separate evaluation of its model on every node."""
        every = self.evaluate_every
        return rnd == self.num_server_rounds or (every > 0 and rnd % every == 0)

    def validate(self) -> "FederationSettings":
        """Raise ``SettingsError`` naming the setting and the fix when the run could not work; return self."""
        for ok, name, problem, fix in self.choice_checks() + self.round_checks() + self.protection_checks():
            if not ok:
                raise SettingsError(f"setting {spelled(name)}: {problem}; {fix}")
        return self

    def choice_checks(self) -> List[Check]:
        """A setting with choices (strategy, transport dtype) has one of them."""
        chosen = [(f.name, getattr(self, f.name), f.metadata["choices"]) for f in fields(self) if f.metadata["choices"]]
        return [
            (value in choices, name, f"unknown {dashed(name)} {value!r}", f"choose one of {', '.join(choices)}")
            for name, value, choices in chosen
        ]

    def round_checks(self) -> List[Check]:
        """What every round needs: rounds, updates, nodes, time."""
        local = f"local-updates {self.local_updates} and local-epochs {self.local_epochs}"
        counted = self.local_updates >= 0 and self.local_epochs >= 0 and self.updates_per_round + self.local_epochs > 0
        nodes = f"{self.min_available_nodes} < min-train-nodes {self.min_train_nodes}"
        return [
            (self.num_server_rounds >= 1, "num_server_rounds", str(self.num_server_rounds), "run at least one round"),
            (counted, "local_updates", local, "give local-updates > 0, or local-epochs > 0"),
            self.schedule_check(),
            (0.0 < self.fraction_train <= 1.0, "fraction_train", str(self.fraction_train), "use a share in (0, 1]"),
            (self.min_train_nodes >= 1, "min_train_nodes", str(self.min_train_nodes), "a round needs an update"),
            (
                self.min_available_nodes >= self.min_train_nodes,
                "min_available_nodes",
                nodes,
                "wait for as many as train",
            ),
            (self.round_timeout > 0, "round_timeout", str(self.round_timeout), "give the seconds a round may take"),
            (
                float(override_value(self.overrides, "task.label_rate") or self.label_rate) == self.label_rate,
                "overrides",
                f"task.label_rate={override_value(self.overrides, 'task.label_rate')}, labels: {self.label_rate:g} Hz",
                "drop the override: the run trains at its labels' rate (label-rate; prepare.json in simulation)",
            ),
            (self.evaluate_every >= 0, "evaluate_every", str(self.evaluate_every), "give N >= 0 rounds"),
            (
                0.0 <= self.trimmed_beta < 0.5,
                "trimmed_beta",
                str(self.trimmed_beta),
                "cut a share in [0, 0.5) at each end",
            ),
            (
                not self.init_from or Path(self.init_from).is_file(),
                "init_from",
                f"{self.init_from} not found",
                "give an existing checkpoint (e.g. SAVE_DIR/server/checkpoint_best.pt)",
            ),
        ]

    def schedule_check(self) -> Check:
        """A user's own ``optimization.max_update`` must not end the clients' schedule before the run ends."""
        explicit = override_value(self.overrides, MAX_UPDATE)
        planned = self.planned_updates
        return (
            explicit is None or not explicit.isdigit() or int(explicit) >= planned,
            "overrides",
            f"{MAX_UPDATE}={explicit} ends the clients' lr schedule before the run: {self.num_server_rounds} rounds "
            f"x {self.local_updates} local updates = {planned} updates per client, and from update {explicit} on "
            f"they would train with lr 0",
            f"remove the override (the schedule is then sized to the run), set it to at least {planned}, or run "
            f"fewer rounds",
        )

    def protection_checks(self) -> List[Check]:
        """What secure aggregation and differential privacy rule out."""
        plain_fedavg = self.strategy == "fedavg" and not self.dp_clipping_norm and not self.max_update_norm
        return [
            (
                not self.secure_aggregation or (plain_fedavg and self.transport_dtype == "float32"),
                "secure_aggregation",
                "SecAgg+ averages masked updates that the server cannot see one by one",
                "use it with strategy fedavg, without dp-clipping-norm and max-update-norm, and float32 transport",
            ),
            (
                not self.dp_clipping_norm or not self.local_epochs,
                "dp_clipping_norm",
                "differential privacy weighs every client the same",
                "use local-updates, not local-epochs (clients would make different numbers of updates)",
            ),
            (
                not self.dp_clipping_norm or self.transport_dtype == "float32",
                "dp_clipping_norm",
                "updates are clipped on the clients",
                "use transport-dtype float32",
            ),
        ]

    def save(self, path: Path) -> None:
        """The settings as JSON (``SAVE_DIR/server/settings.json``)."""
        atomic_write_json(path, asdict(self))


def in_run_config(f: Field) -> bool:
    """Whether the settings field ``f`` is a run-config key."""
    return f.metadata["run_config"]


def run_config_defaults() -> Dict[str, Any]:
    """``[tool.flwr.app.config]`` as the declaration defines it (lists as one space-separated string)."""
    return mapping_defaults(FederationSettings, in_run_config)


def from_run_config(run_config: Mapping[str, Any]) -> FederationSettings:
    """Settings from a Flower run config (``flwr run``); paths relative to the SuperLink's working directory.

    The recipe stays as given: each node finds it in its own copy of the app.
    """
    return FederationSettings(**mapping_values(FederationSettings, run_config, in_run_config))
