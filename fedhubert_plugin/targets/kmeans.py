"""K-means codebooks: the local codebook, the statistics federated k-means exchanges, nearest centroids.

Federated k-means never moves frames. A client sends, per cluster, the sum of its frames
and their count; clusters with fewer than ``min_count`` frames are withheld (a sum of one
frame *is* that frame). The server starts from the count-weighted k-means of the clients'
local centroids (sums / counts) and refines with Lloyd steps on summed statistics.
"""

from typing import Iterable, Sequence, Tuple

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans

FRAMES_PER_CLUSTER = 20  # local k-means: at least this many frames per cluster (adaptive K)
CHUNK = 65_536
SAMPLE_FRAMES = 100_000  # a client's local codebook is fitted on at most about this many frames


def nearest(feats: np.ndarray, codebook: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centroid of every frame, and the squared distance to it."""
    codebook = codebook.astype(np.float32)
    minus_twice = -2 * codebook.T
    c_norm = (codebook**2).sum(1)
    labels = np.empty(len(feats), dtype=np.int64)
    dists = np.empty(len(feats), dtype=np.float64)
    for start in range(0, len(feats), CHUNK):
        x = np.asarray(feats[start : start + CHUNK], dtype=np.float32)
        d = x @ minus_twice  # |x - c|^2 minus |x|^2, which does not change the nearest centroid
        d += c_norm
        idx = d.argmin(1)
        labels[start : start + len(x)] = idx
        best = np.take_along_axis(d, idx[:, None], axis=1)[:, 0] + np.einsum("ij,ij->i", x, x)
        dists[start : start + len(x)] = np.maximum(best, 0)
    return labels, dists


def cluster_statistics(
    chunks: Iterable[np.ndarray], codebook: np.ndarray, min_count: int
) -> Tuple[np.ndarray, np.ndarray, float]:
    """Per-cluster frame sums (float64) and counts over ``chunks`` of frames, withholding clusters under
    ``min_count``; and the inertia."""
    k, dim = codebook.shape
    sums = np.zeros((k, dim), dtype=np.float64)
    counts = np.zeros(k, dtype=np.int64)
    inertia = 0.0
    for feats in chunks:
        labels, dists = nearest(feats, codebook)
        counts += np.bincount(labels, minlength=k)
        sums += np.stack([np.bincount(labels, weights=feats[:, d], minlength=k) for d in range(dim)], axis=1)
        inertia += float(dists.sum())
    withheld = counts < min_count
    sums[withheld] = 0.0
    counts[withheld] = 0
    return sums, counts, inertia


def local_codebook(
    feats: np.ndarray, n_clusters: int, seed: int, n_init: int = 3, batch_size: int = 10_000
) -> np.ndarray:
    """MiniBatchKMeans on one client's frames (the HuBERT recipe's settings but ``n_init``, 20 there)."""
    km = MiniBatchKMeans(
        n_clusters=n_clusters,
        init="k-means++",
        max_iter=100,
        batch_size=batch_size,
        tol=0.0,
        max_no_improvement=100,
        n_init=n_init,
        reassignment_ratio=0.0,
        random_state=seed,
        compute_labels=False,
    )
    return km.fit(feats).cluster_centers_.astype(np.float32)


def adaptive_clusters(n_frames: int, n_clusters: int) -> int:
    """The local mode's cluster count: ``n_clusters``, fewer when a client has few frames."""
    return int(max(2, min(n_clusters, n_frames // FRAMES_PER_CLUSTER)))


def pooled_codebook(sums: Sequence[np.ndarray], counts: Sequence[np.ndarray], n_clusters: int, seed: int) -> np.ndarray:
    """Initial global codebook: k-means of all clients' local centroids, weighted by their counts."""
    sums_all = np.concatenate(sums)
    counts_all = np.concatenate(counts)
    keep = counts_all > 0
    centroids = sums_all[keep] / counts_all[keep, None]
    if len(centroids) < n_clusters:
        raise ValueError(
            f"the clients shared only {len(centroids)} clusters with at least the minimum count; "
            f"use fewer --n-clusters than that, or more audio"
        )
    km = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed)
    return km.fit(centroids, sample_weight=counts_all[keep]).cluster_centers_.astype(np.float32)


def lloyd_step(codebook: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """New centroids from summed statistics; a cluster nobody reported keeps its centroid."""
    new = codebook.astype(np.float64).copy()
    filled = counts > 0
    new[filled] = sums[filled] / counts[filled, None]
    return new.astype(np.float32)
