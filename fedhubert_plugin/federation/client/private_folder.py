"""This user's private folder for the trainer services' sockets and key, checked before every use.

``$XDG_RUNTIME_DIR/fedhubert`` when that runtime folder is private, else ``fedhubert-<uid>`` in the
temp folder. It must be a real directory of this user with mode 0700 (checked with ``lstat``: a
symlink is refused); another user who made the path first is refused by name, not trusted
(docs/deployment.md's threat model).
"""

import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)


class UnsafeFolderError(PermissionError):
    """The services' folder is a symlink, another user's, or open to others."""


def folder_problem(folder: Path) -> Optional[str]:
    """What keeps ``folder`` from being private (None when it is a real directory of this user with mode 0700);
    symlinks are not followed."""
    try:
        info = os.lstat(folder)
    except OSError as error:
        return f"it cannot be read ({error.strerror})"
    if stat.S_ISLNK(info.st_mode):
        return "it is a symlink"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a directory"
    if info.st_uid != os.getuid():
        return f"its owner is uid {info.st_uid}, not ours ({os.getuid()})"
    if info.st_mode & 0o777 != 0o700:
        return f"its mode is {oct(info.st_mode & 0o777)}, not 0o700"
    return None


def runtime_dir() -> Path:
    """This user's private folder for the services' sockets and key: ``$XDG_RUNTIME_DIR/fedhubert`` when that
    runtime folder is private, else ``fedhubert-<uid>`` in the temp folder; made (mode 0700) when missing.

    Raises UnsafeFolderError, naming the folder, when it is a symlink, another user's or open to others."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    problem = folder_problem(Path(runtime)) if runtime else "it is not set"
    if problem:
        logger.debug("XDG_RUNTIME_DIR %r is not used: %s", runtime, problem)
        folder = Path(tempfile.gettempdir()) / f"fedhubert-{os.getuid()}"
    else:
        folder = Path(runtime) / "fedhubert"
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:  # ours from before, or someone else's: checked below
        pass
    problem = folder_problem(folder)
    if problem:
        raise UnsafeFolderError(
            f"the trainer service's folder {folder} is not private: {problem}. Remove it, or set XDG_RUNTIME_DIR "
            "or TMPDIR to a folder of yours with mode 0700"
        )
    return folder


def authkey() -> bytes:
    """The key that authenticates connections to this user's services (made once, mode 0600)."""
    path = runtime_dir() / "trainer.key"
    try:
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
            file.write(os.urandom(32))
    except FileExistsError:
        pass
    return path.read_bytes()
