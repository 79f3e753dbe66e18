"""A SuperNode's trainer service: one-message ClientApp processes stay light and hand their calls to it."""

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from fedhubert_plugin.data.manifest import ShardError
from fedhubert_plugin.federation.trainer_service import call_service, runtime_dir
from fedhubert_plugin.federation.wire import ClientConfig
from tests.helpers import TINY

HEAVY = ("torch", "fairseq", "torchaudio", "sklearn", "s3prl", "tensorboard", "ray")


def test_a_flwr_clientapp_process_imports_neither_torch_nor_fairseq():
    code = f"""
import sys
sys.argv[0] = "/venv/bin/flwr-clientapp"
import fedhubert_plugin.federation.client_app
assert fedhubert_plugin.ONE_MESSAGE_PROCESS
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
    from fedhubert_plugin.federation.local_trainer import LocalTrainer

    owner = subprocess.Popen(["sleep", "600"])  # stands in for the SuperNode's process
    try:
        trainer = LocalTrainer(TINY, label_rate=100)
        trainer.client_task(client_shard)
        start = {k: v.detach().float().numpy().copy() for k, v in trainer.model.state_dict().items()}
        config = ClientConfig(TINY, label_rate=100.0, local_updates=2, validate=True, server_round=1)

        first, started = call_service(owner.pid, ("train", 1, (config, client_shard, start)))
        assert started > 0 and first.metrics["updates"] == 2 and np.isfinite(first.validation["loss"])
        assert sum(not np.array_equal(first.arrays[k], start[k]) for k in start) > len(start) // 2
        service = service_of(owner.pid)

        second, started = call_service(owner.pid, ("evaluate", 1, (config, client_shard, first.arrays)))
        assert started == 0.0 and service_of(owner.pid).pid == service.pid  # the same process, kept
        assert np.isfinite(second.metrics["loss"]) and second.num_examples == first.validation["num-examples"]

        broken = tmp_path / "broken"
        shutil.copytree(client_shard, broken)
        (broken / "labels" / "valid.km").unlink()
        with pytest.raises(ShardError, match=str(broken / "labels" / "valid.km")):  # the client's data, named
            call_service(owner.pid, ("evaluate", 1, (config, broken, first.arrays)))

        service.kill()
        service.wait(10)
        third, started = call_service(owner.pid, ("evaluate", 1, (config, client_shard, first.arrays)))
        assert started > 0 and service_of(owner.pid).pid != service.pid
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
    command = [sys.executable, "-m", "fedhubert_plugin.federation.trainer_service", "--address", str(address)]
    service = subprocess.Popen([*command, "--owner", str(os.getpid()), "--idle-seconds", "1"])
    assert service.wait(timeout=120) == 0  # its owner (this test) lives on: it ended for being idle
    assert not address.exists() and not address.with_suffix(".lock").exists()
