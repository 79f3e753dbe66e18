"""What a layer knows about who speaks: a frame-level linear speaker classifier (scikit-learn's logistic regression
on standardised features) fitted on half of each speaker's utterances and scored on the other half."""

from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

FIT_FRAMES = 20_000  # frames the classifier is fitted on at most (a random, seeded subset)


def speaker_of(path: Path) -> str:
    """The speaker of a LibriSpeech-layout utterance (``SPEAKER-CHAPTER-UTTERANCE.flac``)."""
    return Path(path).name.split("-")[0]


def halves(audio: Sequence[Path]) -> Tuple[List[int], List[int]]:
    """Utterance indices to fit on and to score on: each speaker's utterances, in name order, taken in turn."""
    fit, score, seen = [], [], {}
    for index in sorted(range(len(audio)), key=lambda i: Path(audio[i]).name):
        speaker = speaker_of(audio[index])
        (fit if seen.get(speaker, 0) % 2 == 0 else score).append(index)
        seen[speaker] = seen.get(speaker, 0) + 1
    return fit, score


def frames_of(features: Sequence[np.ndarray], audio: Sequence[Path], indices: List[int]) -> Tuple[np.ndarray, list]:
    """The frames of the utterances ``indices``, each labelled with its speaker."""
    stacked = np.concatenate([features[i] for i in indices])
    return stacked, [speaker_of(audio[i]) for i in indices for _ in range(len(features[i]))]


def speaker_accuracy(features: Sequence[np.ndarray], audio: Sequence[Path], seed: int = 0) -> float:
    """Frame accuracy of the speaker classifier on ``features`` (one matrix per utterance of ``audio``): fitted on
    one half of each speaker's utterances (``FIT_FRAMES`` at most), scored on the other half."""
    fit, score = halves(audio)
    if not score:
        raise ValueError("the speaker probe needs two utterances of a speaker at least")
    x_fit, y_fit = frames_of(features, audio, fit)
    if len(y_fit) > FIT_FRAMES:
        keep = np.sort(np.random.default_rng(seed).choice(len(y_fit), size=FIT_FRAMES, replace=False))
        x_fit, y_fit = x_fit[keep], [y_fit[i] for i in keep]
    x_score, y_score = frames_of(features, audio, score)
    scaler = StandardScaler().fit(x_fit)
    classifier = LogisticRegression(max_iter=300, random_state=seed).fit(scaler.transform(x_fit), y_fit)
    return float(np.mean(classifier.predict(scaler.transform(x_score)) == np.array(y_score)))
