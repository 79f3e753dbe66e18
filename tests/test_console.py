"""What the console shows: Flower's lines once, third-party warnings only with -v, inherited by child processes."""

import subprocess
import sys

import pytest

SNIPPET = """
import logging, subprocess, sys, warnings
from fedhubert_plugin import console
console.configure(verbose={verbose})
from flwr.common.logger import log
console.apply()
log(logging.ERROR, "a flower error")
log(logging.INFO, "a flower note")
logging.getLogger("fairseq.tasks").info("a fairseq note")
warnings.warn("a deprecated call", FutureWarning)
subprocess.run([sys.executable, "-c", "import warnings; warnings.warn('in a child', DeprecationWarning)"])
"""


def console_of(verbose: bool) -> str:
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", SNIPPET.format(verbose=verbose)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


@pytest.mark.unit
def test_quiet_keeps_errors_and_drops_third_party_notes_and_warnings():
    printed = console_of(verbose=False)
    assert printed.count("a flower error") == 1
    for dropped in ("a flower note", "a fairseq note", "a deprecated call", "in a child"):
        assert dropped not in printed


@pytest.mark.unit
def test_verbose_shows_everything_and_each_flower_line_once():
    printed = console_of(verbose=True)
    assert printed.count("a flower error") == 1 and printed.count("a flower note") == 1
    for shown in ("a fairseq note", "a deprecated call", "in a child"):
        assert shown in printed


@pytest.mark.parametrize("verbose", [False, True])
def test_what_a_tool_prints_is_kept_in_its_log_and_shown_only_with_v(verbose, tmp_path, monkeypatch, capsys):
    from fedhubert_plugin import console

    monkeypatch.delenv(console.QUIET_ENV, raising=False)
    if not verbose:
        monkeypatch.setenv(console.QUIET_ENV, "1")
    with console.console_to(tmp_path / "tool.log"):
        print("test-clean wer: 12.5")  # what fedhubert superb reads back from the log
    assert (tmp_path / "tool.log").read_text() == "test-clean wer: 12.5\n"
    assert ("test-clean wer: 12.5" in capsys.readouterr().out) == verbose


@pytest.mark.parametrize("verbose", [False, True])
def test_a_logging_handler_set_up_inside_is_gone_after_it(verbose, tmp_path, monkeypatch):
    import logging

    from fedhubert_plugin import console

    monkeypatch.delenv(console.QUIET_ENV, raising=False)
    if not verbose:
        monkeypatch.setenv(console.QUIET_ENV, "1")
    root, kept = logging.getLogger(), logging.StreamHandler(sys.stderr)
    root.addHandler(kept)  # one of the process's own, from before
    with console.console_to(tmp_path / "tool.log"):
        tools = logging.StreamHandler(sys.stderr)  # what a tool's logging.basicConfig does: on the redirected stream
        root.addHandler(tools)
    assert tools not in root.handlers and kept in root.handlers  # it would write to a closed file from now on
    root.removeHandler(kept)
