"""Every command's options come from its dataclasses: each field is an option, and parsing gives the dataclass
back with its declared defaults (so a field added later cannot be missed by the command line)."""

import argparse
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from fedhubert_plugin.cli import COMMANDS, build_parser
from fedhubert_plugin.options import (
    REQUIRED,
    add_options,
    default_of,
    from_args,
    option,
    option_values,
    plain_type,
    without_none,
)

SAMPLES = {int: "3", float: "0.5", str: "x", Path: "x"}


def command_parser(name: str) -> argparse.ArgumentParser:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[name]


def required_argv(config: type) -> Tuple[List[str], set]:
    """Arguments for the options of ``config`` that the command line must give (one per ``one_of`` group), and the
    fields they set."""
    argv, given, groups, hints = [], set(), set(), typing.get_type_hints(config)
    for f in fields(config):
        meta = f.metadata
        required = meta["cli"] and (meta["required"] or default_of(f) is REQUIRED)
        if not required or (meta["one_of"] and meta["one_of"] in groups):
            continue
        groups.add(meta["one_of"])
        hint = without_none(hints[f.name])
        if plain_type(hint) is list:
            (item,) = typing.get_args(hint)
            values = [SAMPLES[str]] * (len(typing.get_args(item)) or 1)
        else:
            values = [SAMPLES[plain_type(hint)]]
        argv += values if meta["positional"] else [f"--{f.name.replace('_', '-')}", *values]
        given.add(f.name)
    return argv, given


@pytest.mark.parametrize("name", COMMANDS)
def test_every_field_is_an_option_and_parsing_gives_the_declared_defaults(name):
    command, parser = COMMANDS[name], command_parser(name)
    with pytest.raises(SystemExit) as done:
        parser.parse_args(["--help"])
    assert done.value.code == 0
    destinations = {action.dest for action in parser._actions}
    argv = []
    for config in command.configs:
        argv += required_argv(config)[0]
    args = parser.parse_args(argv)
    for config in command.configs:
        on_cli = [f for f in fields(config) if f.metadata["cli"]]
        assert {f.name for f in on_cli} <= destinations, config.__name__
        parsed, given = option_values(config, args), required_argv(config)[1]
        for f in on_cli:
            if f.name not in given:
                assert parsed[f.name] == command.defaults.get(f.name, default_of(f)), f"{name} --{f.name}"


@dataclass
class Sample:
    out: Path = option(REQUIRED, "output", path=True)
    names: List[str] = option(["a", "b"], "names")
    root: Optional[Path] = option(None, "a root", one_of="source", required=True)
    pairs: List[Tuple[Path, Path]] = option(
        [], "pairs", one_of="source", required=True, repeat=True, metavar=("A", "B")
    )
    rate: Optional[float] = option(None, "a rate", aliases=("--r",))
    mode: str = option("x", "a mode", choices=("x", "y"))
    flag: bool = option(False, "a flag")
    rest: List[str] = option([], "trailing arguments", positional=True)
    hidden: int = option(7, "not on the command line", cli=False)


def test_each_kind_of_field_becomes_its_kind_of_option(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser()
    add_options(parser, Sample)
    argv = ["--out", "o", "--pairs", "a", "b", "--pairs", "c", "d", "--r", "0.5", "--flag", "k=v", "--mode", "y"]
    sample = from_args(Sample, parser.parse_args(argv))
    pairs = [[Path("a"), Path("b")], [Path("c"), Path("d")]]
    assert sample == Sample(tmp_path / "o", ["a", "b"], None, pairs, 0.5, "y", True, ["k=v"], 7)
    assert from_args(Sample, parser.parse_args(["--out", "o", "--root", "r", "--names", "c"])).names == ["c"]
    for wrong in (["--out", "o"], ["--out", "o", "--root", "r", "--pairs", "a", "b"], ["--root", "r"]):
        with pytest.raises(SystemExit):
            parser.parse_args(wrong)
    assert "a mode (default x)" in parser.format_help() and "--hidden" not in parser.format_help()
