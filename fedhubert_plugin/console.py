"""What the console shows: one line per event by default, everything with ``fedhubert -v``.

Quiet (the default): our INFO lines, progress bars (on a terminal), third-party WARNING and above;
fairseq's and s3prl's INFO notes, Flower's notices and the deprecation and user warnings of
torch, fairseq, s3prl, Ray and scikit-learn are dropped, in this process and in the processes it
starts (Ray's actors, SuperNode ClientApps started from this shell inherit the environment).
Verbose: DEBUG, every warning. Either way each Flower line prints once: where our handler is set
up, Flower's own console handler is removed and its records go through ours.
"""

import contextlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

logger = logging.getLogger(__name__)

QUIET_ENV = "FEDHUBERT_QUIET"
NOISY_CATEGORIES = (DeprecationWarning, FutureWarning, UserWarning)
# s3prl warns at import about upstreams whose packages are missing (ESPnet...); Flower's warnings are
# deprecation notices and actor shutdowns, its errors stay
QUIET_LOGGERS = {"fairseq": logging.WARNING, "s3prl": logging.ERROR, "flwr": logging.ERROR}
LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"


def quiet() -> bool:
    """Whether this process runs quiet (set by ``configure``, inherited by the processes it starts)."""
    return os.environ.get(QUIET_ENV) == "1"


def configure(verbose: bool) -> None:
    """Logging and warnings for a ``fedhubert`` command; child processes inherit the choice."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT, force=True)
    if verbose:
        os.environ.pop(QUIET_ENV, None)
    else:
        os.environ[QUIET_ENV] = "1"
        os.environ["PYTHONWARNINGS"] = ",".join(f"ignore::{c.__name__}" for c in NOISY_CATEGORIES)
    apply()


def apply() -> None:
    """This process's share of the choice (also called where Flower starts ClientApps): Flower's lines once,
    and when quiet, third-party notes and warnings dropped."""
    if "flwr" in sys.modules and logging.getLogger().handlers:  # else Flower's handler is the only one
        from flwr.supercore.logger import console_handler

        logging.getLogger("flwr").removeHandler(console_handler)
    if not quiet():
        return
    for category in NOISY_CATEGORIES:
        warnings.filterwarnings("ignore", category=category)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


class Tee:
    """A text stream that writes to several streams (a log file and the console)."""

    def __init__(self, *streams: Any):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


@contextlib.contextmanager
def console_to(path: Path) -> Iterator[None]:
    """What a third-party tool prints while inside is kept in ``path``: instead of the console when quiet, and
    on the console too otherwise."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        stdout, stderr = (out, out) if quiet() else (Tee(out, sys.stdout), Tee(out, sys.stderr))
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                yield
        finally:  # a logging handler the tool set up on these streams would write to a closed file afterwards
            root = logging.getLogger()
            for handler in list(root.handlers):
                if getattr(handler, "stream", None) in (out, stdout, stderr):
                    root.removeHandler(handler)


def progress_bar(*args: Any, **kwargs: Any) -> tqdm:
    """A tqdm bar, drawn on a terminal only: in a log file its redraws would be noise."""
    return tqdm(*args, disable=None, **kwargs)


class Phases:
    """Numbered phase logging and timing."""

    def __init__(self, total: int):
        self.total, self.done, self.seconds = total, 0, {}

    def run(self, name: str, fn, *args, **kwargs):
        self.done += 1
        logger.info("[phase %d/%d] %s", self.done, self.total, name)
        start = time.monotonic()
        result = fn(*args, **kwargs)
        self.seconds[name] = time.monotonic() - start
        logger.info("[phase %d/%d] %s done in %.1f s", self.done, self.total, name, self.seconds[name])
        return result
