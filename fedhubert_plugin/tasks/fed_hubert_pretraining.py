"""fairseq task ``fed_hubert_pretraining``: HuBERT pretraining on one client's shard.

It is fairseq's ``hubert_pretraining`` with the same config fields, so every HuBERT
recipe works by changing ``task._name``. Before fairseq reads a split it checks that the
manifest, the label files and the label dictionaries are there and agree, and that the
labels were made at ``task.label_rate`` (from ``labels.json``, written by
``fedhubert prepare``); it stops with an error that names the offending file and the fix
(fairseq's own checks are bare asserts, and a wrong label rate only logs warnings).
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List

from fairseq.data import Dictionary
from fairseq.tasks import register_task
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig, HubertPretrainingTask

from fedhubert_plugin.data.manifest import ManifestError, ManifestRow, ShardError, read_manifest
from fedhubert_plugin.targets import LABELS_META

logger = logging.getLogger(__name__)

LABEL_TOLERANCE_SECONDS = 0.1  # fairseq's HubertDataset tolerance
FIX_HINT = "re-run `fedhubert prepare` for this client, or point task.data / task.label_dir at a prepared client folder"


@dataclass
class FedHubertPretrainingConfig(HubertPretrainingConfig):
    """Same fields as fairseq's ``HubertPretrainingConfig``."""


def manifest_rows(manifest: Path) -> List[ManifestRow]:
    """The (path, samples) rows of a client's fairseq manifest; a ``ShardError`` naming it when it is malformed."""
    try:
        return read_manifest(manifest)[1]
    except ManifestError as err:
        raise ShardError(f"{err}; {FIX_HINT}") from None


def count_lines(path: Path) -> int:
    """Number of lines in a text file."""
    with open(path) as f:
        return sum(1 for _ in f)


@register_task("fed_hubert_pretraining", dataclass=FedHubertPretrainingConfig)
class FedHubertPretrainingTask(HubertPretrainingTask):
    """HuBERT masked-prediction pretraining on the shard of one federated client."""

    cfg: FedHubertPretrainingConfig

    @staticmethod
    def logging_outputs_can_be_summed(criterion) -> bool:
        """True: the HuBERT criteria log sums (losses, frame counts, correct counts), so fairseq's data-parallel
        ranks all-reduce them, which also runs on CPU with gloo, instead of gathering lists (CUDA-only in
        fairseq 0.12). Extra ``log_keys`` of the model (e.g. ``features_pen``) are then summed over ranks."""
        return True

    def dictionary_path(self, label: str) -> Path:
        """The label's ``dict.<label>.txt``; a ``ShardError`` naming it when it is missing."""
        path = Path(self.get_label_dir()) / f"dict.{label}.txt"
        if not path.is_file():
            raise ShardError(f"label dictionary {path} not found; {FIX_HINT}")
        return path

    def load_dictionaries(self) -> List[Dictionary]:
        for label in self.cfg.labels:
            self.dictionary_path(label)
        return super().load_dictionaries()

    def check_label_rate(self) -> None:
        """Stop when ``labels.json`` says the labels were made at another rate than ``task.label_rate``."""
        meta_path = Path(self.get_label_dir()) / LABELS_META
        if not meta_path.is_file():
            return
        made_at = json.loads(meta_path.read_text())["label_rate"]
        if float(made_at) != float(self.cfg.label_rate):
            raise ShardError(
                f"labels in {meta_path.parent} were made at label rate {made_at} Hz ({meta_path}) but "
                f"task.label_rate is {self.cfg.label_rate}; pass task.label_rate={made_at}"
            )

    def check_split(self, split: str) -> None:
        """Stop with a clear error unless the split's manifest and label files agree."""
        manifest = Path(self.cfg.data) / f"{split}.tsv"
        if not manifest.is_file():
            raise ShardError(f"manifest {manifest} not found; {FIX_HINT}")
        rows = manifest_rows(manifest)
        for label in self.cfg.labels:
            label_path = Path(self.get_label_dir()) / f"{split}.{label}"
            if not label_path.is_file():
                raise ShardError(f"label file {label_path} not found (manifest {manifest}); {FIX_HINT}")
            labelled = count_lines(label_path)
            if labelled != len(rows):
                raise ShardError(
                    f"label file {label_path} has {labelled} lines but manifest {manifest} lists "
                    f"{len(rows)} utterances; {FIX_HINT}"
                )
            self.check_labels(manifest, rows, label_path, self.dictionary_path(label))

    def check_labels(self, manifest: Path, rows: List[ManifestRow], label_path: Path, dictionary: Path) -> None:
        """Stop at the first utterance whose label count does not cover its audio at ``task.label_rate`` (frame
        labels; -1: a sequence per utterance, fine-tuning's letters), or when a label is not in ``dictionary``.

        fairseq allows 0.1 s of difference and only logs a count of the others, then trains on misaligned
        targets; and it reads a label missing from the dictionary as ``<unk>``: with an empty dictionary every
        target is the same and training looks excellent (masked accuracy 0.41 after 2 updates) on nothing.
        """
        seen = set()
        with open(label_path) as labels:
            for number, ((path, samples), line) in enumerate(zip(rows, labels), start=1):
                seen.update(line.split())
                audio_seconds = samples / self.cfg.sample_rate
                label_seconds = len(line.split()) / self.cfg.label_rate
                if self.cfg.label_rate > 0 and abs(audio_seconds - label_seconds) > LABEL_TOLERANCE_SECONDS:
                    raise ShardError(
                        f"label file {label_path} line {number} has {len(line.split())} labels "
                        f"({label_seconds:.2f} s at {self.cfg.label_rate} Hz) for {path} of {audio_seconds:.2f} s "
                        f"in {manifest}: "
                        f"labels made for other audio or at another rate; {FIX_HINT}"
                    )
        unknown = sorted(seen - set(Dictionary.load(str(dictionary)).symbols))
        if unknown:
            raise ShardError(
                f"label file {label_path} uses {len(unknown)} labels that its dictionary {dictionary} does not list "
                f"(e.g. {', '.join(unknown[:5])}): fairseq would read them as <unk>; {FIX_HINT}"
            )

    def check_fine_tuning(self) -> None:
        """Stop when fine-tuning would crop the audio: without ``pad_audio`` fairseq's HubertDataset cuts every
        utterance of a batch to the shortest one's length, and the letters no longer match the speech."""
        if self.cfg.fine_tuning and not self.cfg.pad_audio:
            raise ValueError(
                "task.fine_tuning=true needs task.pad_audio=true (and task.random_crop=false): without it each "
                "batch is cropped to its shortest utterance while the transcripts stay whole; see "
                "recipes/librispeech/finetune/"
            )

    def load_dataset(self, split: str, **kwargs) -> None:
        self.check_fine_tuning()
        self.check_label_rate()
        self.check_split(split)
        super().load_dataset(split, **kwargs)
        logger.info("fed_hubert_pretraining: %s has %d utterances", split, len(self.datasets[split]))
