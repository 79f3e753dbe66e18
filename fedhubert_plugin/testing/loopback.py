"""A Flower deployment on one machine: ``flower-superlink`` and one ``flower-supernode`` per client as
processes on 127.0.0.1, and ``flwr run`` against them. For rehearsing a deployment before the sites
join, and for the tests and benchmarks of the real deployment path (insecure, or TLS with SuperNode
authentication). Logs go to ``workdir/<process>.log``; Flower's telemetry and update check are off.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

from fedhubert_plugin.federation.server.runlog import read_metrics
from fedhubert_plugin.ports import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]  # the Flower app: pyproject.toml's [tool.flwr.app]
BIN = Path(sys.executable).parent


class LoopbackFederation:
    """A SuperLink and SuperNodes as processes on 127.0.0.1, with their logs in ``workdir``; the SuperLink keeps
    its state in ``workdir/state.db``, or in memory without ``state_file``."""

    def __init__(self, workdir: Path, tls_dir: Optional[Path] = None, state_file: bool = True):
        self.workdir, self.state_file = workdir, state_file
        self.port = free_port()
        self.tls_dir = tls_dir
        flwr_home = workdir / "flwr_home"
        flwr_home.mkdir(parents=True, exist_ok=True)
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

    def start(self, name: str, cmd: List[str]) -> subprocess.Popen:
        """Start ``cmd`` in its own session, its output in ``workdir/name.log``."""
        log = open(self.workdir / f"{name}.log", "w")
        self.procs[name] = (
            subprocess.Popen(
                cmd, env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            ),
            log,
        )
        return self.procs[name][0]

    def security_args(self, role: str) -> List[str]:
        """TLS (and, on the SuperLink, SuperNode authentication) from ``tls_dir``; else insecure."""
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

    def start_superlink(self) -> None:
        """The SuperLink, waited for until it listens."""
        self.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                *self.security_args("superlink"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *(["--database", str(self.workdir / "state.db")] if self.state_file else []),
                "--disable-runtime-dependency-installation",
            ],
        )
        wait_for_port(self.port)

    def start_supernode(
        self, name: str, data_dir: Path, key: Optional[Path] = None, threads: int = 1
    ) -> subprocess.Popen:
        """A SuperNode for the client folder ``data_dir`` (authenticated with ``key`` when given), its ClientApps
        on ``threads`` torch threads: the SuperNodes share this machine's cores."""
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
                f'data-dir="{data_dir}" num-threads={threads}',
                *auth,
            ],
        )

    def flwr(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """The ``flwr`` command against this federation, from the app's folder."""
        return subprocess.run(
            [str(BIN / "flwr"), *args], env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )

    def run_config(self, save: Path, rounds: int, extra: str = "") -> List[str]:
        """``flwr run`` arguments: ``rounds`` rounds saved in ``save``, more run config in ``extra``."""
        return [
            "run",
            str(REPO),
            "loopback",
            "--stream",
            "--run-config",
            f'num-server-rounds={rounds} save-dir="{save}" {extra}',
        ]

    def run_rounds(self, save: Path, rounds: int, extra: str = "") -> List[dict]:
        """``flwr run`` to the end; the run's ``metrics.jsonl`` lines."""
        proc = self.flwr(*self.run_config(save, rounds, extra))
        if proc.returncode:
            raise RuntimeError(f"flwr run failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        return read_metrics(save)

    def stop(self) -> None:
        """Stop every process started, and close the logs."""
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc, log in self.procs.values():
            proc.wait(timeout=30)
            log.close()
