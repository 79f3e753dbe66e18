"""HuBERT targets: frame features (MFCC, or a checkpoint's layer), k-means codebooks, label files."""

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from fedhubert_plugin.options import REQUIRED, option

LABELS_META = "labels.json"  # beside a client's labels: label rate, features and k-means mode they were made with
FEATURES = ("hubert", "seed", "checkpoint")  # what k-means clusters (see targets.features)
KMEANS_MODES = ("federated", "local")  # one shared codebook through Flower, or one per client


@dataclass
class LabelQualityConfig:
    """Options of ``fedhubert label-quality``: the argument of ``targets.quality.score_labels``."""

    alignments: Path = option(
        REQUIRED,
        "folder of alignment files (*.tsv), or of <rate>hz/ subfolders of them (toy-data's OUT/alignments), "
        "or Montreal Forced Aligner's output folder (*.TextGrid, one per utterance, in any subfolders)",
    )
    data_root: Optional[Path] = option(
        None, "a `fedhubert prepare` folder: every client's labels", one_of="source", required=True
    )
    labels: List[Tuple[Path, Path]] = option(
        [],
        "a fairseq manifest and its label file (repeat for more)",
        one_of="source",
        required=True,
        repeat=True,
        metavar=("MANIFEST", "KM"),
    )
    label_rate: Optional[float] = option(None, "label rate in Hz (default: DATA_ROOT/prepare.json's; else 100)")
    splits: List[str] = option(["train", "valid"], "with --data-root: splits to score")
    json: Optional[Path] = option(None, "also write the figures to this JSON file")
