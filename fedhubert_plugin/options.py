"""Command-line options declared once, as dataclass fields.

A field made with ``option(default, help, ...)`` carries its help and how the command line
gives it in its metadata; ``add_options`` turns a dataclass's fields into argparse options
(``--dashed-names``, the help with the default appended) and ``from_args`` builds the
dataclass back from the parsed arguments, as fairseq does with ``gen_parser_from_dataclass``.
``mapping_values`` and ``mapping_defaults`` do the same for a config of dashed keys (Flower's
run config, for ``FederationSettings``).

This module imports nothing heavy: ``fedhubert --help`` builds every command's options with it.
"""

import argparse
import typing
from dataclasses import MISSING, Field, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Sequence, Type, TypeVar, Union

REQUIRED: Any = MISSING  # the default of a field that has none: the command line must give it
Config = TypeVar("Config")


def option(
    default: Any,
    help: str,
    *,
    required: bool = False,
    choices: Sequence[str] = (),
    aliases: Sequence[str] = (),
    metavar: Union[None, str, Sequence[str]] = None,
    path: bool = False,
    positional: bool = False,
    repeat: bool = False,
    one_of: str = "",
    cli: bool = True,
    **metadata: Any,
) -> Any:
    """A dataclass field that is also a command-line option.

    ``required``: the command line must give it even though the field has a default; in a
    ``one_of`` group (mutually exclusive options), one of the group must be given.
    ``aliases``: other spellings the command line accepts; ``path``: made absolute when read;
    ``positional``: a list given as the trailing arguments; ``repeat``: a list given by
    repeating the option (a list of tuples: a fixed number of values each time);
    ``cli``: False for a field the command line does not set; ``metadata``: more (e.g. ``run_config``).
    """
    metadata.update(
        help=help,
        required=required,
        choices=tuple(choices),
        aliases=tuple(aliases),
        metavar=tuple(metavar) if isinstance(metavar, (list, tuple)) else metavar,
        path=path,
        positional=positional,
        repeat=repeat,
        one_of=one_of,
        cli=cli,
    )
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def dashed(name: str) -> str:
    """The field ``name`` as the command line spells it, without the leading dashes: ``local_updates`` ->
    ``local-updates``."""
    return name.replace("_", "-")


def without_none(hint: Any) -> Any:
    """``Optional[X]`` -> X; any other type hint as it is."""
    if typing.get_origin(hint) is Union:
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return hint


def plain_type(hint: Any) -> Any:
    """The type a hint names, a generic as its origin: ``Optional[Path]`` -> Path, ``List[str]`` -> list."""
    hint = without_none(hint)
    return typing.get_origin(hint) or hint


def default_of(f: Field) -> Any:
    """The field's default (a fresh one for a list); ``REQUIRED`` when it has none."""
    return f.default_factory() if f.default_factory is not MISSING else f.default


def absolute(path: Union[str, Path]) -> Union[str, Path]:
    """``path`` made absolute, of the same type."""
    resolved = Path(path).resolve()
    return resolved if isinstance(path, Path) else str(resolved)


def help_text(f: Field, default: Any, required: bool) -> str:
    """The field's help, with its default appended when it has one worth saying."""
    if required or default is None or default == "" or isinstance(default, (bool, list)):
        return f.metadata["help"]
    return f"{f.metadata['help']} (default {default})"


def list_arguments(hint: Any, meta: Dict[str, Any]) -> Dict[str, Any]:
    """How argparse reads a list: trailing arguments, one option with values, or an option repeated."""
    (item,) = typing.get_args(without_none(hint))
    nargs = None if meta["repeat"] else "*" if meta["positional"] else "+"
    if typing.get_origin(item) is tuple:  # each use of the option gives a fixed number of values
        nargs, item = len(typing.get_args(item)), typing.get_args(item)[0]
    return {"type": item, "nargs": nargs, "action": "append" if meta["repeat"] else "store"}


def argument(f: Field, hint: Any, default: Any, required: bool) -> Dict[str, Any]:
    """The keyword arguments of ``add_argument`` for the field ``f``."""
    meta, kind = f.metadata, plain_type(hint)
    kwargs: Dict[str, Any] = {"help": help_text(f, default, required)}
    if not meta["positional"]:
        kwargs.update(dest=f.name, required=required)
    if default is not MISSING:
        kwargs["default"] = default
    if kind is bool:
        return {**kwargs, "action": "store_true"}
    kwargs.update(choices=meta["choices"] or None, metavar=meta["metavar"])
    return {**kwargs, **(list_arguments(hint, meta) if kind is list else {"type": kind})}


def add_options(parser: argparse.ArgumentParser, config: type, **defaults: Any) -> None:
    """An option for each field of the dataclass ``config``; ``defaults`` replace the declared ones."""
    hints, groups = typing.get_type_hints(config), {}
    for f in fields(config):
        meta = f.metadata
        if not meta["cli"]:
            continue
        default = defaults.get(f.name, default_of(f))
        required = (meta["required"] or default is MISSING) and f.name not in defaults
        target = parser
        if meta["one_of"]:
            if meta["one_of"] not in groups:
                groups[meta["one_of"]] = parser.add_mutually_exclusive_group(required=required)
            target, required = groups[meta["one_of"]], False
        names = [f.name] if meta["positional"] else [f"--{dashed(f.name)}", *meta["aliases"]]
        target.add_argument(*names, **argument(f, hints[f.name], default, required))


def read(f: Field, value: Any) -> Any:
    """``value`` as the field ``f`` holds it: a ``path`` made absolute."""
    return absolute(value) if f.metadata["path"] and value else value


def option_values(config: type, args: argparse.Namespace) -> Dict[str, Any]:
    """The fields of the dataclass ``config`` that the command line sets, read from ``args``."""
    return {f.name: read(f, getattr(args, f.name)) for f in fields(config) if f.metadata["cli"]}


def from_args(config: Type[Config], args: argparse.Namespace) -> Config:
    """The dataclass ``config`` made from parsed command-line arguments."""
    return config(**option_values(config, args))


def from_text(kind: Any, value: Any) -> Any:
    """A value of the plain type ``kind`` from a config's value, typed or text (a list: space-separated)."""
    if kind is list:
        return str(value).split()
    if kind is bool:
        return value if isinstance(value, bool) else str(value).lower() == "true"
    return kind(value)


def mapping_values(config: type, mapping: Mapping[str, Any], include: Callable[[Field], bool]) -> Dict[str, Any]:
    """The ``include``d fields of the dataclass ``config`` that ``mapping`` (dashed names -> values) sets."""
    hints = typing.get_type_hints(config)
    return {
        f.name: read(f, from_text(plain_type(hints[f.name]), mapping[dashed(f.name)]))
        for f in fields(config)
        if include(f) and dashed(f.name) in mapping
    }


def mapping_defaults(config: type, include: Callable[[Field], bool]) -> Dict[str, Any]:
    """The defaults of the ``include``d fields of ``config`` by dashed name (a list: one space-separated string)."""
    defaults = {dashed(f.name): default_of(f) for f in fields(config) if include(f)}
    return {key: " ".join(value) if isinstance(value, list) else value for key, value in defaults.items()}
