"""Atomic file writes: a file is either whole or absent, never half-written."""

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np


def atomic_write(path: Union[str, Path], write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: Union[str, Path], data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_save_array(path: Union[str, Path], array: np.ndarray) -> None:
    """Save ``array`` in ``.npy`` format to ``path`` atomically (the file is closed before the rename)."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.save would add ".npy" to a path
            np.save(f, array)

    atomic_write(path, write)
