"""fedhubert: federated HuBERT pretraining as a fairseq user-dir plugin.

Importing this package, or passing ``common.user_dir=<path to fedhubert_plugin>`` to
fairseq, registers the fairseq task ``fed_hubert_pretraining`` and the criterion
``hubert_distillation``, and allow-lists the classes that fairseq HuBERT checkpoints hold, so that fairseq loads them with
``weights_only=True`` on torch >= 2.6.
"""
import logging

# Before torchaudio is imported: its FFmpeg probe logs a traceback per missing FFmpeg version
# at DEBUG, and Flower's SuperLink database (alembic) logs each plugin at INFO.
for _noisy in ("torio", "alembic"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

from fedhubert_plugin import checkpoints, criterions, tasks  # noqa: E402,F401  (registration with fairseq)

checkpoints.allow_fairseq_checkpoint_classes()

__version__ = "0.1.0"
