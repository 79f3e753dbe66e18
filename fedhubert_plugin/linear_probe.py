"""The parts the phone and speaker probes share: a seeded subset of frames to fit on, standardised features, and the
frame accuracy of scikit-learn's logistic regression."""

from typing import List, Tuple

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

Frames = Tuple[np.ndarray, List[str]]  # features (frames x dimensions) and one label per frame


def subsample(frames: Frames, limit: int, seed: int) -> Frames:
    """At most ``limit`` of the frames (all when ``limit`` is 0), drawn without replacement with ``seed``."""
    features, labels = frames
    if not limit or len(labels) <= limit:
        return frames
    keep = np.sort(np.random.default_rng(seed).choice(len(labels), size=limit, replace=False))
    return features[keep], [labels[i] for i in keep]


def standardise(fit: np.ndarray, score: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Both feature matrices standardised with the mean and deviation of ``fit``."""
    scaler = StandardScaler().fit(fit)
    return scaler.transform(fit), scaler.transform(score)


def linear_accuracy(fit: Frames, score: Frames, seed: int) -> float:
    """Frame accuracy on ``score`` of a logistic regression fitted on ``fit`` (both standardised already)."""
    classifier = LogisticRegression(max_iter=300, random_state=seed).fit(*fit)
    return float(np.mean(classifier.predict(score[0]) == np.array(score[1])))
