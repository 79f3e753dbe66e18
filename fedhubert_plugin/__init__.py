"""fedhubert: federated HuBERT pretraining as a fairseq user-dir plugin.

Importing this package, or passing ``common.user_dir=<path to fedhubert_plugin>`` to
fairseq, registers the fairseq task ``fed_hubert_pretraining`` and allow-lists the
classes that fairseq HuBERT checkpoints hold, so that fairseq loads them with
``weights_only=True`` on torch >= 2.6.
"""
from fedhubert_plugin import checkpoints, tasks  # noqa: F401  (tasks: registration with fairseq)

checkpoints.allow_fairseq_checkpoint_classes()

__version__ = "0.1.0"
