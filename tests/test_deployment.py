"""Real deployment on loopback: flower-superlink, one flower-supernode per client, `flwr run .`.

Insecure, and with TLS plus SuperNode authentication (only registered SuperNodes may join).
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, metric_lines

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


class LoopbackFederation:
    """A SuperLink and SuperNodes as processes on 127.0.0.1, with their logs in ``workdir``."""

    def __init__(self, workdir: Path, tls_dir: Path = None):
        self.workdir = workdir
        self.port = free_port()
        self.tls_dir = tls_dir
        flwr_home = workdir / "flwr_home"
        flwr_home.mkdir()
        security = f'root-certificates = "{tls_dir / "certificates" / "ca.crt"}"' if tls_dir else "insecure = true"
        (flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "loopback"\n\n'
            f'[superlink.loopback]\naddress = "127.0.0.1:{self.port}"\n{security}\n'
        )
        self.env = dict(
            os.environ,
            FLWR_HOME=str(flwr_home),
            PATH=f"{BIN}:{os.environ['PATH']}",
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_UPDATE_CHECK="1",
        )
        self.procs = {}

    def start(self, name, cmd):
        log = open(self.workdir / f"{name}.log", "w")
        self.procs[name] = (
            subprocess.Popen(
                cmd, env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            ),
            log,
        )
        return self.procs[name][0]

    def security_args(self, role: str):
        if not self.tls_dir:
            return ["--insecure"]
        certs = self.tls_dir / "certificates"
        if role == "superlink":
            return [
                "--ssl-ca-certfile",
                str(certs / "ca.crt"),
                "--ssl-certfile",
                str(certs / "server.pem"),
                "--ssl-keyfile",
                str(certs / "server.key"),
                "--enable-supernode-auth",
            ]
        return ["--root-certificates", str(certs / "ca.crt")]

    def start_superlink(self):
        self.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                *self.security_args("superlink"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--database",
                str(self.workdir / "state.db"),
                "--disable-runtime-dependency-installation",
            ],
        )
        wait_for_port(self.port)

    def start_supernode(self, name, data_dir, key=None):
        auth = ["--auth-supernode-private-key", str(key)] if key else []
        return self.start(
            name,
            [
                str(BIN / "flower-supernode"),
                *self.security_args("supernode"),
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
                "--node-config",
                f'data-dir="{data_dir}"',
                *auth,
            ],
        )

    def flwr(self, *args, timeout=900):
        return subprocess.run(
            [str(BIN / "flwr"), *args], env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )

    def run_config(self, save: Path, rounds: int, extra: str = "") -> list:
        return [
            "run",
            str(REPO),
            "loopback",
            "--stream",
            "--run-config",
            f'num-server-rounds={rounds} local-updates=2 save-dir="{save}" {extra}',
        ]

    def run_rounds(self, save: Path, rounds: int):
        proc = self.flwr(*self.run_config(save, rounds))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return metric_lines(save)

    def stop(self):
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc, log in self.procs.values():
            proc.wait(timeout=30)
            log.close()


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
        "flwr_run", [str(BIN / "flwr"), *federation.run_config(save, 2, "min-train-nodes=2 round-timeout=300.0")]
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
    for name in ("checkpoint_round2.pt", "checkpoint_last.pt", "checkpoint_best.pt", "best_global_model.pt"):
        assert (save / "server" / name).is_file()


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
    (line,) = federation.run_rounds(tmp_path / "save", rounds=1)
    assert line["participants"] == ["client_000", "client_001"]
