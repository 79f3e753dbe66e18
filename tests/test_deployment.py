"""Real deployment on loopback: flower-superlink, one flower-supernode per client, `flwr run .`.

Insecure, and with TLS plus SuperNode authentication (only registered SuperNodes may join).
"""

import os
import subprocess
import time

import pytest

from fedhubert_plugin.checkpoints import load_checkpoint
from fedhubert_plugin.testing.loopback import BIN, LoopbackFederation
from tests.helpers import REPO, metric_lines


@pytest.fixture
def federation_factory(tmp_path):
    made = []

    def make(tls_dir=None):
        made.append(LoopbackFederation(tmp_path, tls_dir))
        return made[-1]

    yield make
    for federation in made:
        federation.stop()


@pytest.mark.e2e
def test_flwr_run_trains_two_rounds_and_goes_on_without_a_supernode_killed_mid_round(
    prepared, federation_factory, tmp_path
):
    federation = federation_factory()
    federation.start_superlink()
    nodes = [federation.start_supernode(f"supernode{i}", prepared / "clients" / f"client_00{i}") for i in range(3)]
    save = tmp_path / "save"
    run = federation.start(
        "flwr_run",
        [str(BIN / "flwr"), *federation.run_config(save, 2, "local-updates=2 min-train-nodes=2 round-timeout=300.0")],
    )
    log = tmp_path / "supernode2.log"
    deadline = time.monotonic() + 300
    while "train" not in log.read_text() and time.monotonic() < deadline:  # its ClientApp got round 1's weights
        time.sleep(0.2)
    os.killpg(nodes[2].pid, 9)
    assert run.wait(timeout=600) == 0, (tmp_path / "flwr_run.log").read_text()[-3000:]
    first, second = metric_lines(save)
    assert first["participants"] == second["participants"] == ["client_000", "client_001"]
    (dead,) = first["rejected"]  # the SuperLink answers for a node that stopped sending heartbeats
    assert dead["client"].startswith("node ") and "Node Unavailable" in dead["reason"]
    assert first["server_seconds"]["clients_train"] < 300  # not the round timeout
    assert second["rejected"] == []  # the dead node is no longer sampled
    # a SuperNode starts a ClientApp process per message (each reports the seconds that start took); the node's
    # trainer service starts with its first message and is kept: round 1 waits for it, round 2 does not
    assert all(c["train_startup_seconds"] > 0 for line in (first, second) for c in line["clients"].values())
    assert all(c["train_trainer_start_seconds"] > 0 for c in first["clients"].values())
    assert all(c["train_trainer_start_seconds"] == 0 for c in second["clients"].values())
    for name in ("checkpoint_round2.pt", "checkpoint_last.pt", "checkpoint_best.pt", "best_global_model.pt"):
        assert (save / "server" / name).is_file()


@pytest.mark.e2e
def test_flwr_run_fine_tunes_with_a_fine_tuning_recipe_and_init_from(
    prepared, trained_run, federation_factory, tmp_path
):
    federation = federation_factory()
    federation.start_superlink()
    for i in range(2):
        federation.start_supernode(f"supernode{i}", prepared / "clients" / f"client_00{i}")
    save = tmp_path / "save"
    extra = f'recipe="tiny_ctc" init-from="{trained_run["checkpoint"]}" local-updates=2 round-timeout=300.0'
    (line,) = federation.run_rounds(save, 1, extra)
    assert line["participants"] == ["client_000", "client_001"]
    assert [v["model_round"] for v in line["validations"]] == [0, 1]
    assert all(v["metrics"]["words"] > 0 and v["metrics"]["wer"] >= 0 for v in line["validations"])
    assert load_checkpoint(save / "server" / "checkpoint_best.pt")["cfg"]["model"]["_name"] == "fed_hubert_ctc"


@pytest.mark.e2e
def test_tls_and_supernode_authentication_refuse_an_unregistered_node(prepared, federation_factory, tmp_path):
    credentials = tmp_path / "credentials"
    subprocess.run(
        ["bash", str(REPO / "recipes" / "flower" / "generate_credentials.sh"), str(credentials), "3"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    federation = federation_factory(tls_dir=credentials)
    federation.start_superlink()
    for i in (1, 2):
        registered = federation.flwr(
            "supernode", "register", str(credentials / "keys" / f"supernode_{i}.pub"), "loopback", timeout=120
        )
        assert registered.returncode == 0, registered.stdout + registered.stderr
    for i in (1, 2):
        federation.start_supernode(
            f"supernode{i}", prepared / "clients" / f"client_00{i - 1}", credentials / "keys" / f"supernode_{i}"
        )
    stranger = federation.start_supernode(
        "stranger", prepared / "clients" / "client_003", credentials / "keys" / "supernode_3"
    )
    assert stranger.wait(timeout=300) != 0  # gives up: the SuperLink does not know its key
    assert "No SuperNode found with the given public key" in (tmp_path / "superlink.log").read_text()
    (line,) = federation.run_rounds(tmp_path / "save", rounds=1, extra="local-updates=2")
    assert line["participants"] == ["client_000", "client_001"]
