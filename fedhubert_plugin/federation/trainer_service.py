"""A SuperNode's trainer, kept across messages: Flower's one-message ClientApp processes hand it their work.

Flower's SuperNode starts a new ``flwr-clientapp`` process for every message. Importing torch
and fairseq there, and building the model and the client's dataset index, cost every round
seconds before training started (11 s a round on 2 cores shared by four SuperNodes). Our
ClientApp process imports neither (``fedhubert_plugin`` skips its fairseq registration in a
``flwr-clientapp`` process): the node's first train or evaluate message starts a trainer service
(``python -m fedhubert_plugin.federation.trainer_service``), and every message's process sends
it the call (config, client folder, global weights) and builds its reply from the result.

One service per SuperNode and app version, named after the process that starts the ClientApp
processes (the SuperNode's ``flower-superexec``) and the app's folder (each FAB version Flower
installs has its own, so a new version never runs on an old service). It lives in the
SuperNode's process group (stopping the SuperNode stops it), ends when that process is gone or
after an hour without a call, serves one call at a time, and keeps its trainer
(``client_training``) between them. A service that dies fails
the message like a crashed ClientApp (Flower's error reply; the server's rules apply); the next
message starts a new one. The socket and the key that authenticates each connection
(``multiprocessing.connection``: after it, calls and results are pickles) live in a folder only this user
may open (``runtime_dir``; docs/deployment.md's threat model).

A process that serves many messages (a simulation's Ray actor) runs the calls itself.
"""

import argparse
import fcntl
import hashlib
import logging
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any, Optional, Tuple

import psutil
from flwr.app import Context

from fedhubert_plugin import ONE_MESSAGE_PROCESS, console
from fedhubert_plugin.data.manifest import ShardError
from fedhubert_plugin.federation.wire import LocalResult

logger = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 600.0  # a new service imports torch and fairseq: it must listen within this
IDLE_LIMIT_SECONDS = 3600.0  # a service without a call for this long ends (the next message starts a new one)
PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the service runs this copy of the package: each app
APP_COPY = hashlib.sha1(str(PACKAGE_PARENT).encode()).hexdigest()[:8]  # version Flower installs has its own


class UnsafeFolderError(PermissionError):
    """The services' folder is a symlink, another user's, or open to others."""


def folder_problem(folder: Path) -> Optional[str]:
    """What keeps ``folder`` from being private (None when it is a real directory of this user with mode 0700);
    symlinks are not followed."""
    try:
        info = os.lstat(folder)
    except OSError as error:
        return f"it cannot be read ({error.strerror})"
    if stat.S_ISLNK(info.st_mode):
        return "it is a symlink"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a directory"
    if info.st_uid != os.getuid():
        return f"its owner is uid {info.st_uid}, not ours ({os.getuid()})"
    if info.st_mode & 0o777 != 0o700:
        return f"its mode is {oct(info.st_mode & 0o777)}, not 0o700"
    return None


def runtime_dir() -> Path:
    """This user's private folder for the services' sockets and key: ``$XDG_RUNTIME_DIR/fedhubert`` when that
    runtime folder is private, else ``fedhubert-<uid>`` in the temp folder; made (mode 0700) when missing.

    Raises UnsafeFolderError, naming the folder, when it is a symlink, another user's or open to others."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    problem = folder_problem(Path(runtime)) if runtime else "it is not set"
    if problem:
        logger.debug("XDG_RUNTIME_DIR %r is not used: %s", runtime, problem)
        folder = Path(tempfile.gettempdir()) / f"fedhubert-{os.getuid()}"
    else:
        folder = Path(runtime) / "fedhubert"
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:  # ours from before, or someone else's: checked below
        pass
    problem = folder_problem(folder)
    if problem:
        raise UnsafeFolderError(
            f"the trainer service's folder {folder} is not private: {problem}. Remove it, or set XDG_RUNTIME_DIR "
            "or TMPDIR to a folder of yours with mode 0700"
        )
    return folder


def authkey() -> bytes:
    """The key that authenticates connections to this user's services (made once, mode 0600)."""
    path = runtime_dir() / "trainer.key"
    try:
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
            file.write(os.urandom(32))
    except FileExistsError:
        pass
    return path.read_bytes()


def run_on_node_trainer(context: Context, function: str, *args: Any) -> Tuple[LocalResult, float]:
    """``client_training``'s ``function`` ("train" or "evaluate") for this node, on ``num-threads`` torch
    threads when its node config says; with the seconds spent starting the node's trainer service (0 when
    it was running, or when this process trains itself)."""
    threads = int(context.node_config.get("num-threads", 0))
    if not ONE_MESSAGE_PROCESS:
        from fedhubert_plugin.federation.client_training import run_call  # torch and fairseq: only where used

        return run_call(function, threads, *args), 0.0
    return call_service(os.getppid(), (function, threads, args))


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
            raise RuntimeError(f"the node's trainer service ({address}) ended during {call[0]}: see its log") from error
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
    command = [sys.executable, "-m", __name__, "--address", str(address), "--owner", str(owner)]
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


def serve(address: Path, owner: int, idle_seconds: float = IDLE_LIMIT_SECONDS) -> None:
    """Answer calls at ``address``, one at a time, until the process ``owner`` ends or no call came for
    ``idle_seconds`` (then remove the socket)."""
    activity = {"busy": False, "last": time.monotonic()}
    watch(owner, activity, idle_seconds)
    with Listener(str(address), family="AF_UNIX", authkey=authkey()) as listener:
        logger.info("trainer service %d listens at %s", os.getpid(), address)
        while True:
            try:
                connection = listener.accept()
            except (AuthenticationError, OSError) as error:  # a caller that failed authentication, or left before it
                logger.warning("trainer service: refused a connection: %s", error)
                continue
            activity["busy"] = True
            with connection:
                answer(connection)
            activity.update(busy=False, last=time.monotonic())


def answer(connection: Connection) -> None:
    """Receive one call, run it, send its result or its error back."""
    from fedhubert_plugin.federation.client_training import run_call

    try:
        function, threads, args = connection.recv()
    except (EOFError, OSError):
        return
    try:
        outcome = (False, run_call(function, threads, *args))
    except ShardError as error:  # the client's data: the ClientApp replies with it, named
        outcome = (True, error)
    except Exception:
        outcome = (True, RuntimeError(f"the node's trainer service failed:\n{traceback.format_exc()}"))
    try:
        connection.send(outcome)
    except OSError:
        logger.warning("trainer service: the ClientApp process that asked for %s is gone", function)


def watch(owner: int, activity: dict, idle_seconds: float) -> None:
    """Interrupt this process's main thread (KeyboardInterrupt) once the process ``owner`` has ended, or once
    ``activity`` was idle (not busy) for ``idle_seconds``."""

    def ended() -> bool:
        try:
            return psutil.Process(owner).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    def idle() -> bool:
        return not activity["busy"] and time.monotonic() - activity["last"] > idle_seconds

    def run() -> None:
        while not (ended() or idle()):
            time.sleep(1.0)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=run, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description="A SuperNode's trainer service (started by our ClientApp).")
    parser.add_argument("--address", type=Path, required=True, help="the Unix socket to listen at")
    parser.add_argument("--owner", type=int, required=True, help="the process whose end ends the service")
    parser.add_argument("--idle-seconds", type=float, default=IDLE_LIMIT_SECONDS, help="end after this long idle")
    args = parser.parse_args()
    console.apply()
    for stop in (signal.SIGINT, signal.SIGTERM):  # either ends the service cleanly (in the background SIGINT
        signal.signal(stop, signal.default_int_handler)  # may be ignored, SIGTERM would end it without clean-up)
    try:
        serve(args.address, args.owner, args.idle_seconds)
    except KeyboardInterrupt:  # the owner ended, it was idle, or the SuperNode's group was stopped
        logger.info("trainer service %d: stopped", os.getpid())
    finally:
        args.address.with_suffix(".lock").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
