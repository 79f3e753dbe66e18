"""Federated k-means over Flower: one shared codebook, only per-cluster sums and counts move.

Messages (all ``query``):

- ``query.kmeans_stats`` without a codebook: the client fits MiniBatchKMeans on a sample of
  its own frames (about ``SAMPLE_FRAMES`` at most) and returns the sums and counts of those
  local clusters (the server's start); with a codebook: the sums and counts of its frames
  under that codebook (a Lloyd step).
- ``query.kmeans_labels``: the client labels its train and valid splits with the final
  codebook and writes ``labels/``.

Features are computed by the client from its own audio, cached in its folder until
``fedhubert prepare`` ends (so that a killed run resumes), and never sent.
"""

import logging
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedhubert_plugin import console
from fedhubert_plugin.federation.nodes import client_folder
from fedhubert_plugin.federation.server.grid import wait_for_nodes
from fedhubert_plugin.federation.wire import CONFIG, METRICS, client_of, client_reply, config_record, from_config_record
from fedhubert_plugin.targets.features import FeatureExtractor, feature_extractor
from fedhubert_plugin.targets.kmeans import (
    SAMPLE_FRAMES,
    cluster_statistics,
    lloyd_step,
    local_codebook,
    pooled_codebook,
)
from fedhubert_plugin.targets.labels import cached_features, label_client

logger = logging.getLogger(__name__)

# records of the k-means messages: the codebook the server sends, the statistics a client returns
CODEBOOK, CENTROIDS = "codebook", "centroids"
STATS, SUMS, COUNTS = "stats", "sums", "counts"


@dataclass
class FederatedKMeansSettings:
    """What the server needs to run federated k-means over the prepared clients (and sends them as config)."""

    data_root: str
    num_clients: int = 1
    n_clusters: int = 100
    features: str = "hubert"
    checkpoint: str = ""
    layer: int = 0
    seed: int = 0
    min_count: int = 5
    max_iter: int = 10
    tol: float = 1e-4
    timeout: float = 3600.0
    threads: int = 1  # a client's feature extraction threads


@dataclass
class FederatedKMeansResult:
    """The shared codebook and how the pooled inertia went, step by step."""

    codebook: Optional[np.ndarray] = None
    inertia: List[float] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0


def features_of(settings: FederatedKMeansSettings) -> FeatureExtractor:
    """The run's feature extractor (for checkpoint features, the model is read from this node's disk)."""
    return feature_extractor(settings.features, settings.checkpoint, settings.layer)


client_app = ClientApp()
console.apply()  # this Ray actor or ClientApp process follows the console choice of the command that started it


@client_app.query("kmeans_stats")
def kmeans_stats(msg: Message, context: Context) -> Message:
    """Per-cluster sums and counts of this client's train frames."""
    settings = from_config_record(FederatedKMeansSettings, msg.content[CONFIG])
    folder = client_folder(context, settings.data_root)
    start = time.monotonic()
    extractor = features_of(settings)
    features = cached_features(folder, "train", extractor, settings.threads)
    metrics = {"frames": features.frames, "hours": features.frames / extractor.label_rate / 3600}
    if CODEBOOK in msg.content:
        codebook = msg.content[CODEBOOK][CENTROIDS].numpy()
    else:
        sample = features.sample(SAMPLE_FRAMES, settings.seed)
        k = int(min(settings.n_clusters, max(1, len(sample) // settings.min_count)))
        codebook = local_codebook(sample, k, seed=settings.seed, n_init=1)  # Lloyd steps refine it
    sums, counts, inertia = cluster_statistics(features.chunks(), codebook, settings.min_count)
    stats = ArrayRecord({SUMS: Array(sums), COUNTS: Array(counts)})
    metrics.update(inertia=inertia, seconds=time.monotonic() - start)
    return client_reply(msg, folder, metrics, **{STATS: stats})


@client_app.query("kmeans_labels")
def kmeans_labels(msg: Message, context: Context) -> Message:
    """Label this client's splits with the final codebook."""
    settings = from_config_record(FederatedKMeansSettings, msg.content[CONFIG])
    folder = client_folder(context, settings.data_root)
    codebook = msg.content[CODEBOOK][CENTROIDS].numpy()
    frames = label_client(folder, codebook, features_of(settings), len(codebook), settings.threads)
    return client_reply(msg, folder, {"train_frames": frames["train"], "valid_frames": frames["valid"]})


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
    return sorted(replies, key=client_of)


def log_throughput(replies: List[Message], seconds: float) -> None:
    """How fast the clients made their features and local codebooks: per client at DEBUG, in all at INFO."""
    hours = 0.0
    for reply in replies:
        metrics = reply.content[METRICS]
        hours += metrics["hours"]
        logger.debug("%s: %.2f h of train audio in %.1f s", client_of(reply), metrics["hours"], metrics["seconds"])
    logger.info(
        "%d clients made the features of %.2f h of train audio in %.0f s (%.1f h per minute)",
        len(replies),
        hours,
        seconds,
        60 * hours / max(seconds, 1e-9),
    )


def with_codebook(settings: FederatedKMeansSettings, codebook: np.ndarray) -> RecordDict:
    """Message content: the run's settings and the current codebook."""
    return RecordDict({CONFIG: config_record(settings), CODEBOOK: ArrayRecord({CENTROIDS: Array(codebook)})})


def federated_kmeans_server_app(settings: FederatedKMeansSettings, result: FederatedKMeansResult) -> ServerApp:
    """A ServerApp that runs federated k-means and fills ``result``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        start = time.monotonic()
        nodes = wait_for_nodes(grid, settings.num_clients, settings.timeout)[: settings.num_clients]
        replies = ask_all(
            grid, nodes, "query.kmeans_stats", RecordDict({CONFIG: config_record(settings)}), settings.timeout
        )
        codebook = pooled_codebook(
            [r.content[STATS][SUMS].numpy() for r in replies],
            [r.content[STATS][COUNTS].numpy() for r in replies],
            settings.n_clusters,
            settings.seed,
        )
        result.frames = int(sum(r.content[METRICS]["frames"] for r in replies))
        log_throughput(replies, time.monotonic() - start)
        for step in range(settings.max_iter):
            replies = ask_all(grid, nodes, "query.kmeans_stats", with_codebook(settings, codebook), settings.timeout)
            sums = np.sum([r.content[STATS][SUMS].numpy() for r in replies], axis=0)
            counts = np.sum([r.content[STATS][COUNTS].numpy() for r in replies], axis=0)
            result.inertia.append(float(sum(r.content[METRICS]["inertia"] for r in replies)))
            logger.debug("federated k-means step %d: inertia per frame %.4f", step, result.inertia[-1] / result.frames)
            codebook = lloyd_step(codebook, sums, counts)
            if len(result.inertia) > 1 and result.inertia[-2] - result.inertia[-1] <= settings.tol * result.inertia[-2]:
                break
        ask_all(grid, nodes, "query.kmeans_labels", with_codebook(settings, codebook), settings.timeout)
        result.codebook = codebook
        result.seconds = time.monotonic() - start

    return app
