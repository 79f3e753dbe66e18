"""Robust aggregation, differential privacy and secure aggregation, measured: the figures of
docs/faults-and-privacy.md.

1. Robust aggregation: one of five clients sends finite garbage (each weight of the tiny model
   moved by N(0, 0.05²)), four send honest updates (N(0, 0.001²)); how far each of Flower's
   strategies moves the model, in honest-update norms (Flower's strategies, our screening).
2. Privacy spent: ε of Flower's RDP accountant (FedAvg, no sampling amplification) for noise
   multipliers and rounds.
3. A DP run on the toy federation (4 clients, clipping 0.05, noise multiplier 0.01, 3 rounds):
   validation loss of the initial and the final model, and ε.
4. SecAgg+: the same round secured and in the clear (uniform FedAvg) in one simulation: the
   largest gap between the two models against SecAgg+'s quantisation step, and the round times.

    .venv/bin/python benchmarks/faults_privacy.py [--work /tmp/fedhubert-faults]
"""

import argparse
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
from common import RECIPES, federated, prepare, write_results
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.privacy_accounting import GaussianPrivacyEvent
from flwr.supercore.task_identity import TaskIdentity

from fedhubert_plugin.federation.client.app import client_app
from fedhubert_plugin.federation.server.grid import wait_for_nodes
from fedhubert_plugin.federation.server.optimizers import StreamingFedAvg
from fedhubert_plugin.federation.server.rounds import secure_train_round, train_round
from fedhubert_plugin.federation.server.runlog import read_metrics, validations
from fedhubert_plugin.federation.server.screening import ScreenedStrategy, l2_norm, screen_reply
from fedhubert_plugin.federation.server.strategies import base_strategy, privacy_accountant
from fedhubert_plugin.federation.settings import FederationSettings
from fedhubert_plugin.federation.simulation import ray_backend_config, simulate
from fedhubert_plugin.federation.wire import ClientConfig
from fedhubert_plugin.recipes import recipe_initial_model
from fedhubert_plugin.toy_data import write_toy_data

TINY = RECIPES / "tiny.yaml"
ROBUST = ("fedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum")
PRIVACY = [(1.0, 100), (5.0, 400), (0.01, 3)]  # (noise multiplier, rounds)
DP_CLIP, DP_NOISE = 0.05, 0.01


def stand_in_reply(name: str, arrays: Dict[str, np.ndarray]) -> Message:
    """A client's train reply holding ``arrays``, as the wire carries it."""
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": 10, "updates": 3}),
            "client": ConfigRecord({"name": name}),
        }
    )
    return Message(content, dst_node_id=1, message_type="train")


def robust_shifts() -> Dict[str, float]:
    """1: each strategy's shift of the model from where it started, in honest-update norms."""
    for attribute in ("_run_id", "_task_id", "_node_id"):  # messages exist only inside a Flower run
        setattr(TaskIdentity, attribute, 1)
    _, initial = recipe_initial_model(TINY, ["common.cpu=true"], 100, 100)
    rng = np.random.default_rng(0)
    honest = {
        f"client_00{i}": {k: v + 1e-3 * rng.standard_normal(v.shape) for k, v in initial.items()} for i in range(4)
    }
    garbage = {k: v + 0.05 * rng.standard_normal(v.shape) for k, v in initial.items()}
    honest_norm = float(np.mean([l2_norm(a[k] - initial[k] for k in initial) for a in honest.values()]))
    shifts = {}
    for name in ROBUST:
        settings = FederationSettings(strategy=name, min_available_nodes=5, min_train_nodes=5, trimmed_beta=0.2)
        replies = [stand_in_reply(n, a) for n, a in honest.items()] + [stand_in_reply("client_004", garbage)]
        kept = [screen_reply(reply, initial, l2_norm(initial.values()))[0] for reply in replies]  # all pass
        aggregated, _ = base_strategy(settings).aggregate_train(1, kept)
        shifts[name] = l2_norm(aggregated[k].numpy() - initial[k] for k in initial) / honest_norm
    return shifts


def privacy_spent() -> List[Dict]:
    """2: ε at δ = 1e-5 after ``rounds`` releases of noise ``z``, as Flower's RDP accountant reports it."""
    rows = []
    for z, rounds in PRIVACY:
        settings = FederationSettings(strategy="fedavg", dp_noise_multiplier=z, dp_clipping_norm=1.0)
        accountant = privacy_accountant(settings)
        event = GaussianPrivacyEvent(noise_multiplier=z, sample_size=2, population_size=2)
        accountant.compose(event, count=rounds)
        rows.append({"noise_multiplier": z, "rounds": rounds, "epsilon": accountant.get_epsilon(1e-5)})
    return rows


def dp_run(data: Path, work: Path) -> Dict:
    """3: the toy federation under DP, 3 rounds of 3 local updates."""
    flags = ["--strategy", "fedavg", "--min-train-nodes", "4"]
    flags += ["--dp-clipping-norm", str(DP_CLIP), "--dp-noise-multiplier", str(DP_NOISE)]
    run = federated(data, work / "dp", 3, 3, extra=flags, overrides=["common.cpu=true"])
    losses = {rnd: v["metrics"]["loss"] for rnd, v in validations(read_metrics(work / "dp")).items()}
    return {
        "valid_loss_initial": losses[0],
        "valid_loss_final": losses[max(losses)],
        "epsilon": run["rounds"][-1]["privacy"]["epsilon"],
        "clients": len(run["rounds"][-1]["participants"]),
    }


def secure_against_plain(data: Path, work: Path) -> Dict:
    """4: one round secured and the same round in the clear, then a warm secured and plain round each."""
    settings = FederationSettings(
        save_dir=str(work / "secagg"), recipe=str(TINY), data_root=str(data), overrides=["common.cpu=true"],
        strategy="fedavg", secure_aggregation=True, local_updates=3, min_available_nodes=4, min_train_nodes=4,
    )  # fmt: skip
    _, initial = recipe_initial_model(TINY, ["common.cpu=true"], 100, 100)
    found, seconds = {}, {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        wait_for_nodes(grid, 4, 300)
        config = ClientConfig.of(settings)
        plain = StreamingFedAvg(min_train_nodes=4, min_available_nodes=4, weighted_by_key="updates")  # as SecAgg+
        for attempt in ("cold", "warm"):  # the warm pair is timed: the clients' trainers are built by then
            tic = time.perf_counter()
            found["secure"] = secure_train_round(grid, 1, initial, config, settings, {})
            seconds[f"secure_{attempt}"] = time.perf_counter() - tic
            tic = time.perf_counter()
            screened = ScreenedStrategy(plain, 0.0, 4, settings.round_timeout, streaming=True)
            found["plain"] = train_round(grid, 1, screened, initial, config, settings, {})
            seconds[f"plain_{attempt}"] = time.perf_counter() - tic

    simulate(app, client_app, 4, ray_backend_config())
    secure, plain = found["secure"].weights, found["plain"].weights
    return {
        "largest_gap": max(float(np.abs(secure[k] - plain[k]).max()) for k in initial),
        "quantisation_step": 2 * settings.secagg_clipping_range / 2**22,
        "largest_update_coordinate": max(float(np.abs(plain[k] - initial[k]).max()) for k in initial),
        "secure_round_seconds": seconds["secure_warm"],
        "plain_round_seconds": seconds["plain_warm"],
    }


def table(result: Dict) -> List[str]:
    """The markdown of results/faults_privacy.md."""
    lines = ["One garbage client of five; the model's shift in honest-update norms:", ""]
    lines += ["| strategy | shift |", "| --- | --- |"]
    lines += [f"| {name} | {shift:.2f} |" for name, shift in result["robust_shifts"].items()]
    lines += ["", "Privacy spent, Flower's RDP accountant, FedAvg, δ = 1e-5, no sampling amplification:", ""]
    lines += ["| noise multiplier z | rounds | ε |", "| --- | --- | --- |"]
    lines += [f"| {r['noise_multiplier']:g} | {r['rounds']} | {r['epsilon']:.4g} |" for r in result["privacy"]]
    dp, secure = result["dp_run"], result["secure_aggregation"]
    lines += [
        "",
        f"DP on the toy federation ({dp['clients']} clients, clipping {DP_CLIP}, z = {DP_NOISE}, 3 rounds × 3 local "
        f"updates): validation loss {dp['valid_loss_initial']:.2f} → {dp['valid_loss_final']:.2f} at ε = "
        f"{dp['epsilon']:.4g}.",
        "",
        f"SecAgg+ against the same round in the clear (uniform FedAvg, 4 clients): largest gap between the models "
        f"{secure['largest_gap']:.2g}, quantisation step {secure['quantisation_step']:.2g} (gap / step "
        f"{secure['largest_gap'] / secure['quantisation_step']:.2f}); largest coordinate of the update "
        f"{secure['largest_update_coordinate']:.2g}; a warm round {secure['secure_round_seconds']:.1f} s secured "
        f"against {secure['plain_round_seconds']:.1f} s in the clear.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedhubert-faults"))
    args = parser.parse_args()
    toy = args.work / "toy"
    if not (toy / "toy_data.json").is_file():
        write_toy_data(toy, force=True)
    data = prepare(toy, args.work / "four_clients", 4)
    result = {
        "robust_shifts": robust_shifts(),
        "privacy": privacy_spent(),
        "dp_run": dp_run(data, args.work),
        "secure_aggregation": secure_against_plain(data, args.work),
    }
    print(write_results("faults_privacy", [result], table(result), "Toy corpus, tiny recipe."))


if __name__ == "__main__":
    main()
