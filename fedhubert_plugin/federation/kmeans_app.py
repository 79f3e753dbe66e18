"""Federated k-means over Flower: one shared codebook, only per-cluster sums and counts move.

Messages (all ``query``):

- ``query.kmeans_stats`` without a codebook: the client fits MiniBatchKMeans on its own
  frames and returns the sums and counts of those local clusters (the server's start);
  with a codebook: the sums and counts of its frames under that codebook (a Lloyd step).
- ``query.kmeans_labels``: the client labels its train and valid splits with the final
  codebook, writes ``labels/`` and deletes its cached features.

Features are computed by the client from its own audio, cached in its folder while the
k-means runs, and never sent.
"""
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedhubert_plugin.data.features import FeatureExtractor, feature_extractor, manifest_features
from fedhubert_plugin.data.kmeans import (
    cluster_statistics,
    local_codebook,
    lloyd_step,
    nearest,
    pooled_codebook,
    write_dictionary,
    write_labels,
)
from fedhubert_plugin.files import atomic_save_array
from fedhubert_plugin.federation.nodes import client_folder, client_reply

logger = logging.getLogger(__name__)

FEATURES_DIR = "features"


def cached_features(folder: Path, split: str, preset: FeatureExtractor) -> Tuple[np.ndarray, np.ndarray]:
    """A client's features of one split, computed on first use and kept until labelling."""
    feats_path = folder / FEATURES_DIR / f"{split}.{preset.name}.npy"
    lengths_path = folder / FEATURES_DIR / f"{split}.{preset.name}.lengths.npy"
    if not (feats_path.is_file() and lengths_path.is_file()):
        feats, lengths = manifest_features(folder / f"{split}.tsv", preset, desc=f"{folder.name} {split} {preset.name}")
        atomic_save_array(feats_path, feats)
        atomic_save_array(lengths_path, lengths)
    return np.load(feats_path, mmap_mode="r"), np.load(lengths_path)


def label_client(folder: Path, codebook: np.ndarray, preset: FeatureExtractor, dictionary_size: int) -> Dict[str, int]:
    """Write ``labels/{train,valid}.km`` and a ``dictionary_size`` ``labels/dict.km.txt``; drop the cached features."""
    frames = {}
    for split in ("train", "valid"):
        feats, lengths = cached_features(folder, split, preset)
        labels, _ = nearest(feats, codebook)
        write_labels(folder / "labels" / f"{split}.km", labels, lengths)
        frames[split] = int(lengths.sum())
    write_dictionary(folder / "labels" / "dict.km.txt", dictionary_size)
    shutil.rmtree(folder / FEATURES_DIR, ignore_errors=True)
    return frames


def features_of(config: ConfigRecord) -> FeatureExtractor:
    """The run's feature extractor (for checkpoint features, the model is read from this node's disk)."""
    return feature_extractor(str(config["features"]), str(config["checkpoint"]), int(config["layer"]))


client_app = ClientApp()


@client_app.query("kmeans_stats")
def kmeans_stats(msg: Message, context: Context) -> Message:
    """Per-cluster sums and counts of this client's train frames."""
    config = msg.content["config"]
    folder = client_folder(context, config)
    feats, _ = cached_features(folder, "train", features_of(config))
    min_count = int(config["min-count"])
    if "codebook" in msg.content:
        codebook = msg.content["codebook"]["centroids"].numpy()
    else:
        k = int(min(int(config["n-clusters"]), max(1, len(feats) // min_count)))
        codebook = local_codebook(np.asarray(feats), k, seed=int(config["seed"]), n_init=1)  # Lloyd steps refine it
    sums, counts, inertia = cluster_statistics(feats, codebook, min_count)
    stats = ArrayRecord({"sums": Array(sums), "counts": Array(counts)})
    return client_reply(msg, folder, {"inertia": inertia, "frames": len(feats)}, stats=stats)


@client_app.query("kmeans_labels")
def kmeans_labels(msg: Message, context: Context) -> Message:
    """Label this client's splits with the final codebook."""
    config = msg.content["config"]
    folder = client_folder(context, config)
    codebook = msg.content["codebook"]["centroids"].numpy()
    frames = label_client(folder, codebook, features_of(config), dictionary_size=len(codebook))
    return client_reply(msg, folder, {"train_frames": frames["train"], "valid_frames": frames["valid"]})


@dataclass
class FederatedKMeansSettings:
    """What the server needs to run federated k-means over the prepared clients."""

    data_root: str
    num_clients: int
    n_clusters: int = 100
    features: str = "hubert"
    checkpoint: str = ""
    layer: int = 0
    seed: int = 0
    min_count: int = 5
    max_iter: int = 10
    tol: float = 1e-4
    timeout: float = 3600.0


@dataclass
class FederatedKMeansResult:
    """The shared codebook and how the pooled inertia went, step by step."""

    codebook: Optional[np.ndarray] = None
    inertia: List[float] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0


def ask_all(grid: Grid, nodes: List[int], message_type: str, content: RecordDict, timeout: float) -> List[Message]:
    """Send one message to every node; return the replies sorted by client name, or fail naming who did not answer."""
    messages = [Message(content, dst_node_id=node, message_type=message_type) for node in nodes]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    errors = [f"node {r.metadata.src_node_id}: {r.error.reason}" for r in replies if r.has_error()]
    if errors or len(replies) != len(nodes):
        raise RuntimeError(
            f"federated k-means needs every client; {message_type} got {len(replies) - len(errors)} of "
            f"{len(nodes)} answers. " + "; ".join(errors)
        )
    return sorted(replies, key=lambda r: str(r.content["client"]["name"]))


def with_codebook(config: ConfigRecord, codebook: np.ndarray) -> RecordDict:
    """Message content: the run's config and the current codebook."""
    return RecordDict({"config": config, "codebook": ArrayRecord({"centroids": Array(codebook)})})


def wait_for_nodes(grid: Grid, count: int, timeout: float) -> List[int]:
    """The ids of ``count`` connected nodes, waiting up to ``timeout`` seconds for them."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes[:count]
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {count} clients connected within {timeout:.0f} s")
        time.sleep(0.5)


def federated_kmeans_server_app(settings: FederatedKMeansSettings, result: FederatedKMeansResult) -> ServerApp:
    """A ServerApp that runs federated k-means and fills ``result``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        start = time.monotonic()
        config = ConfigRecord(
            {
                "data-root": settings.data_root,
                "features": settings.features,
                "checkpoint": settings.checkpoint,
                "layer": settings.layer,
                "n-clusters": settings.n_clusters,
                "min-count": settings.min_count,
                "seed": settings.seed,
            }
        )
        nodes = wait_for_nodes(grid, settings.num_clients, settings.timeout)
        replies = ask_all(grid, nodes, "query.kmeans_stats", RecordDict({"config": config}), settings.timeout)
        codebook = pooled_codebook(
            [r.content["stats"]["sums"].numpy() for r in replies],
            [r.content["stats"]["counts"].numpy() for r in replies],
            settings.n_clusters,
            settings.seed,
        )
        result.frames = int(sum(r.content["metrics"]["frames"] for r in replies))
        for step in range(settings.max_iter):
            replies = ask_all(grid, nodes, "query.kmeans_stats", with_codebook(config, codebook), settings.timeout)
            sums = np.sum([r.content["stats"]["sums"].numpy() for r in replies], axis=0)
            counts = np.sum([r.content["stats"]["counts"].numpy() for r in replies], axis=0)
            result.inertia.append(float(sum(r.content["metrics"]["inertia"] for r in replies)))
            logger.info("federated k-means step %d: inertia per frame %.4f", step, result.inertia[-1] / result.frames)
            codebook = lloyd_step(codebook, sums, counts)
            if len(result.inertia) > 1 and result.inertia[-2] - result.inertia[-1] <= settings.tol * result.inertia[-2]:
                break
        ask_all(grid, nodes, "query.kmeans_labels", with_codebook(config, codebook), settings.timeout)
        result.codebook = codebook
        result.seconds = time.monotonic() - start

    return app
