"""``fedhubert probe``: what a checkpoint's layers know about phones, on speakers the probe never saw.

For every layer (s3prl's ``hidden_states`` of our ``hubert_local`` upstream: the input of each
encoder layer, then the encoder's output) and for the MFCC baseline (39-dim, 100 Hz):

- phone accuracy of a frame-level linear classifier (scikit-learn's logistic regression on
  standardised features), fitted on one subset's speakers and scored on another's;
- PNMI of k-means (scikit-learn's MiniBatchKMeans, fitted on the first subset) on the second
  subset's frames, measured as fairseq measures it (``targets.quality``);
- speaker accuracy of a frame-level linear speaker classifier on the second subset, fitted on half
  of each speaker's utterances and scored on the other half (``speaker_probe``).

``random_init`` also probes each checkpoint's architecture with freshly initialised weights:
what pretraining bought is the difference.

Layer 0 is the encoder's input: the conv front end's features, projected, plus the convolutional
positional embedding; layer n ≥ 1 has been through n transformer layers. Each model's best layer
is reported beside its best transformer layer (n ≥ 1), since a best layer 0 says little about
what the transformer learned.
"""

import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
import torch
from sklearn.cluster import MiniBatchKMeans

from fedhubert_plugin.configs import ProbeConfig
from fedhubert_plugin.console import progress_bar
from fedhubert_plugin.export import named_checkpoints, random_init_checkpoint
from fedhubert_plugin.files import atomic_write_json, atomic_write_text
from fedhubert_plugin.linear_probe import linear_accuracy, standardise, subsample
from fedhubert_plugin.speaker_probe import speaker_accuracy
from fedhubert_plugin.targets.features import PRESETS
from fedhubert_plugin.targets.quality import label_quality, read_alignments

logger = logging.getLogger(__name__)

CLUSTERS = 100
TRAIN_FRAMES = 100_000  # frames the probes are fitted on at most (a random, seeded subset of the train subset)
FIRST_TRANSFORMER_LAYER = 1  # hidden_states[0] is the encoder's input (conv front end); n ≥ 1: after n layers


@dataclass
class Split:
    """Utterances of one subset: their audio files and phone per frame at one rate."""

    audio: List[Path]
    phones: List[List[str]]


@dataclass
class LayerScore:
    layer: int  # 0: the encoder's input (after the conv extractor); n ≥ 1: after n transformer layers; MFCC: 0
    phone_accuracy: float
    pnmi: float
    speaker_accuracy: float


@dataclass
class ProbeResult:
    """One model's scores, layer by layer."""

    name: str
    layers: List[LayerScore] = field(default_factory=list)

    @property
    def best(self) -> LayerScore:
        """The layer of highest phone accuracy."""
        return max(self.layers, key=lambda score: score.phone_accuracy)

    @property
    def best_speaker(self) -> LayerScore:
        """The layer of highest speaker accuracy."""
        return max(self.layers, key=lambda score: score.speaker_accuracy)

    @property
    def best_pnmi(self) -> float:
        """The highest PNMI of any layer."""
        return max(score.pnmi for score in self.layers)

    @property
    def transformer_layers(self) -> List[LayerScore]:
        """The layers after at least one transformer layer; none for MFCC."""
        return [score for score in self.layers if score.layer >= FIRST_TRANSFORMER_LAYER]

    @property
    def best_transformer(self) -> Optional[LayerScore]:
        """The transformer layer of highest phone accuracy; None without transformer layers."""
        return max(self.transformer_layers, key=lambda score: score.phone_accuracy, default=None)

    @property
    def best_transformer_pnmi(self) -> Optional[float]:
        """The highest PNMI of any transformer layer; None without transformer layers."""
        return max((score.pnmi for score in self.transformer_layers), default=None)


def read_split(librispeech_root: Path, subset: str, alignments: Path, rate: str) -> Split:
    """The utterances of ``subset`` with alignments at ``rate`` (``100hz`` or ``50hz``)."""
    phones = read_alignments([Path(alignments) / rate / f"{subset}.tsv"])
    audio = []
    for uid in phones:
        speaker, chapter, _ = uid.split("-")
        audio.append(Path(librispeech_root) / subset / speaker / chapter / f"{uid}.flac")
    missing = [str(path) for path in audio if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} aligned utterances have no audio, e.g. {missing[0]}: "
            f"--librispeech-root must be the corpus the alignments were made for"
        )
    return Split(audio, list(phones.values()))


def frames_and_phones(features: List[np.ndarray], phones: List[List[str]]) -> Tuple[np.ndarray, List[str]]:
    """Features and phones of all utterances, each utterance cut to the shorter of the two."""
    lengths = [min(len(f), len(p)) for f, p in zip(features, phones)]
    stacked = np.concatenate([f[:n] for f, n in zip(features, lengths)])
    return stacked, [phone for p, n in zip(phones, lengths) for phone in p[:n]]


def phone_scores(
    train: Tuple[np.ndarray, List[str]], test: Tuple[np.ndarray, List[str]], seed: int
) -> Tuple[float, float]:
    """Linear phone accuracy and k-means PNMI of one layer's frames (fitted on ``train``, scored on ``test``)."""
    x_train, x_test = standardise(train[0], test[0])
    accuracy = linear_accuracy((x_train, train[1]), (x_test, test[1]), seed)
    kmeans = MiniBatchKMeans(n_clusters=CLUSTERS, n_init=3, random_state=seed, batch_size=4096).fit(x_train)
    clusters = kmeans.predict(x_test).astype(str)
    pnmi = label_quality({"test": list(test[1])}, {"test": list(clusters)}).pnmi
    return accuracy, pnmi


def score_layers(
    name: str,
    train: List[List[np.ndarray]],
    test: List[List[np.ndarray]],
    train_split: Split,
    test_split: Split,
    seed: int,
    train_frames: int = TRAIN_FRAMES,
) -> ProbeResult:
    """``train`` and ``test`` hold, per utterance, one feature matrix per layer; fit on ``train_frames`` at most."""
    result = ProbeResult(name)
    for layer in progress_bar(range(len(train[0])), desc=f"probe {name}", unit="layer", leave=False):
        layer_train = subsample(frames_and_phones([u[layer] for u in train], train_split.phones), train_frames, seed)
        layer_test = frames_and_phones([u[layer] for u in test], test_split.phones)
        speaker = speaker_accuracy([u[layer] for u in test], test_split.audio, seed)
        result.layers.append(LayerScore(layer, *phone_scores(layer_train, layer_test, seed), speaker))
    best, transformer = result.best, result.best_transformer
    logger.info("probe %s: best layer %d, phone accuracy %.3f", name, best.layer, best.phone_accuracy)
    if transformer is not None:
        logger.info("probe %s: best transformer layer %d, %.3f", name, transformer.layer, transformer.phone_accuracy)
    return result


@torch.no_grad()
def hidden_states(checkpoint: Path, splits: Sequence[Split], device: str) -> List[List[List[np.ndarray]]]:
    """Per split and utterance, every layer's features (s3prl's hidden_states of ``hubert_local``); the model is
    loaded once, utterances go one at a time."""
    from upstream.hubert_local.expert import UpstreamExpert

    expert = UpstreamExpert(str(checkpoint)).eval().to(device)
    states = []
    for split in splits:
        states.append([])
        for path in progress_bar(split.audio, desc=f"features {Path(checkpoint).name}", unit="utt", leave=False):
            wav = torch.from_numpy(sf.read(path, dtype="float32")[0]).to(device)
            states[-1].append([h[0].float().cpu().numpy() for h in expert([wav])["hidden_states"]])
    return states


def mfcc_features(split: Split) -> List[List[np.ndarray]]:
    """Per utterance, one "layer": HuBERT's iteration-1 MFCC (39 dims, 100 Hz)."""
    return [[PRESETS["hubert"](sf.read(path, dtype="float32")[0])] for path in split.audio]


def probe(
    checkpoints: Dict[str, Path],
    librispeech_root: Path,
    alignments: Path,
    train_subset: str,
    test_subset: str,
    random_init: bool = False,
    seed: int = 0,
    device: Optional[str] = None,
    train_frames: int = TRAIN_FRAMES,
) -> List[ProbeResult]:
    """The MFCC baseline, then every checkpoint (and, with ``random_init``, its fresh twin), layer by layer.

    The probes are fitted on at most ``train_frames`` frames of ``train_subset`` (0: all of them).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    splits = {
        rate: [read_split(librispeech_root, subset, alignments, rate) for subset in (train_subset, test_subset)]
        for rate in ("100hz", "50hz")
    }
    mfcc_train, mfcc_test = splits["100hz"]
    mfcc = [mfcc_features(mfcc_train), mfcc_features(mfcc_test)]
    results = [score_layers("MFCC", *mfcc, mfcc_train, mfcc_test, seed, train_frames)]
    train, test = splits["50hz"]
    with tempfile.TemporaryDirectory() as tmp:
        models = dict(checkpoints)
        if random_init:
            for name, path in checkpoints.items():
                models[f"{name} (random init)"] = random_init_checkpoint(
                    path, Path(tmp) / f"random{len(models)}.pt", seed
                )
        for name, path in models.items():
            train_states, test_states = hidden_states(path, [train, test], device)
            results.append(score_layers(name, train_states, test_states, train, test, seed, train_frames))
    return results


def probe_checkpoints(cfg: ProbeConfig) -> Tuple[List[ProbeResult], Dict[str, Path]]:
    """``fedhubert probe``: the MFCC baseline and ``cfg``'s checkpoints probed, and the files written to
    ``cfg.out`` (``write_probe``)."""
    frames = TRAIN_FRAMES if cfg.train_frames is None else cfg.train_frames
    checkpoints = named_checkpoints(cfg.checkpoint)
    splits = (cfg.librispeech_root, cfg.alignments, cfg.train_subset, cfg.test_subset)
    results = probe(checkpoints, *splits, cfg.random_init, cfg.seed, train_frames=frames)
    return results, write_probe(results, cfg.out)


def probe_table(results: Sequence[ProbeResult]) -> str:
    """Markdown: each model's best layer and best transformer layer (by phone accuracy), with their accuracy and
    PNMI; dashes where there is no transformer layer (MFCC)."""
    rows = [
        "| features | best layer | phone accuracy | PNMI (k-means, 100 clusters) | best transformer layer | "
        "phone accuracy | PNMI | speaker accuracy, best layer (layer) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        speaker = result.best_speaker
        rows.append(
            f"| {result.name} | {score_cells(result.best)} | {score_cells(result.best_transformer)} "
            f"| {speaker.speaker_accuracy:.3f} ({speaker.layer}) |"
        )
    return "\n".join(rows)


def score_cells(score: Optional[LayerScore]) -> str:
    """``layer | phone accuracy | PNMI`` of one layer's score; dashes for none."""
    return "— | — | —" if score is None else f"{score.layer} | {score.phone_accuracy:.3f} | {score.pnmi:.3f}"


def write_probe(results: Sequence[ProbeResult], out: Path) -> Dict[str, Path]:
    """``out/probe.json`` (every layer; the best layer and best transformer layer, null for MFCC), ``probe.md``
    (those two) and ``probe.png`` (accuracy and PNMI by layer)."""
    from fedhubert_plugin.report import plot_probe

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for result in results:
        transformer = result.best_transformer
        best = {
            "best_layer": result.best.layer,
            "best_transformer_layer": None if transformer is None else transformer.layer,
        }
        rows.append({**asdict(result), **best})
    atomic_write_json(out / "probe.json", rows)
    atomic_write_text(out / "probe.md", probe_table(results) + "\n")
    return {"json": out / "probe.json", "md": out / "probe.md", "png": plot_probe(results, out / "probe.png")}
