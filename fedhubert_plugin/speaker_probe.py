"""What a layer knows about who speaks: a frame-level linear speaker classifier (scikit-learn's logistic regression
on standardised features) fitted on half of each speaker's utterances and scored on the other half."""

from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from fedhubert_plugin.linear_probe import Frames, linear_accuracy, standardise, subsample

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


def frames_of(features: Sequence[np.ndarray], audio: Sequence[Path], indices: List[int]) -> Frames:
    """The frames of the utterances ``indices``, each labelled with its speaker."""
    stacked = np.concatenate([features[i] for i in indices])
    return stacked, [speaker_of(audio[i]) for i in indices for _ in range(len(features[i]))]


def speaker_accuracy(features: Sequence[np.ndarray], audio: Sequence[Path], seed: int = 0) -> float:
    """Frame accuracy of the speaker classifier on ``features`` (one matrix per utterance of ``audio``): fitted on
    one half of each speaker's utterances (``FIT_FRAMES`` at most), scored on the other half."""
    fit, score = halves(audio)
    if not score:
        raise ValueError("the speaker probe needs two utterances of a speaker at least")
    x_fit, y_fit = subsample(frames_of(features, audio, fit), FIT_FRAMES, seed)
    x_score, y_score = frames_of(features, audio, score)
    x_fit, x_score = standardise(x_fit, x_score)
    return linear_accuracy((x_fit, y_fit), (x_score, y_score), seed)
