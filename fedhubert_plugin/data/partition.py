"""Split utterances across federated clients, and each client's share into train and valid.

- ``speaker``: every speaker on exactly one client (non-IID, as sites hold their own
  speakers). Speakers are placed longest first on the client with the least audio so far,
  so clients are balanced by duration, not by utterance count. ``num_clients`` 0: one client
  per speaker, as in cross-device federations where every speaker is a device.
- ``iid``: utterances shuffled and balanced by duration: the IID baseline.
- ``dirichlet``: for each speaker, client shares ``p ~ Dirichlet(alpha)`` and each of its
  utterances goes to a client drawn from ``p``. Small ``alpha`` (0.1) puts most of a
  speaker on one client; large ``alpha`` (100) approaches ``iid``.

All three are deterministic for a seed.
"""

from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

import numpy as np

from fedhubert_plugin.data import PARTITIONS
from fedhubert_plugin.data.scan import Utterance


def greedy_by_duration(groups: List[List[Utterance]], num_clients: int) -> List[List[Utterance]]:
    """Place groups longest first on the client with the least audio so far."""
    clients: List[List[Utterance]] = [[] for _ in range(num_clients)]
    totals = np.zeros(num_clients)
    order = sorted(range(len(groups)), key=lambda i: -sum(u.samples for u in groups[i]))
    for i in order:
        target = int(np.argmin(totals))
        clients[target].extend(groups[i])
        totals[target] += sum(u.samples for u in groups[i])
    return clients


def partition_utterances(
    utterances: Sequence[Utterance], num_clients: int, method: str = "speaker", seed: int = 0, alpha: float = 0.5
) -> List[List[Utterance]]:
    """Assign every utterance to exactly one of ``num_clients`` clients; with the speaker partition, 0 clients
    means one client per speaker (cross-device style)."""
    if num_clients < 1 and not (num_clients == 0 and method == "speaker"):
        raise ValueError("--num-clients must be at least 1 (0: one client per speaker, with --partition speaker)")
    rng = np.random.default_rng(seed)
    by_speaker: Dict[str, List[Utterance]] = defaultdict(list)
    for utt in sorted(utterances, key=lambda u: u.id):
        by_speaker[utt.speaker].append(utt)
    speakers = sorted(by_speaker)
    rng.shuffle(speakers)  # the seed decides ties between speakers of equal duration

    if method == "speaker":
        num_clients = num_clients or len(speakers)
        if len(speakers) < num_clients:
            raise ValueError(
                f"{len(speakers)} speakers cannot fill {num_clients} clients with the speaker partition; "
                f"use --num-clients {len(speakers)} or fewer, or --partition iid/dirichlet"
            )
        clients = greedy_by_duration([by_speaker[s] for s in speakers], num_clients)
    elif method == "iid":
        shuffled = [utt for speaker in speakers for utt in by_speaker[speaker]]
        rng.shuffle(shuffled)
        clients = greedy_by_duration([[u] for u in shuffled], num_clients)
    elif method == "dirichlet":
        clients = [[] for _ in range(num_clients)]
        for speaker in speakers:
            shares = rng.dirichlet(np.full(num_clients, alpha))
            for utt in by_speaker[speaker]:
                clients[int(rng.choice(num_clients, p=shares))].append(utt)
    else:
        raise ValueError(f"unknown partition {method!r}; choose one of {', '.join(PARTITIONS)}")

    for client in clients:
        client.sort(key=lambda u: u.id)
    return clients


def leave_out_small_clients(
    clients: List[List[Utterance]], method: str
) -> Tuple[List[List[Utterance]], List[Dict[str, object]]]:
    """The clients that can train and be validated (2 utterances or more: one train, one valid), and the others
    left out, each with its speakers, utterances and the reason (for ``report.json``). With one client per
    speaker a speaker whose other utterances were unusable is such a client. Raises when no client is left."""
    kept = [client for client in clients if len(client) >= 2]
    left_out = [
        {
            "speakers": sorted({u.speaker for u in client}),
            "utterances": [u.path for u in client],
            "reason": f"{len(client)} usable utterance(s) with --partition {method}: a client needs 2 (one train, "
            "one valid)",
        }
        for client in clients
        if len(client) < 2
    ]
    if not kept:
        raise ValueError(
            f"no client got the 2 usable utterances it needs (one train, one valid) with --partition {method}: "
            f"use fewer clients{' or a larger --alpha' if method == 'dirichlet' else ''}, or more audio"
        )
    return kept, left_out


def split_train_valid(utterances: Sequence[Utterance], valid_fraction: float, seed: int) -> Dict[str, List[Utterance]]:
    """A client's utterances split by utterance: at least one in each of train and valid."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(utterances))
    n_valid = min(len(utterances) - 1, max(1, int(round(valid_fraction * len(utterances)))))
    valid = sorted((utterances[i] for i in order[:n_valid]), key=lambda u: u.id)
    train = sorted((utterances[i] for i in order[n_valid:]), key=lambda u: u.id)
    return {"train": train, "valid": valid}
