"""`fedhubert prepare`: from a LibriSpeech tree to one fairseq-ready folder per client.

It sits above ``data`` (scan, partition, manifests), ``targets`` (features, k-means, labels)
and ``federation`` (federated k-means through Flower), which never import each other upward.

Writes, under ``out``::

    utterances.tsv        every usable utterance (id, speaker, chapter, subset, path, samples, seconds)
    report.json           skipped and converted files with reasons, chapters without transcript,
                          utterances left out of fine-tuning (no transcript, unknown characters)
                          (the scan reads headers; audio that does not decode is found, dropped
                          and reported where each client makes its features)
    partition.json        clients -> speakers, hours, utterance counts
    clients/client_XXX/{train,valid}.tsv                  fairseq manifests
    clients/client_XXX/labels/{train,valid}.km, dict.km.txt, labels.json
    clients/client_XXX/finetune/{train,valid}.{tsv,ltr,wrd}, dict.ltr.txt   CTC fine-tuning: the utterances
                          with a transcript, their letters and words (``data.transcripts``)
    kmeans/               the codebook(s); federated: inertia per Lloyd step (metrics.jsonl, tb/)
    prepare.json          settings and label rate; written last, so its presence means complete

Every file is written atomically. A run first removes ``prepare.json`` and the clients'
old labels, so an interrupted run never leaves labels that belong to other manifests;
running again redoes the preparation cleanly.
"""

import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Set, Tuple

from fedhubert_plugin.codebooks import run_federated_kmeans, run_local_kmeans
from fedhubert_plugin.configs import PrepareConfig
from fedhubert_plugin.data.manifest import write_manifest
from fedhubert_plugin.data.partition import leave_out_small_clients, partition_utterances, split_train_valid
from fedhubert_plugin.data.scan import ScanReport, Utterance, scan_librispeech
from fedhubert_plugin.data.transcripts import write_finetune_labels
from fedhubert_plugin.federation.nodes import client_name
from fedhubert_plugin.files import atomic_write_json, atomic_write_text
from fedhubert_plugin.targets import KMEANS_MODES, LABELS_META
from fedhubert_plugin.targets.features import FeatureExtractor, feature_extractor
from fedhubert_plugin.targets.labels import (
    FEATURES_DIR,
    remove_cached_features,
    unusable_utterances,
)

logger = logging.getLogger(__name__)


@dataclass
class PrepareSummary:
    """What prepare made: per-client rows of the summary table and the k-means outcome."""

    clients: Dict[str, Dict] = field(default_factory=dict)
    usable_utterances: int = 0
    skipped: int = 0
    converted: int = 0
    label_rate: int = 0
    kmeans_inertia_per_frame: float = 0.0
    left_out: int = 0  # clients with too few usable utterances to train and validate (report.json says why)
    finetune_utterances: int = 0  # usable utterances with a transcript: each client's finetune/ folder


def write_utterance_table(path: Path, utterances: List[Utterance]) -> None:
    header = "id\tspeaker\tchapter\tsubset\tpath\tsamples\tseconds"
    rows = [f"{u.id}\t{u.speaker}\t{u.chapter}\t{u.subset}\t{u.path}\t{u.samples}\t{u.seconds:.3f}" for u in utterances]
    atomic_write_text(path, "\n".join([header] + rows) + "\n")


def clear_previous_run(out: Path, keep: List[str]) -> None:
    """Remove every client's labels and half-written files, and client folders not in ``keep``.

    Feature caches stay: each is reused only if made from the same manifest and extractor.
    """
    clients_dir = out / "clients"
    if clients_dir.is_dir():
        for folder in clients_dir.iterdir():
            if folder.name not in keep:
                shutil.rmtree(folder)
            else:
                shutil.rmtree(folder / "labels", ignore_errors=True)
                for partial in folder.glob(f"{FEATURES_DIR}/.*.tmp"):
                    partial.unlink()


def split_summary(utterances: List[Utterance]) -> Dict:
    return {"utterances": len(utterances), "hours": round(sum(u.seconds for u in utterances) / 3600, 4)}


def check_disk_space(out: Path, utterances: List[Utterance], extractor: FeatureExtractor) -> None:
    """Stop before any feature is made when ``out``'s disk cannot hold the clients' feature caches."""
    hours = sum(u.seconds for u in utterances) / 3600
    per_hour = extractor.label_rate * 3600 * extractor.dim * 4  # float32 frames
    cached = sum(f.stat().st_size for f in out.glob(f"clients/*/{FEATURES_DIR}/*.f32"))
    need, free = hours * per_hour - cached, shutil.disk_usage(out).free
    logger.info(
        "%.2f h of audio: the feature caches take about %.2f GB (%.0f MB per hour)", hours, need / 1e9, per_hour / 1e6
    )
    if need > free:
        raise RuntimeError(
            f"{out} has {free / 1e9:.1f} GB free, but the clients' {extractor.name} feature caches need about "
            f"{need / 1e9:.1f} GB for {hours:.1f} h of audio ({per_hour / 1e6:.0f} MB per hour) until the labels "
            "are written; free space there or pass an --out on a larger disk"
        )


def write_client_manifests(cfg: PrepareConfig, clients: Dict[str, List[Utterance]]) -> Dict[str, Dict]:
    """Each client's ``train.tsv`` and ``valid.tsv``; returns its speakers and utterances per split."""
    root = Path(cfg.librispeech_root).resolve()
    splits_of = {}
    for index, (name, client_utts) in enumerate(clients.items()):
        splits_of[name] = split_train_valid(client_utts, cfg.valid_fraction, cfg.seed + index)
        for split, split_utts in splits_of[name].items():
            write_manifest(
                cfg.out / "clients" / name / f"{split}.tsv",
                root,
                [(os.path.relpath(u.path, root), u.samples) for u in split_utts],
            )
    return splits_of


def report_unusable(folders: List[Path], utterances: List[Utterance], report: ScanReport) -> List[Utterance]:
    """Add the utterances the clients' feature extraction could not decode to the report; the others."""
    unusable = [row for folder in folders for row in unusable_utterances(folder)]
    if not unusable:
        return utterances
    for row in unusable:
        logger.warning("skipping %s: %s", row["path"], row["reason"])
        report.skipped.append({"path": row["path"], "reason": row["reason"]})
    dropped = {Path(row["path"]).resolve() for row in unusable}
    return [u for u in utterances if Path(u.path).resolve() not in dropped]


def usable_splits(splits: Dict[str, List[Utterance]], usable_paths: Set[str]) -> Dict[str, List[Utterance]]:
    """One client's ``splits`` without the utterances its feature extraction could not decode."""
    return {split: [u for u in split_utts if u.path in usable_paths] for split, split_utts in splits.items()}


def write_partition(cfg: PrepareConfig, splits_of: Dict[str, Dict], usable_paths: Set[str]) -> Dict[str, Dict]:
    """``partition.json``: per client its speakers, and utterances and hours per split (of the usable ones)."""
    clients = {}
    for name, splits in splits_of.items():
        splits = usable_splits(splits, usable_paths)
        clients[name] = {
            "speakers": sorted({u.speaker for split_utts in splits.values() for u in split_utts}),
            **{split: split_summary(split_utts) for split, split_utts in splits.items()},
        }
    atomic_write_json(
        cfg.out / "partition.json",
        {"method": cfg.partition, "seed": cfg.seed, "alpha": cfg.alpha, "clients": clients},
    )
    return clients


def write_finetune_data(cfg: PrepareConfig, splits_of: Dict[str, Dict], usable_paths: Set[str]) -> Tuple[int, List]:
    """Each client's ``finetune/`` folder from its usable utterances; how many it holds in all, and the
    utterances left out of fine-tuning with the reason (each logged)."""
    total, left_out = 0, []
    for name, splits in splits_of.items():
        usable = usable_splits(splits, usable_paths)
        counts, client_left_out = write_finetune_labels(cfg.librispeech_root, cfg.out / "clients" / name, usable)
        total, left_out = total + sum(counts.values()), left_out + client_left_out
    for row in left_out:
        logger.info("not for fine-tuning: %s (%s)", row["path"], row["reason"])
    return total, left_out


def finish_labels(cfg: PrepareConfig, folders: List[Path], extractor: FeatureExtractor) -> None:
    """Each client's ``labels.json`` (what its labels were made with); its feature cache, no longer needed, goes."""
    labels_meta = {
        "label_rate": extractor.label_rate,
        "features": cfg.features,
        "kmeans": cfg.kmeans,
        "n_clusters": cfg.n_clusters,
        **({"checkpoint": cfg.checkpoint, "layer": cfg.layer} if cfg.features == "checkpoint" else {}),
    }
    for folder in folders:
        atomic_write_json(folder / "labels" / LABELS_META, labels_meta)
        remove_cached_features(folder)


def partition_clients(cfg: PrepareConfig, utterances: list) -> tuple[list[list], list[dict]]:
    """The clients' utterances, and the clients left out for too few utterances (each logged)."""
    partition, left_out = leave_out_small_clients(
        partition_utterances(utterances, cfg.num_clients, cfg.partition, cfg.seed, cfg.alpha), cfg.partition
    )
    for client in left_out:
        logger.warning("leaving out the client of speakers %s: %s", ", ".join(client["speakers"]), client["reason"])
    return partition, left_out


def prepare(cfg: PrepareConfig) -> PrepareSummary:
    """Scan, partition, write manifests, learn k-means and write labels for every client."""
    start = time.monotonic()
    preset = feature_extractor(cfg.features, cfg.checkpoint, cfg.layer)  # fails early on a bad choice
    if cfg.kmeans not in KMEANS_MODES:
        raise ValueError(f"unknown --kmeans {cfg.kmeans!r}; choose one of {', '.join(KMEANS_MODES)}")
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "prepare.json").unlink(missing_ok=True)  # the completion marker: written again last
    utterances, report = scan_librispeech(
        cfg.librispeech_root, cfg.subsets, cfg.out / "converted", cfg.min_seconds, cfg.workers
    )
    check_disk_space(cfg.out, utterances, preset)
    partition, left_out = partition_clients(cfg, utterances)
    utterances = [u for client in partition for u in client]  # a left-out client's utterances are in no manifest
    names = [client_name(i) for i in range(len(partition))]  # --num-clients 0: one per speaker
    clear_previous_run(cfg.out, keep=names)
    splits_of = write_client_manifests(cfg, dict(zip(names, partition)))

    folders = [cfg.out / "clients" / name for name in names]
    kmeans = run_federated_kmeans(cfg, len(names)) if cfg.kmeans == "federated" else run_local_kmeans(cfg, folders)
    usable = report_unusable(folders, utterances, report)
    write_utterance_table(cfg.out / "utterances.tsv", usable)
    finetune_utterances, not_for_finetuning = write_finetune_data(cfg, splits_of, {u.path for u in usable})
    report_json = {**asdict(report), "usable_utterances": len(usable), "left_out_clients": left_out}
    atomic_write_json(cfg.out / "report.json", {**report_json, "left_out_of_finetuning": not_for_finetuning})
    summary = PrepareSummary(
        clients=write_partition(cfg, splits_of, {u.path for u in usable}),
        usable_utterances=len(usable),
        skipped=len(report.skipped),
        converted=len(report.converted),
        label_rate=preset.label_rate,
        kmeans_inertia_per_frame=kmeans,
        left_out=len(left_out),
        finetune_utterances=finetune_utterances,
    )
    finish_labels(cfg, folders, preset)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    atomic_write_json(
        cfg.out / "prepare.json",
        {
            **settings,
            "num_clients": len(names),
            "subsets": list(cfg.subsets),
            "label_rate": preset.label_rate,
            "feature_dim": preset.dim,
        },
    )
    hours, minutes = sum(u.seconds for u in usable) / 3600, (time.monotonic() - start) / 60
    logger.info("prepared %.2f h of audio in %.1f min (%.1f h per minute)", hours, minutes, hours / max(minutes, 1e-9))
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
        f"{summary.usable_utterances} usable utterances, {summary.skipped} skipped, {summary.converted} converted, "
        f"{summary.left_out} client(s) left out (see report.json); {summary.finetune_utterances} with a transcript "
        f"for fine-tuning; label rate {summary.label_rate} Hz; "
        f"k-means inertia per frame {summary.kmeans_inertia_per_frame:.3f}"
    )
    return "\n".join(lines)
