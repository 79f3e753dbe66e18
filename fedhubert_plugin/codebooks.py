"""Learning the k-means codebooks of ``fedhubert prepare``: one shared codebook through Flower (federated: only
per-cluster sums and counts leave a client), or one per client (local, the original design)."""

import json
import logging
from pathlib import Path
from typing import List

from tensorboardX import SummaryWriter

from fedhubert_plugin.configs import PrepareConfig
from fedhubert_plugin.federation.simulation import ray_backend_config, simulate
from fedhubert_plugin.files import atomic_save_array, atomic_write_json, atomic_write_text
from fedhubert_plugin.kmeans_app import (
    FederatedKMeansResult,
    FederatedKMeansSettings,
    client_app,
    federated_kmeans_server_app,
)
from fedhubert_plugin.targets.features import feature_extractor
from fedhubert_plugin.targets.kmeans import SAMPLE_FRAMES, adaptive_clusters, cluster_statistics, local_codebook
from fedhubert_plugin.targets.labels import cached_features, label_client

logger = logging.getLogger(__name__)


def run_local_kmeans(cfg: PrepareConfig, folders: List[Path]) -> float:
    """One codebook per client (the original design), K shrunk when a client has few frames."""
    preset = feature_extractor(cfg.features, cfg.checkpoint, cfg.layer)
    inertia, frames = 0.0, 0
    for folder in folders:
        features = cached_features(folder, "train", preset, cfg.workers)
        sample = features.sample(SAMPLE_FRAMES, cfg.seed)
        k = adaptive_clusters(len(sample), cfg.n_clusters)
        codebook = local_codebook(sample, k, seed=cfg.seed)
        inertia += cluster_statistics(features.chunks(), codebook, min_count=0)[2]
        frames += features.frames
        atomic_save_array(cfg.out / "kmeans" / f"{folder.name}.npy", codebook)
        label_client(folder, codebook, preset, cfg.n_clusters, cfg.workers)
        logger.info("local k-means %s: %d clusters on %d of %d frames", folder.name, k, len(sample), features.frames)
    return inertia / frames


def run_federated_kmeans(cfg: PrepareConfig, num_clients: int) -> float:
    """One shared codebook through Flower (simulation); only per-cluster sums and counts move.

    The ``workers`` cores are shared out: clients run side by side, each with an equal share.
    """
    cpus_per_client = max(1, cfg.workers // min(num_clients, cfg.workers))
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
        threads=cpus_per_client,
    )
    result = FederatedKMeansResult()
    simulate(
        federated_kmeans_server_app(settings, result),
        client_app,
        num_clients,
        ray_backend_config(num_cpus_per_client=cpus_per_client),
    )
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
