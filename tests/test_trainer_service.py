"""A SuperNode's trainer service: one-message ClientApp processes stay light and hand their calls to it."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection
from pathlib import Path

import numpy as np
import psutil
import pytest

from fedhubert_plugin.data.manifest import ShardError
from fedhubert_plugin.federation.client.private_folder import UnsafeFolderError, authkey, runtime_dir
from fedhubert_plugin.federation.client.service_proxy import ServiceTrainer, connect
from fedhubert_plugin.federation.client.work import EvaluateTask, FitTask, TrainerSpec
from tests.helpers import TINY

HEAVY = ("torch", "fairseq", "torchaudio", "sklearn", "s3prl", "tensorboard", "ray")


def test_a_flwr_clientapp_process_imports_neither_torch_nor_fairseq():
    code = f"""
import sys
sys.argv[0] = "/venv/bin/flwr-clientapp"
import fedhubert_plugin.federation.client.app
assert fedhubert_plugin.one_message_process()
print("HEAVY", sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("HEAVY")[-1].strip() == "[]"


def service_of(owner: int) -> psutil.Process:
    """The trainer service that ``owner``'s calls started."""
    found = [p for p in psutil.process_iter(["cmdline"]) if f"--owner={owner}" in "=".join(p.info["cmdline"] or [])]
    (service,) = found
    return service


@pytest.mark.e2e
def test_the_service_keeps_its_trainer_across_calls_is_replaced_when_killed_and_ends_with_its_owner(
    client_shard, tmp_path
):
    from fedhubert_plugin.federation.client.local_trainer import LocalTrainer

    owner = subprocess.Popen(["sleep", "600"])  # stands in for the SuperNode's process
    try:
        spec = TrainerSpec(TINY, label_rate=100.0)
        trainer = LocalTrainer(spec)
        trainer.client_task(client_shard)
        start = {k: v.detach().float().numpy().copy() for k, v in trainer.model.state_dict().items()}
        node = ServiceTrainer(spec, threads=1, owner=owner.pid)

        first = node.fit(FitTask(client_shard, start, local_updates=2, server_round=1, validate=True))
        started = first.metrics["trainer_start_seconds"]
        assert started > 0 and first.metrics["updates"] == 2 and np.isfinite(first.validation["loss"])
        assert sum(not np.array_equal(first.arrays[k], start[k]) for k in start) > len(start) // 2
        service = service_of(owner.pid)

        second = node.evaluate(EvaluateTask(client_shard, first.arrays, 1))
        assert second.metrics["trainer_start_seconds"] == 0.0
        assert service_of(owner.pid).pid == service.pid  # the same process, kept
        assert np.isfinite(second.metrics["loss"]) and second.num_examples == first.validation["num-examples"]

        broken = tmp_path / "broken"
        shutil.copytree(client_shard, broken)
        (broken / "labels" / "valid.km").unlink()
        with pytest.raises(ShardError, match=str(broken / "labels" / "valid.km")):  # the client's data, named
            node.evaluate(EvaluateTask(broken, first.arrays, 1))

        service.kill()
        service.wait(10)
        third = node.evaluate(EvaluateTask(client_shard, first.arrays, 1))
        assert third.metrics["trainer_start_seconds"] > 0 and service_of(owner.pid).pid != service.pid
        assert third.metrics["loss"] == pytest.approx(second.metrics["loss"])  # same weights, same masks
        replacement = service_of(owner.pid)
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 30
    while replacement.is_running() and replacement.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not replacement.is_running() or replacement.status() == psutil.STATUS_ZOMBIE


def test_an_idle_service_ends_and_removes_its_socket():
    address = runtime_dir() / "trainer-idle-test.sock"
    command = [sys.executable, "-m", "fedhubert_plugin.federation.client.service", "--address", str(address)]
    service = subprocess.Popen([*command, "--owner", str(os.getpid()), "--idle-seconds", "1"])
    assert service.wait(timeout=120) == 0  # its owner (this test) lives on: it ended for being idle
    assert not address.exists() and not address.with_suffix(".lock").exists()


@pytest.fixture
def temp_dir(tmp_path, monkeypatch) -> Path:
    """A temp folder of this test and no runtime folder: the services' folder is ``fedhubert-<uid>`` in it."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def owned_by_another_user(monkeypatch, folder: Path) -> None:
    """Make ``os.lstat`` say that ``folder`` belongs to another user."""
    real_lstat = os.lstat

    def lstat(path, *args, **kwargs):
        info = real_lstat(path, *args, **kwargs)
        if Path(path) != folder:
            return info
        fields = list(info)
        fields[4] = os.getuid() + 1  # st_uid
        return os.stat_result(fields)

    monkeypatch.setattr(os, "lstat", lstat)


def refused(folder: Path, problem: str) -> None:
    """``runtime_dir`` refuses ``folder``, naming it, what is wrong with it and the fix."""
    with pytest.raises(UnsafeFolderError) as refusal:
        runtime_dir()
    message = str(refusal.value)
    assert str(folder) in message and problem in message and "XDG_RUNTIME_DIR or TMPDIR" in message, message


def test_the_folder_is_made_private_when_missing_and_kept(temp_dir):
    folder = temp_dir / f"fedhubert-{os.getuid()}"
    assert runtime_dir() == folder and runtime_dir() == folder
    assert os.lstat(folder).st_mode & 0o777 == 0o700


def test_a_folder_others_may_open_is_refused(temp_dir):
    folder = temp_dir / f"fedhubert-{os.getuid()}"
    folder.mkdir()
    folder.chmod(0o755)
    refused(folder, "its mode is 0o755, not 0o700")


def test_a_folder_of_another_user_is_refused(temp_dir, monkeypatch):
    folder = temp_dir / f"fedhubert-{os.getuid()}"
    folder.mkdir()
    folder.chmod(0o700)
    owned_by_another_user(monkeypatch, folder)
    refused(folder, f"its owner is uid {os.getuid() + 1}, not ours ({os.getuid()})")


def test_a_symlink_to_a_private_folder_is_refused(temp_dir):
    private = temp_dir / "private"
    private.mkdir()
    private.chmod(0o700)
    folder = temp_dir / f"fedhubert-{os.getuid()}"
    folder.symlink_to(private)
    refused(folder, "it is a symlink")


def test_a_private_runtime_folder_is_used(temp_dir, monkeypatch):
    runtime = temp_dir / "run"
    runtime.mkdir()
    runtime.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert runtime_dir() == runtime / "fedhubert"
    assert os.lstat(runtime / "fedhubert").st_mode & 0o777 == 0o700


@pytest.mark.parametrize("unsafe", ["open to others", "another user's", "missing"])
def test_a_runtime_folder_that_is_not_private_is_ignored(temp_dir, monkeypatch, unsafe):
    runtime = temp_dir / "run"
    if unsafe != "missing":
        runtime.mkdir()
        runtime.chmod(0o755 if unsafe == "open to others" else 0o700)
    if unsafe == "another user's":
        owned_by_another_user(monkeypatch, runtime)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert runtime_dir() == temp_dir / f"fedhubert-{os.getuid()}"
    assert not (runtime / "fedhubert").exists()


class Marker:
    """Makes the folder ``path`` when unpickled: shows whether the service unpickled it."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


def received(connection: Connection) -> list:
    """The messages the other side sent until it closed the connection (or sent nothing for 30 s)."""
    messages = []
    while connection.poll(30):
        try:
            messages.append(connection.recv_bytes())
        except EOFError:
            break
    return messages


def listening(address: Path, service: subprocess.Popen) -> Connection:
    """A connection to ``service`` at ``address`` once it listens, without the key's handshake."""
    deadline = time.monotonic() + 120
    while True:
        try:
            return Client(str(address), family="AF_UNIX")
        except (FileNotFoundError, ConnectionRefusedError):
            assert service.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)


def test_a_caller_without_the_key_is_refused_before_anything_is_unpickled(tmp_path, monkeypatch):
    runtime = Path(tempfile.mkdtemp())  # mode 0700; short, as a socket's path must be
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))  # the service gets it too
    address, marker = runtime_dir() / "trainer-auth-test.sock", tmp_path / "unpickled"
    command = [sys.executable, "-m", "fedhubert_plugin.federation.client.service", "--address", str(address)]
    service = subprocess.Popen([*command, "--owner", str(os.getpid()), "--idle-seconds", "120"])
    try:
        with listening(address, service) as intruder:  # sends an object without the handshake
            intruder.send(Marker(marker))
            messages = received(intruder)
        assert not marker.exists()  # the service never unpickled it
        assert messages[-1] == b"#FAILURE#"  # it read the pickle as a wrong answer to its challenge

        with pytest.raises(AuthenticationError):
            Client(str(address), family="AF_UNIX", authkey=b"not the key")
        caller = connect(address, authkey())  # it serves on: the key is accepted
        assert caller is not None and service.poll() is None
        caller.close()
    finally:
        service.terminate()
        service.wait(60)
        shutil.rmtree(runtime)
