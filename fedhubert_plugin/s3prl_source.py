"""The files of s3prl's source tree that its pip package lacks, read from a checkout named by ``S3PRL_SOURCE``.

pip's s3prl 0.4.18 has no ``downstream/ctc/corpus/`` (PR's and SF's corpus readers), among other
source-tree files. ``S3PRL_SOURCE=/path/to/s3prl`` (a checkout of the same version) adds each
downstream folder of the checkout to the installed package's, so ``s3prl.downstream.ctc.corpus``
imports from the checkout while everything else stays the installed, pinned s3prl. Without it, the
tree ``scripts/setup.sh`` unpacks into the venv (``BUNDLED``: s3prl 0.3.0's sdist, whose corpus
readers are the 0.4.18 source tree's) is used when it is there.
"""

import importlib
import os
import pkgutil
import sys
from pathlib import Path
from typing import Optional

SOURCE_VARIABLE = "S3PRL_SOURCE"
BUNDLED = Path(sys.prefix) / "share" / "s3prl-source"  # requirements/s3prl-source.txt


def use_source_tree(checkout: Optional[str] = None) -> Optional[Path]:
    """Let the installed ``s3prl.downstream`` packages import modules of ``checkout`` (default: ``S3PRL_SOURCE``,
    else ``BUNDLED``) that they lack; the checkout's ``s3prl/downstream`` folder, or None when there is none."""
    checkout = checkout or os.environ.get(SOURCE_VARIABLE) or (str(BUNDLED) if BUNDLED.is_dir() else None)
    if not checkout:
        return None
    downstream = Path(checkout) / "s3prl" / "downstream"
    if not downstream.is_dir():
        raise FileNotFoundError(f"{SOURCE_VARIABLE}={checkout}: no s3prl/downstream folder; name an s3prl checkout")
    installed = importlib.import_module("s3prl.downstream")
    for task in pkgutil.iter_modules(installed.__path__):
        if task.ispkg and (downstream / task.name).is_dir():
            package = importlib.import_module(f"s3prl.downstream.{task.name}")
            if str(downstream / task.name) not in package.__path__:
                package.__path__.append(str(downstream / task.name))
    return downstream
