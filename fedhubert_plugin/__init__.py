"""fedhubert: federated HuBERT pretraining as a fairseq user-dir plugin.

Importing this package, or passing ``common.user_dir=<path to fedhubert_plugin>`` to
fairseq, registers the fairseq task ``fed_hubert_pretraining``, the criterion
``hubert_distillation`` and the model ``fed_hubert_ctc`` (fine-tuning), and allow-lists
the classes that fairseq HuBERT checkpoints hold, so that fairseq loads them with
``weights_only=True`` on torch >= 2.6 (everywhere but in Flower's one-message ClientApp
processes, see below).
"""

import logging
import os
import sys
from pathlib import Path

# Flower's telemetry and update check stay off in every process that runs our code, unless set
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


def one_message_process() -> bool:
    """Whether this process is one of the `flwr-clientapp` processes that Flower's SuperNode starts for every
    message. Ours hands its work to the node's kept trainer service (``federation.client.trainer``) and needs
    neither torch nor fairseq, so the package skips its fairseq registration there."""
    return Path(sys.argv[0] if sys.argv else "").name == "flwr-clientapp"


# Before torchaudio is imported: its FFmpeg probe logs a traceback per missing FFmpeg version
# at DEBUG, and Flower's SuperLink database (alembic) logs each plugin at INFO.
for _noisy in ("torio", "alembic"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

if not one_message_process():
    # fairseq.tasks.frm_text_to_speech calls logging.basicConfig(level=DEBUG) when imported: keep the
    # root logger as the application left it (otherwise every client logs each batch at DEBUG).
    _root = logging.getLogger()
    _root_level, _root_handlers = _root.level, list(_root.handlers)

    from fedhubert_plugin import checkpoints, criterions, models, tasks  # noqa: E402,F401  (registration with fairseq)

    _root.setLevel(_root_level)
    for _handler in [h for h in _root.handlers if h not in _root_handlers]:
        _root.removeHandler(_handler)

    checkpoints.allow_fairseq_checkpoint_classes()

__version__ = "0.1.0"
