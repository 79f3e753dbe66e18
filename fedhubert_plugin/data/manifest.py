"""fairseq audio manifests (``train.tsv``/``valid.tsv``): the audio root, then ``relative/path<TAB>samples``."""

from pathlib import Path
from typing import Iterable, List, Tuple, Union

from fedhubert_plugin.files import atomic_write_text

ManifestRow = Tuple[str, int]  # path relative to the root, number of samples


class ManifestError(ValueError):
    """A manifest is empty or has a line that is not ``path<TAB>samples``."""


class ShardError(ValueError):
    """A client's manifest, labels or dictionary are missing or disagree (raised by the fairseq task)."""


def read_manifest(manifest: Union[str, Path]) -> Tuple[Path, List[ManifestRow]]:
    """The audio root and the (relative path, samples) rows of a fairseq manifest."""
    lines = [line for line in Path(manifest).read_text().splitlines() if line.strip()]
    if not lines:
        raise ManifestError(f"{manifest} is empty: a manifest starts with the audio root line")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 2 or not fields[1].isdigit():
            raise ManifestError(f"{manifest} line {number} is not 'relative/path<TAB>samples': {line[:200]!r}")
        rows.append((fields[0], int(fields[1])))
    return Path(lines[0]), rows


def write_manifest(path: Union[str, Path], root: Path, rows: Iterable[ManifestRow]) -> None:
    """Write a fairseq manifest atomically."""
    lines = [str(root)] + [f"{relative}\t{samples}" for relative, samples in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")
