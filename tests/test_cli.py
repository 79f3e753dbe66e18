"""The command line: errors a user can fix print one line, -v keeps the traceback; global options come
before `downstream`."""

from fedhubert_plugin import cli


def test_an_error_prints_its_message_and_with_v_its_traceback(tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    assert cli.main(["export", "--checkpoint", str(missing), "--out", str(tmp_path / "out.pt")]) == 1
    quiet = capsys.readouterr().err
    assert f"checkpoint {missing} not found (run with -v for the traceback)" in quiet and "Traceback" not in quiet
    assert cli.main(["-v", "export", "--checkpoint", str(missing), "--out", str(tmp_path / "out.pt")]) == 1
    verbose = capsys.readouterr().err
    assert "Traceback (most recent call last)" in verbose and "CheckpointError: checkpoint" in verbose


def test_downstream_hands_its_arguments_to_s3prl_after_global_options(monkeypatch):
    received = []
    monkeypatch.setattr(cli, "run_downstream", received.append)
    assert cli.main(["-v", "downstream", "-m", "train", "-u", "hubert_local", "-v", "x"]) == 0
    assert cli.main(["downstream", "-h"]) == 0
    assert received == [["-m", "train", "-u", "hubert_local", "-v", "x"], ["-h"]]
    assert cli.split_global_options(["pretrain", "downstream"]) is None  # an override named downstream is no command
