"""What leaves a client; differential privacy (Flower's DP wrapper, mod and accountant); secure aggregation
(SecAgg+)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedhubert_plugin.checkpoints import load_checkpoint
from fedhubert_plugin.cli import main
from fedhubert_plugin.federation.client.app import client_app
from fedhubert_plugin.federation.server.grid import wait_for_nodes
from fedhubert_plugin.federation.server.optimizers import StreamingFedAvg
from fedhubert_plugin.federation.server.rounds import secure_train_round, train_round
from fedhubert_plugin.federation.server.screening import ScreenedStrategy
from fedhubert_plugin.federation.server.strategies import build_strategy
from fedhubert_plugin.federation.simulation import ray_backend_config, simulate
from fedhubert_plugin.federation.wire import ClientConfig, config_record, record_of
from fedhubert_plugin.recipes import recipe_initial_model
from tests.helpers import TINY, Nodes, fairseq_env, metric_lines, pretrain_settings, valid_losses


@pytest.mark.e2e
def test_a_client_sends_only_weights_of_the_model_and_scalar_metrics(prepared, tmp_path, in_a_run):
    _, initial = recipe_initial_model(Path(TINY), ["common.cpu=true"], 100, 100)
    config = {
        **config_record(ClientConfig.of(pretrain_settings(prepared, tmp_path, rounds=1, local_updates=2))),
        "server-round": 1,
    }
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    client = prepared / "clients" / "client_000"
    audio = sum(int(line.split("\t")[1]) for line in (client / "train.tsv").read_text().splitlines()[1:])
    labels = sum(len(line.split()) for line in (client / "labels" / "train.km").read_text().splitlines())
    for message_type in ("train", "evaluate"):
        message = Message(
            RecordDict({"arrays": record_of(initial), "config": ConfigRecord(config)}),
            dst_node_id=1,
            message_type=message_type,
        )
        content = client_app(message, context).content
        assert set(content.keys()) <= {"arrays", "metrics", "client"}
        assert dict(content["client"]) == {"name": "client_000"}  # the folder's name, no path
        metrics = content["metrics"]
        assert isinstance(metrics, MetricRecord) and all(isinstance(v, (int, float)) for v in metrics.values())
        if message_type == "evaluate":
            assert "arrays" not in content
            continue
        arrays = content["arrays"]
        assert isinstance(arrays, ArrayRecord)
        # exactly the model's tensors: nothing shaped like audio, features or labels rides along
        assert {k: a.shape for k, a in arrays.items()} == {k: v.shape for k, v in initial.items()}
        assert arrays.count_bytes() < 1.01 * sum(v.nbytes for v in initial.values())
        assert all(audio not in a.shape and labels not in a.shape for a in arrays.values())
        assert any(not np.array_equal(arrays[k].numpy(), v) for k, v in initial.items())  # it did train


def test_the_dp_server_adds_gaussian_noise_of_z_times_c_over_the_sampled_clients(in_a_run):
    """The same replies aggregated with noise and without (same seed) differ by the noise alone: about
    std * sqrt(parameters), std = z * C / 4 sampled clients per coordinate."""

    rng = np.random.default_rng(0)
    reference = {"w": rng.standard_normal(20000).astype(np.float32), "b": np.ones(10, np.float32)}
    # client-clipped updates: norm about 0.04, under C = 0.1
    local = [
        {k: v + 3e-4 * rng.standard_normal(v.shape).astype(np.float32) for k, v in reference.items()} for _ in range(4)
    ]

    def aggregate(noise_multiplier: float) -> dict:
        settings = pretrain_settings(
            "unused", "unused", 1, strategy="fedavg", dp_clipping_norm=0.1, dp_noise_multiplier=noise_multiplier
        )
        strategy = build_strategy(settings)
        messages = list(strategy.configure_train(1, record_of(reference), ConfigRecord({}), Nodes(4)))
        replies = []
        for i, (message, weights) in enumerate(zip(messages, local)):
            content = RecordDict(
                {
                    "arrays": ArrayRecord({k: Array(v) for k, v in weights.items()}),
                    "metrics": MetricRecord({"num-examples": 10 + i, "updates": 3}),
                    "client": ConfigRecord({"name": f"client_00{i}"}),
                }
            )
            replies.append(Message(content, reply_to=message))
        np.random.seed(0)  # Flower draws the noise from numpy's global generator
        aggregated, _ = strategy.aggregate_train(1, replies)
        return {k: aggregated[k].numpy() for k in reference}

    clean, noisy = aggregate(0.0), aggregate(2.0)
    for k in reference:  # without noise: the plain average (DP weighs every client the same)
        np.testing.assert_allclose(clean[k], np.mean([w[k] for w in local], axis=0), rtol=0, atol=1e-6)
    std = 2.0 * 0.1 / 4
    parameters = sum(v.size for v in reference.values())
    distance = float(np.sqrt(sum(np.square(noisy[k] - clean[k], dtype=np.float64).sum() for k in reference)))
    assert 0.9 * std * np.sqrt(parameters) < distance < 1.1 * std * np.sqrt(parameters)


@pytest.mark.e2e
def test_dp_run_killed_mid_round_resumes_with_its_privacy_spent_and_converges(prepared, tmp_path):
    """The server (a `fedhubert pretrain` process) is killed in round 2 and resumed: no round lost or repeated,
    no half-written file, the accountant continues; clients clip (Flower's fixedclipping_mod), the server adds
    noise (its size: test_the_dp_server_adds_gaussian_noise_of_z_times_c_over_the_sampled_clients)."""
    save = tmp_path / "save"
    clip = 0.05  # below the tiny recipe's update norms (0.03 to 0.15 in rounds 1-2): every update is clipped
    cmd = [
        str(Path(sys.executable).parent / "fedhubert"),
        "pretrain",
        "--data",
        str(prepared),
        "--save-dir",
        str(save),
        "--rounds",
        "3",
        "--local-updates",
        "3",
        "--strategy",
        "fedavg",
        "--min-train-nodes",
        "4",
        "--dp-clipping-norm",
        str(clip),
        "--dp-noise-multiplier",
        "0.01",
        "common.cpu=true",
    ]
    metrics = save / "server" / "metrics.jsonl"
    server = subprocess.Popen(
        cmd, env=fairseq_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and metrics.read_text().endswith("\n")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # into round 2
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()
    assert [line["round"] for line in metric_lines(save)] == [1]
    assert main([*cmd[1:], "--resume"]) == 0  # resumed in this process: a resume is the same wherever it runs
    lines = metric_lines(save)
    assert [line["round"] for line in lines] == [1, 2, 3]
    assert load_checkpoint(save / "server" / "checkpoint_last.pt")["extra_state"]["federated_round"] == 3
    assert not [p.name for p in (save / "server").iterdir() if ".tmp" in p.name]  # every file whole or absent
    assert [line["privacy"]["releases"] for line in lines] == [1, 2, 3]  # the accountant survived the kill
    epsilons = [line["privacy"]["epsilon"] for line in lines]
    assert all(np.isfinite(epsilons)) and epsilons[0] < epsilons[1] < epsilons[2]
    for line in lines:
        assert all(client["train_update_norm"] <= clip * (1 + 1e-4) for client in line["clients"].values())
    losses = valid_losses(save)
    assert list(losses) == [0, 1, 2, 3] and losses[3] < losses[0]


@pytest.mark.e2e
def test_secure_aggregation_gives_the_plain_average_update_and_trains(prepared, tmp_path):
    """SecAgg+: the server reconstructs only the sum of the masked updates. In one simulation the same
    round runs secured and in the clear (uniform FedAvg); the global models agree up to SecAgg+'s
    quantisation, and a second secured round lowers the clients' training loss."""
    settings = pretrain_settings(prepared, tmp_path, rounds=2, strategy="fedavg", secure_aggregation=True)
    _, initial = recipe_initial_model(Path(TINY), ["common.cpu=true"], 100, 100)
    results = {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        wait_for_nodes(grid, 4, 300)
        config = ClientConfig.of(settings)
        results["secure"] = secure_train_round(grid, 1, initial, config, settings, {})
        plain = StreamingFedAvg(min_train_nodes=4, min_available_nodes=4, weighted_by_key="updates")  # as SecAgg+
        screened = ScreenedStrategy(plain, 0.0, 4, settings.round_timeout, streaming=True)
        results["plain"] = train_round(grid, 1, screened, initial, config, settings, {})
        config = ClientConfig.of(settings, updates_done=3)
        results["second"] = secure_train_round(grid, 2, results["secure"].weights, config, settings, {})

    simulate(app, client_app, 4, ray_backend_config())
    secure, plain, second = results["secure"], results["plain"], results["second"]
    assert sorted(secure.clients) == sorted(plain.clients) == [f"client_00{i}" for i in range(4)]
    update = max(float(np.abs(plain.weights[k] - initial[k]).max()) for k in initial)
    step = 2 * settings.secagg_clipping_range / 2**22  # SecAgg+'s quantisation step, 4.8e-7
    assert 100 * step < update
    # A client adds the clipping range to its float32 update in float32 (a grid of 1/4 step, 1/8 below 0: 1/16
    # step off at most) and rounds stochastically to a step on that grid (7/8 step off at most): within 15/16
    # step, and so is the average. Each model then rounds to float32: half a unit in the last place each.
    for k in initial:
        gap = np.abs(secure.weights[k] - plain.weights[k])
        ulp = np.spacing(np.maximum(np.abs(secure.weights[k]), np.abs(plain.weights[k])))
        assert (gap <= 15 / 16 * step + ulp).all(), f"{k}: {gap.max() / step:.2f} steps apart"
    assert second.metrics["loss"] < secure.metrics["loss"]
