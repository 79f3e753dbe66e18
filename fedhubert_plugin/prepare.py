"""`fedhubert prepare`: from a LibriSpeech tree to one fairseq-ready folder per client.

It sits above ``data`` (scan, partition, manifests), ``targets`` (features, k-means, labels)
and ``federation`` (federated k-means through Flower), which never import each other upward.

Writes, under ``out``::

    utterances.tsv        every usable utterance (id, speaker, chapter, subset, path, samples, seconds)
    report.json           skipped and converted files with reasons, chapters without transcript
    partition.json        clients -> speakers, hours, utterance counts
    clients/client_XXX/{train,valid}.tsv                  fairseq manifests
    clients/client_XXX/labels/{train,valid}.km, dict.km.txt, labels.json
    kmeans/               the codebook(s); federated: inertia per Lloyd step (metrics.jsonl, tb/)
    prepare.json          settings and label rate; written last, so its presence means complete

Every file is written atomically. A run first removes ``prepare.json`` and the clients'
old labels, so an interrupted run never leaves labels that belong to other manifests;
running again redoes the preparation cleanly.
"""

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from tensorboardX import SummaryWriter

from fedhubert_plugin.data.manifest import write_manifest
from fedhubert_plugin.data.partition import partition_utterances, split_train_valid
from fedhubert_plugin.data.scan import Utterance, scan_librispeech
from fedhubert_plugin.federation.kmeans_app import (
    FederatedKMeansResult,
    FederatedKMeansSettings,
    client_app,
    federated_kmeans_server_app,
)
from fedhubert_plugin.federation.nodes import client_name, ray_backend_config, simulate
from fedhubert_plugin.files import atomic_save_array, atomic_write_json, atomic_write_text
from fedhubert_plugin.targets import KMEANS_MODES, LABELS_META
from fedhubert_plugin.targets.features import feature_extractor
from fedhubert_plugin.targets.kmeans import adaptive_clusters, local_codebook, nearest
from fedhubert_plugin.targets.labels import cached_features, label_client

logger = logging.getLogger(__name__)


@dataclass
class PrepareConfig:
    """Options of ``fedhubert prepare`` (see its --help)."""

    librispeech_root: Path
    subsets: Sequence[str]
    num_clients: int
    out: Path
    partition: str = "speaker"
    alpha: float = 0.5
    features: str = "hubert"
    checkpoint: str = ""  # --features checkpoint: the global model whose layer gives the features
    layer: int = 0
    kmeans: str = "federated"
    n_clusters: int = 100
    valid_fraction: float = 0.1
    min_seconds: float = 2.0
    min_count: int = 5
    kmeans_max_iter: int = 10
    seed: int = 0
    workers: int = 2


@dataclass
class PrepareSummary:
    """What prepare made: per-client rows of the summary table and the k-means outcome."""

    clients: Dict[str, Dict] = field(default_factory=dict)
    usable_utterances: int = 0
    skipped: int = 0
    converted: int = 0
    label_rate: int = 0
    kmeans_inertia_per_frame: float = 0.0


def write_utterance_table(path: Path, utterances: List[Utterance]) -> None:
    header = "id\tspeaker\tchapter\tsubset\tpath\tsamples\tseconds"
    rows = [f"{u.id}\t{u.speaker}\t{u.chapter}\t{u.subset}\t{u.path}\t{u.samples}\t{u.seconds:.3f}" for u in utterances]
    atomic_write_text(path, "\n".join([header] + rows) + "\n")


def clear_previous_run(out: Path, keep: List[str]) -> None:
    """Remove every client's labels, and client folders not in ``keep``."""
    clients_dir = out / "clients"
    if clients_dir.is_dir():
        for folder in clients_dir.iterdir():
            if folder.name not in keep:
                shutil.rmtree(folder)
            else:
                shutil.rmtree(folder / "labels", ignore_errors=True)


def split_summary(utterances: List[Utterance]) -> Dict:
    return {"utterances": len(utterances), "hours": round(sum(u.seconds for u in utterances) / 3600, 4)}


def run_local_kmeans(cfg: PrepareConfig, folders: List[Path]) -> float:
    """One codebook per client (the original design), K shrunk when a client has few frames."""
    preset = feature_extractor(cfg.features, cfg.checkpoint, cfg.layer)
    inertia, frames = 0.0, 0
    for folder in folders:
        feats, _ = cached_features(folder, "train", preset)
        k = adaptive_clusters(len(feats), cfg.n_clusters)
        codebook = local_codebook(np.asarray(feats), k, seed=cfg.seed)
        inertia += float(nearest(feats, codebook)[1].sum())
        frames += len(feats)
        atomic_save_array(cfg.out / "kmeans" / f"{folder.name}.npy", codebook)
        label_client(folder, codebook, preset, dictionary_size=cfg.n_clusters)
        logger.info("local k-means %s: %d clusters on %d frames", folder.name, k, len(feats))
    return inertia / frames


def run_federated_kmeans(cfg: PrepareConfig, num_clients: int) -> float:
    """One shared codebook through Flower (simulation); only per-cluster sums and counts move."""
    settings = FederatedKMeansSettings(
        data_root=str(cfg.out.resolve()),
        num_clients=num_clients,
        n_clusters=cfg.n_clusters,
        features=cfg.features,
        checkpoint=cfg.checkpoint,
        layer=cfg.layer,
        seed=cfg.seed,
        min_count=cfg.min_count,
        max_iter=cfg.kmeans_max_iter,
    )
    result = FederatedKMeansResult()
    simulate(federated_kmeans_server_app(settings, result), client_app, num_clients, ray_backend_config())
    if result.codebook is None:
        raise RuntimeError("federated k-means did not finish; see the Flower log above")
    atomic_save_array(cfg.out / "kmeans" / "codebook.npy", result.codebook)
    atomic_write_json(
        cfg.out / "kmeans" / "federated.json",
        {"inertia_per_step": result.inertia, "frames": result.frames, "seconds": result.seconds},
    )
    write_kmeans_metrics(cfg.out / "kmeans", [inertia / result.frames for inertia in result.inertia])
    return result.inertia[-1] / result.frames


def write_kmeans_metrics(folder: Path, inertia_per_frame: List[float]) -> None:
    """Federated k-means per Lloyd step as JSON lines (``metrics.jsonl``) and TensorBoard scalars (``tb/``)."""
    lines = [
        json.dumps({"step": step, "inertia_per_frame": value}) for step, value in enumerate(inertia_per_frame, start=1)
    ]
    atomic_write_text(folder / "metrics.jsonl", "".join(line + "\n" for line in lines))
    board = SummaryWriter(str(folder / "tb"))
    for step, value in enumerate(inertia_per_frame, start=1):
        board.add_scalar("inertia_per_frame", value, step)
    board.close()


def prepare(cfg: PrepareConfig) -> PrepareSummary:
    """Scan, partition, write manifests, learn k-means and write labels for every client."""
    preset = feature_extractor(cfg.features, cfg.checkpoint, cfg.layer)  # fails early on a bad choice
    if cfg.kmeans not in KMEANS_MODES:
        raise ValueError(f"unknown --kmeans {cfg.kmeans!r}; choose one of {', '.join(KMEANS_MODES)}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prepare.json").unlink(missing_ok=True)  # the completion marker: written again last
    utterances, report = scan_librispeech(
        cfg.librispeech_root, cfg.subsets, out / "converted", cfg.min_seconds, cfg.workers
    )
    write_utterance_table(out / "utterances.tsv", utterances)
    atomic_write_json(out / "report.json", {**asdict(report), "usable_utterances": len(utterances)})
    clients = partition_utterances(utterances, cfg.num_clients, cfg.partition, cfg.seed, cfg.alpha)
    names = [client_name(i) for i in range(len(clients))]  # --num-clients 0: one per speaker
    clear_previous_run(out, keep=names)

    root = Path(cfg.librispeech_root).resolve()
    summary = PrepareSummary(
        usable_utterances=len(utterances), skipped=len(report.skipped), converted=len(report.converted)
    )
    for index, (name, client_utts) in enumerate(zip(names, clients)):
        splits = split_train_valid(client_utts, cfg.valid_fraction, cfg.seed + index)
        for split, split_utts in splits.items():
            write_manifest(
                out / "clients" / name / f"{split}.tsv",
                root,
                [(os.path.relpath(u.path, root), u.samples) for u in split_utts],
            )
        summary.clients[name] = {
            "speakers": sorted({u.speaker for u in client_utts}),
            **{split: split_summary(split_utts) for split, split_utts in splits.items()},
        }
    atomic_write_json(
        out / "partition.json",
        {"method": cfg.partition, "seed": cfg.seed, "alpha": cfg.alpha, "clients": summary.clients},
    )

    folders = [out / "clients" / name for name in names]
    if cfg.kmeans == "federated":
        summary.kmeans_inertia_per_frame = run_federated_kmeans(cfg, len(names))
    else:
        summary.kmeans_inertia_per_frame = run_local_kmeans(cfg, folders)
    summary.label_rate = preset.label_rate
    labels_meta = {
        "label_rate": preset.label_rate,
        "features": cfg.features,
        "kmeans": cfg.kmeans,
        "n_clusters": cfg.n_clusters,
        **({"checkpoint": cfg.checkpoint, "layer": cfg.layer} if cfg.features == "checkpoint" else {}),
    }
    for folder in folders:
        atomic_write_json(folder / "labels" / LABELS_META, labels_meta)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    atomic_write_json(
        out / "prepare.json",
        {
            **settings,
            "num_clients": len(names),
            "subsets": list(cfg.subsets),
            "label_rate": preset.label_rate,
            "feature_dim": preset.dim,
        },
    )
    return summary


def summary_table(summary: PrepareSummary) -> str:
    """The per-client table prepare prints."""
    lines = [f"{'client':<12}{'speakers':>9}{'train utts':>12}{'train h':>10}{'valid utts':>12}{'valid h':>10}"]
    for name, row in summary.clients.items():
        lines.append(
            f"{name:<12}{len(row['speakers']):>9}{row['train']['utterances']:>12}{row['train']['hours']:>10.3f}"
            f"{row['valid']['utterances']:>12}{row['valid']['hours']:>10.3f}"
        )
    lines.append(
        f"{summary.usable_utterances} usable utterances, {summary.skipped} skipped, {summary.converted} converted "
        f"(see report.json); label rate {summary.label_rate} Hz; "
        f"k-means inertia per frame {summary.kmeans_inertia_per_frame:.3f}"
    )
    return "\n".join(lines)
