"""Partitions on a synthetic utterance table, and what federated k-means statistics reveal."""

import numpy as np
import pytest

from fedhubert_plugin.data.partition import leave_out_small_clients, partition_utterances, split_train_valid
from fedhubert_plugin.data.scan import Utterance
from fedhubert_plugin.targets.kmeans import cluster_statistics, lloyd_step


def table(speakers=12, seed=0):
    rng = np.random.default_rng(seed)
    utts = []
    for s in range(speakers):
        for u in range(int(rng.integers(3, 30))):
            utts.append(
                Utterance(
                    f"{s}-1-{u:04d}", str(s), "1", "train", f"/a/{s}-1-{u:04d}.flac", int(rng.integers(16000, 300000))
                )
            )
    return utts


def hours(client):
    return sum(u.samples for u in client) / 16000 / 3600


def test_speaker_partition_is_disjoint_balanced_by_duration_and_deterministic():
    utts = table()
    clients = partition_utterances(utts, 4, "speaker", seed=3)
    speaker_sets = [{u.speaker for u in c} for c in clients]
    assert sum(map(len, speaker_sets)) == len(set().union(*speaker_sets)) == 12
    assert sorted(u.id for c in clients for u in c) == sorted(u.id for u in utts)
    totals = [hours(c) for c in clients]
    assert max(totals) / min(totals) < 1.3
    assert [[u.id for u in c] for c in clients] == [
        [u.id for u in c] for c in partition_utterances(utts, 4, "speaker", seed=3)
    ]


def test_iid_and_dirichlet_place_every_utterance_once():
    utts = table()
    for method, kwargs in (("iid", {}), ("dirichlet", {"alpha": 0.3})):
        clients = partition_utterances(utts, 3, method, seed=1, **kwargs)
        assert sorted(u.id for c in clients for u in c) == sorted(u.id for u in utts)
    iid = partition_utterances(utts, 3, "iid", seed=1)
    assert all(len({u.speaker for u in c}) > 6 for c in iid)  # speakers spread over clients
    skewed = partition_utterances(utts, 3, "dirichlet", seed=1, alpha=0.05)
    speakers_on_one_client = sum(1 for s in range(12) if sum(any(u.speaker == str(s) for u in c) for c in skewed) == 1)
    assert speakers_on_one_client >= 8  # small alpha: most speakers live on one client


def test_zero_clients_make_one_client_per_speaker():
    clients = partition_utterances(table(), 0, "speaker")
    assert len(clients) == 12 and all(len({u.speaker for u in c}) == 1 for c in clients)
    with pytest.raises(ValueError, match="0: one client per speaker, with --partition speaker"):
        partition_utterances(table(), 0, "iid")


def test_too_few_speakers_names_the_fix():
    with pytest.raises(ValueError, match="--num-clients 3 or fewer"):
        partition_utterances(table(speakers=3), 5, "speaker")


def test_valid_split_has_both_sides():
    utts = table()[:5]
    split = split_train_valid(utts, 0.1, seed=0)
    assert len(split["valid"]) == 1 and len(split["train"]) == 4


def test_small_clusters_are_withheld_so_no_single_frame_is_sent():
    frames = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.1, 0.1], [0.05, 0.05], [9.0, 9.0]], dtype=np.float32)
    codebook = np.array([[0.0, 0.0], [9.0, 9.0]], dtype=np.float32)
    sums, counts, inertia = cluster_statistics([frames[:4], frames[4:]], codebook, min_count=2)
    assert counts.tolist() == [5, 0] and np.allclose(sums[1], 0)  # the lone frame at (9, 9) stays home
    assert np.allclose(sums[0], frames[:5].sum(0))
    assert np.allclose(lloyd_step(codebook, sums, counts), [[0.05, 0.05], [9.0, 9.0]])
    assert inertia == pytest.approx(float(((frames[:5] - 0) ** 2).sum()))


def test_clients_too_small_to_validate_are_left_out_with_the_reason_unless_none_is_left():
    utts = table(speakers=3)
    clients = [utts[:1], utts[1:5], utts[5:]]
    kept, left_out = leave_out_small_clients(clients, "speaker")
    assert kept == clients[1:]
    assert left_out == [
        {
            "speakers": [utts[0].speaker],
            "utterances": [utts[0].path],
            "reason": "1 usable utterance(s) with --partition speaker: a client needs 2 (one train, one valid)",
        }
    ]
    with pytest.raises(ValueError, match="no client got the 2 usable utterances it needs"):
        leave_out_small_clients([utts[:1], []], "dirichlet")
