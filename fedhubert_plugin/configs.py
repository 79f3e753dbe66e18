"""What each ``fedhubert`` command takes, declared once: one dataclass per command.

Each field is an ``option`` with its default and help; the command line (``cli``) derives its
options from these fields and builds the dataclass back from them, and the library functions
take the dataclass (``prepare.prepare``, ``demo.run_demo``, ``probe.probe_checkpoints``,
``asr_eval.evaluate_wer``).
``pretrain``, ``distill`` and ``finetune`` take ``FederationSettings``, which ``from_prepared_data`` fills
in from a prepared folder; ``distill`` adds ``DistillConfig``, ``finetune`` ``FinetuneConfig``. The options
of ``export`` and ``label-quality`` live beside their jobs (``export.ExportConfig``, ``targets.LabelQualityConfig``).

This module imports nothing heavy: ``fedhubert --help`` builds every command's options from it.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from fedhubert_plugin.data import PARTITIONS
from fedhubert_plugin.federation.settings import FederationSettings
from fedhubert_plugin.options import REQUIRED, option
from fedhubert_plugin.targets import FEATURES, KMEANS_MODES

# `fedhubert distill` starts the student from its teacher's weights, with FedAdam (as measured in
# tests/test_distill.py and benchmarks/finetune.py; pretraining's FedAvg default was measured from scratch only):
# FedAdam's server lr for pretraining from scratch (0.01, benchmarks/results/quality_sweep.md) overshoots there
# (the validation loss rose over 3 rounds in tests/test_distill.py); 1e-3 does not
FROM_TRAINED_SERVER = {"strategy": "fedadam", "eta": 1e-3}
DISTILL_DEFAULTS = {"recipe": "student", **FROM_TRAINED_SERVER}
# `fedhubert finetune` starts from pretrained weights too: the same server optimizer as distillation
FINETUNE_DEFAULTS = {"recipe": "tiny_ctc", **FROM_TRAINED_SERVER}


@dataclass
class ToyDataConfig:
    """Options of ``fedhubert toy-data``: the arguments of ``toy_data.write_toy_data``, and ``superb``."""

    out: Path = option(REQUIRED, "output folder (must be empty unless --force)")
    speakers: int = option(8, "speakers in the train subset")
    dev_speakers: int = option(2, "speakers in the dev subset")
    utterances_per_speaker: int = option(
        6, "utterances per speaker", aliases=("--utterances",), metavar="N", one_of="size"
    )
    minutes: Optional[float] = option(
        None,
        "about this many minutes of train audio instead of --utterances "
        "(e.g. --speakers 40 --minutes 60: a corpus to learn from)",
        one_of="size",
    )
    keyword_speakers: int = option(6, "speakers of the keyword train set")
    keyword_repeats: int = option(2, "times each keyword speaker says each word")
    seed: int = option(0, "seed of the voices, sentences and noise: the same seed writes the same bytes")
    workers: int = option(4, "parallel synthesis processes")
    force: bool = option(False, "replace a non-empty output folder")
    superb: bool = option(
        False,
        "also the corpora of SUPERB's IC (Fluent Speech Commands layout) and SID (VoxCeleb1 layout), and ASR's "
        "length tables and char.dict",
    )


@dataclass
class PrepareConfig:
    """Options of ``fedhubert prepare``: the arguments of ``prepare.prepare``."""

    librispeech_root: Path = option(REQUIRED, "folder holding the subsets (e.g. .../LibriSpeech)")
    subsets: List[str] = option(REQUIRED, "e.g. train-clean-100 train-clean-360")
    num_clients: int = option(REQUIRED, "clients to make; 0 with --partition speaker: one per speaker")
    out: Path = option(REQUIRED, "prepared data folder")
    partition: str = option(
        "speaker",
        "speaker: each speaker on one client; iid: utterance-level baseline; "
        "dirichlet: speaker shares ~ Dirichlet(--alpha)",
        choices=PARTITIONS,
    )
    alpha: float = option(0.5, "Dirichlet concentration, small = more skewed")
    features: str = option(
        "hubert",
        "hubert: 39-dim MFCC+deltas at 100 Hz, iteration 1; seed: 13-dim MFCC at 50 Hz; "
        "checkpoint: layer --layer of --checkpoint at 50 Hz, iteration 2",
        choices=FEATURES,
    )
    checkpoint: str = option(
        "",
        "--features checkpoint: iteration 1's global model "
        "(SAVE/server/checkpoint_best.pt or best_global_model.pt), read by each client from its disk",
        path=True,
    )
    layer: int = option(0, "--features checkpoint: encoder layer, 1-based; HuBERT Base: 6")
    kmeans: str = option(
        "federated",
        "federated: one shared codebook via Flower, only sums and counts leave a client; "
        "local: one codebook per client",
        choices=KMEANS_MODES,
    )
    n_clusters: int = option(100, "k-means clusters, the targets' classes")
    valid_fraction: float = option(0.1, "share of each client's utterances kept for validation")
    min_seconds: float = option(2.0, "skip utterances shorter than this many seconds, HuBERT Base's min_sample_size")
    min_count: int = option(5, "federated k-means: a client withholds clusters with fewer frames than this")
    kmeans_max_iter: int = option(10, "federated k-means: Lloyd steps at most")
    seed: int = option(0, "seed of the partition, the train/valid splits and k-means")
    workers: int = option(
        os.cpu_count() or 1,
        "threads for the scan and the feature extraction, shared out among clients; by default every core",
    )


@dataclass
class ProbeConfig:
    """Options of ``fedhubert probe``: the arguments of ``probe.probe_checkpoints``."""

    checkpoint: List[str] = option(
        REQUIRED,
        "a checkpoint (either format) and the name to show it under; repeat for more",
        repeat=True,
        metavar="NAME=PATH",
    )
    librispeech_root: Path = option(REQUIRED, "the corpus the alignments are of")
    alignments: Path = option(REQUIRED, "folder with 100hz/ and 50hz/ alignment files")
    out: Path = option(REQUIRED, "output folder: probe.json, probe.md and probe.png")
    train_subset: str = option("train-clean-5", "speakers the probes are fitted on")
    test_subset: str = option("dev-clean-2", "other speakers, the probes are scored on")
    random_init: bool = option(False, "also probe each architecture with fresh weights")
    train_frames: Optional[int] = option(
        None,
        "fit the probes on at most this many frames of --train-subset, drawn at random "
        "(default: fedhubert_plugin.probe.TRAIN_FRAMES, 100000; 0: all)",
    )
    seed: int = option(0, "seed of the frames drawn, the probes and the random init")


@dataclass
class DemoConfig:
    """Options of ``fedhubert demo``: the argument of ``demo.run_demo``."""

    out: Path = option(REQUIRED, "output folder")
    librispeech_root: Optional[Path] = option(None, "real LibriSpeech root (default: the toy corpus)")
    subsets: List[str] = option([], "with --librispeech-root (default train-clean-100)")
    speech_commands_root: Optional[Path] = option(
        None, "Speech Commands v0.01 train folder, or a folder with train/ and test/"
    )
    speech_commands_test_root: Optional[Path] = option(None, "Speech Commands test set folder")
    recipe: str = option("tiny", "teacher recipe; base pairs with student.yaml and ks.yaml", choices=("tiny", "base"))
    num_clients: int = option(4, "clients, speaker non-IID")
    n_clusters: int = option(100, "k-means clusters of the targets")
    rounds: int = option(5, "federated pretraining rounds")
    distill_rounds: int = option(5, "federated distillation rounds")
    finetune_rounds: int = option(
        0, "federated CTC fine-tuning rounds of the teacher on the clients' transcripts (0: no fine-tuning phase)"
    )
    local_updates: int = option(10, "fairseq updates per client per round")
    overrides: List[str] = option([], "fairseq/hydra overrides of the recipes", positional=True)
    seed: int = option(0, "seed of the toy corpus, the clients, k-means and the models")


@dataclass
class DistillConfig:
    """Options of ``fedhubert distill`` beside the federation's settings."""

    teacher: Path = option(REQUIRED, "teacher checkpoint (SAVE/server/checkpoint_best.pt or best_global_model.pt)")
    alpha: Optional[float] = option(None, "KD weight (default: the recipe's, 0.5)")
    temperature: Optional[float] = option(None, "KD temperature (default: the recipe's, 2.0)")
    hidden_weight: Optional[float] = option(None, "layer regression weight, 0 turns it off (default: the recipe's)")
    init_from_teacher: bool = option(
        False,
        "start the student from the teacher's fitting tensors (mapped layers, conv extractor); "
        "the same as --init-from TEACHER",
    )

    def settings(self, overrides: Sequence[str]) -> Dict[str, Any]:
        """The federation settings this distillation sets: the criterion's overrides and the teacher's waveform
        normalisation (the student hears what its teacher heard), then ``overrides``, and ``init_from`` with
        ``init_from_teacher``."""
        teacher = Path(self.teacher).resolve()
        if not teacher.is_file():
            raise FileNotFoundError(
                f"teacher {teacher} not found: pass SAVE/server/checkpoint_best.pt of a `fedhubert pretrain` run"
            )
        from fedhubert_plugin.checkpoints import load_checkpoint, normalization_of

        normalize = normalization_of(load_checkpoint(teacher), teacher)
        criterion = {"alpha": self.alpha, "temperature": self.temperature, "hidden_weight": self.hidden_weight}
        ours = [f"criterion.teacher_checkpoint={teacher}", f"task.normalize={normalize}"]
        ours += [f"criterion.{key}={value}" for key, value in criterion.items() if value is not None]
        values = {"overrides": ours + list(overrides)}
        return {**values, "init_from": str(teacher)} if self.init_from_teacher else values


@dataclass
class FinetuneConfig:
    """Options of ``fedhubert finetune`` beside the federation's settings."""

    init: Path = option(
        REQUIRED,
        "the pretrained HuBERT to fine-tune: SAVE/server/checkpoint_best.pt of `fedhubert pretrain`, or "
        "fairseq-hydra-train's checkpoint (fairseq's model.w2v_path; read on the server only); the same as "
        "--init-from with a fine-tuning recipe",
    )

    def settings(self, overrides: Sequence[str]) -> Dict[str, Any]:
        """The federation settings of this fine-tuning: the pretrained checkpoint to start from, and ``overrides``
        (the server settles the rest: ``federation.server.finetuning``)."""
        return {"init_from": str(Path(self.init).resolve()), "overrides": list(overrides)}


def from_prepared_data(data_root: str, **values: Any) -> FederationSettings:
    """Settings for the clients of a ``fedhubert prepare`` folder (``pretrain``, ``distill``, ``demo``).

    Label rate, cluster count and the nodes to wait for come from its ``prepare.json``;
    ``min_train_nodes`` is capped at the number of clients.
    """
    prepared = Path(data_root) / "prepare.json"
    if not prepared.is_file():
        raise FileNotFoundError(
            f"{prepared} not found: run `fedhubert prepare --out {data_root}` first (or let it finish)"
        )
    meta = json.loads(prepared.read_text())
    values["min_train_nodes"] = min(
        values.get("min_train_nodes", FederationSettings.min_train_nodes), meta["num_clients"]
    )
    return FederationSettings(
        data_root=str(Path(data_root).resolve()),
        label_rate=meta["label_rate"],
        n_clusters=meta["n_clusters"],
        min_available_nodes=meta["num_clients"],
        **values,
    )


@dataclass
class AsrEvalConfig:
    """Options of ``fedhubert asr-eval``."""

    checkpoint: Path = option(REQUIRED, "CTC fine-tuned checkpoint (fairseq-hydra-train's checkpoint_best.pt)")
    data: Path = option(
        REQUIRED, "a finetune/ folder of `fedhubert prepare` (held-out speakers): SUBSET.tsv, .ltr, dict.ltr.txt"
    )
    out: Path = option(REQUIRED, "results folder: hypo.word, ref.word, wer.json")
    subset: str = option("valid", "the split of --data to decode")
    max_tokens: int = option(1_600_000, "audio samples per batch")
    lm: str = option(
        "", "KenLM language model (ARPA or binary) for fairseq's KenLM lexicon decoder; empty: Viterbi", path=True
    )
    lexicon: str = option("", "with --lm: word -> letters lexicon (fairseq's format: WORD<TAB>W O R D |)", path=True)
    beam: int = option(500, "with --lm: beam size (fairseq's HuBERT infer_kenlm.yaml: 500)")
    lm_weight: float = option(2.0, "with --lm: language model weight (infer_kenlm.yaml: 2)")
    word_score: float = option(-1.0, "with --lm: word insertion score (infer_kenlm.yaml: -1)")
