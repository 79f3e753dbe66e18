"""A SuperNode's trainer service: the process that keeps the node's trainer across Flower's messages.

Started by the node's first train or evaluate message (``service_proxy.ServiceTrainer``) as
``python -m fedhubert_plugin.federation.client.service``. It lives in the SuperNode's process
group (stopping the SuperNode stops it), ends when the process that started the ClientApp
processes is gone or after an hour without a call, serves one call at a time and keeps its
trainer (``trainer.in_process_trainer``) between them. A call is the trainer's spec, the node's
threads and a task; the task says what to run (``FitTask``, ``EvaluateTask``). A service that dies
fails the message like a crashed ClientApp (Flower's error reply; the server's rules apply); the
next message starts a new one. The socket and the key that authenticates each connection
(``multiprocessing.connection``: after it, calls and results are pickles) live in this user's
private folder (``private_folder``; docs/deployment.md's threat model).
"""

import argparse
import logging
import os
import signal
import threading
import time
import traceback
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener
from pathlib import Path

import psutil

from fedhubert_plugin import console
from fedhubert_plugin.data.manifest import ShardError
from fedhubert_plugin.federation.client.private_folder import authkey
from fedhubert_plugin.federation.client.trainer import in_process_trainer

logger = logging.getLogger(__name__)

IDLE_LIMIT_SECONDS = 3600.0  # a service without a call for this long ends (the next message starts a new one)


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
    """Receive one call (spec, threads, task), run the task on this process's trainer, send its result or error."""
    try:
        spec, threads, task = connection.recv()
    except (EOFError, OSError):
        return
    try:
        outcome = (False, task.run_on(in_process_trainer(spec, threads)))
    except ShardError as error:  # the client's data: the ClientApp replies with it, named
        outcome = (True, error)
    except Exception:
        outcome = (True, RuntimeError(f"the node's trainer service failed:\n{traceback.format_exc()}"))
    try:
        connection.send(outcome)
    except OSError:
        logger.warning("trainer service: the ClientApp process that asked for %s is gone", type(task).__name__)


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
