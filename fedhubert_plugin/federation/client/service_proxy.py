"""The node's trainer service as a ``Trainer``, for Flower's one-message ClientApp processes.

Flower's SuperNode starts a new ``flwr-clientapp`` process for every message. Importing torch
and fairseq there, and building the model and the client's dataset index, would cost every round
seconds before training started. This process imports neither: ``ServiceTrainer`` sends each
call (the trainer's spec, the node's threads and the task: client folder, global weights, what
to do) to the node's trainer service (``service.py``), starting it when there is none, and
returns its result. One service per SuperNode and app version, named after the process that
starts the ClientApp processes (the SuperNode's ``flower-superexec``) and the app's folder (each
FAB version Flower installs has its own, so a new version never runs on an old service).
Connections are authenticated with the key in this user's private folder (``private_folder``).
"""

import fcntl
import hashlib
import logging
import os
import subprocess
import sys
import time
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Optional, Tuple

from fedhubert_plugin.federation.client.private_folder import authkey, runtime_dir
from fedhubert_plugin.federation.client.work import EvaluateTask, FitTask, TrainerSpec
from fedhubert_plugin.federation.wire import LocalResult

logger = logging.getLogger(__name__)

SERVICE = "fedhubert_plugin.federation.client.service"
START_TIMEOUT_SECONDS = 600.0  # a new service imports torch and fairseq: it must listen within this
PACKAGE_PARENT = Path(__file__).resolve().parents[3]  # the service runs this copy of the package: each app
APP_COPY = hashlib.sha1(str(PACKAGE_PARENT).encode()).hexdigest()[:8]  # version Flower installs has its own


class ServiceTrainer:
    """The ``Trainer`` of a one-message ClientApp process: its calls run on the node's trainer service (the
    service of the process ``owner``, this process's parent by default). A result's metrics hold
    ``trainer_start_seconds``: the wait for a new service, 0 when it was running."""

    def __init__(self, spec: TrainerSpec, threads: int = 0, owner: Optional[int] = None):
        self.spec, self.threads, self.owner = spec, threads, owner or os.getppid()

    def fit(self, task: FitTask) -> LocalResult:
        return self.call(task)

    def evaluate(self, task: EvaluateTask) -> LocalResult:
        return self.call(task)

    def call(self, task) -> LocalResult:
        result, start_seconds = call_service(self.owner, (self.spec, self.threads, task))
        result.metrics["trainer_start_seconds"] = start_seconds
        return result


def call_service(owner: int, call: Tuple) -> Tuple[LocalResult, float]:
    """Run ``call`` on the service of the process ``owner`` (started when there is none); its result and
    the seconds its start took."""
    address, key = runtime_dir() / f"trainer-{owner}-{APP_COPY}.sock", authkey()
    start = time.perf_counter()
    with open(address.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one ClientApp process of this node starts a missing service
        connection = connect(address, key)
        started = connection is None
        if started:
            connection = start_service(address, key, owner)
    start_seconds = time.perf_counter() - start if started else 0.0
    with connection:
        connection.send(call)
        try:
            failed, outcome = connection.recv()
        except (EOFError, OSError) as error:
            raise RuntimeError(
                f"the node's trainer service ({address}) ended during {type(call[-1]).__name__}: see its log"
            ) from error
    if failed:
        raise outcome
    return outcome, start_seconds


def connect(address: Path, key: bytes) -> Optional[Connection]:
    """A connection (authenticated with ``key``) to the service listening at ``address``; None when none
    listens there."""
    try:
        return Client(str(address), family="AF_UNIX", authkey=key)
    except (FileNotFoundError, ConnectionRefusedError):
        return None


def start_service(address: Path, key: bytes, owner: int) -> Connection:
    """Start a service for ``owner`` at ``address`` and connect to it once it listens."""
    address.unlink(missing_ok=True)  # a service that died leaves its socket behind
    path = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", SERVICE, "--address", str(address), "--owner", str(owner)]
    service = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": path})
    logger.info("started the node's trainer service (pid %d)", service.pid)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while (connection := connect(address, key)) is None:
        if service.poll() is not None:
            raise RuntimeError(f"the node's trainer service ended at start (exit code {service.returncode})")
        if time.monotonic() > deadline:
            service.kill()
            raise TimeoutError(f"the node's trainer service did not listen at {address} in {START_TIMEOUT_SECONDS:g} s")
        time.sleep(0.1)
    return connection
