"""Real deployment on loopback: flower-superlink, one flower-supernode per client, `flwr run .`."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

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


@pytest.fixture
def federation(prepared, tmp_path):
    """An insecure SuperLink and two SuperNodes (client_000, client_001) on 127.0.0.1; stopped afterwards."""
    flwr_home = tmp_path / "flwr_home"
    flwr_home.mkdir()
    link_port = free_port()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )
    env = dict(os.environ, FLWR_HOME=str(flwr_home), PATH=f"{BIN}:{os.environ['PATH']}",
               FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    logs = []
    procs = []

    def start(name, cmd):
        log = open(tmp_path / f"{name}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    start("superlink", [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(link_port),
                        "--database", str(tmp_path / "state.db"), "--disable-runtime-dependency-installation"])
    wait_for_port(link_port)
    for i in range(2):
        start(f"supernode{i}", [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                                "--host", "127.0.0.1", "--port", str(free_port()),
                                "--node-config", f'data-dir="{prepared / "clients" / f"client_00{i}"}"'])
    yield env, tmp_path
    for proc in procs:
        os.killpg(proc.pid, 15)
    for proc in procs:
        proc.wait(timeout=30)
    for log in logs:
        log.close()


@pytest.mark.slow
def test_flwr_run_trains_two_rounds_over_superlink_and_supernodes(federation):
    env, tmp_path = federation
    save = tmp_path / "save"
    proc = subprocess.run(
        [str(BIN / "flwr"), "run", str(REPO), "loopback", "--stream",
         "--run-config", f'num-server-rounds=2 local-updates=2 save-dir="{save}"'],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in (save / "server" / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2]
    assert all(line["participants"] == ["client_000", "client_001"] for line in lines)
    for name in ("checkpoint_round2.pt", "checkpoint_last.pt", "checkpoint_best.pt", "best_global_model.pt"):
        assert (save / "server" / name).is_file()
