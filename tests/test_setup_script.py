"""scripts/setup.sh refuses an unsupported Python before touching anything."""

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
