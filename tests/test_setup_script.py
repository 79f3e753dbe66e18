"""scripts/setup.sh refuses an unsupported Python before touching anything, and needs no root on a ready machine."""

import os
import subprocess

from tests.helpers import REPO


def test_unsupported_python_is_named_with_the_fix(tmp_path):
    fake_python = tmp_path / "python3.12"
    fake_python.write_text("#!/bin/sh\necho 3.12\n")  # answers the version probe like Python 3.12
    fake_python.chmod(0o755)
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup.sh")],
        env={"PATH": "/usr/bin:/bin", "FEDHUBERT_PYTHON": str(fake_python)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "Python 3.12" in proc.stderr and "not supported" in proc.stderr
    assert "FEDHUBERT_PYTHON=python3.11" in proc.stderr


def test_a_ready_machine_is_set_up_without_apt_or_root(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "calls"
    for tool in ("apt-get", "sudo"):  # each records its call and fails, as it would without root or network
        (fake_bin / tool).write_text(f'#!/bin/sh\necho {tool} "$@" >> {calls}\nexit 100\n')
        (fake_bin / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not calls.exists(), calls.read_text()
    assert "ready: Python 3.11" in proc.stdout
