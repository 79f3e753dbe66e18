"""Fine-tuning labels from LibriSpeech transcripts, written per client and read nowhere else.

Each client folder gets ``finetune/``: ``{train,valid}.tsv`` (its utterances that have a transcript),
``{train,valid}.ltr`` (letters, spaced, with ``|`` closing every word, the format fairseq's ``libri_labels.py``
writes), ``{train,valid}.wrd`` (the words) and ``dict.ltr.txt``. Every client's dictionary lists the same
letters in the same order, since the CTC output layer is averaged across clients and its rows must mean the
same letter everywhere; the counts are the client's own. An utterance without a transcript, or with a
character outside ``ALPHABET``, is left out of fine-tuning only (pretraining keeps it) and reported.
"""

import os
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

from fedhubert_plugin.data import ALPHABET, FINETUNE_DIR, WORD_END
from fedhubert_plugin.data.manifest import write_manifest
from fedhubert_plugin.data.scan import Utterance
from fedhubert_plugin.files import atomic_write_text


def transcript_file(root: Path, utterance: Utterance) -> Path:
    """The ``<speaker>-<chapter>.trans.txt`` holding ``utterance``'s words."""
    chapter = Path(root) / utterance.subset / utterance.speaker / utterance.chapter
    return chapter / f"{utterance.speaker}-{utterance.chapter}.trans.txt"


def read_transcripts(root: Path, utterances: List[Utterance]) -> Dict[str, str]:
    """Utterance id -> words, from the transcript files of the chapters ``utterances`` come from."""
    words: Dict[str, str] = {}
    for path in sorted({transcript_file(root, u) for u in utterances}):
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    utterance_id, _, text = line.strip().partition(" ")
                    words[utterance_id] = " ".join(text.split())
    return words


def letters(words: str) -> str:
    """``"AN OWL"`` -> ``"A N | O W L |"``: a ``.ltr`` line."""
    return " ".join(" ".join(word) + f" {WORD_END}" for word in words.split())


def letter_dictionary(ltr_lines: List[str]) -> str:
    """``dict.ltr.txt``: every letter of ``ALPHABET`` in its order, each with its count in ``ltr_lines``."""
    counts = Counter(symbol for line in ltr_lines for symbol in line.split())
    return "".join(f"{symbol} {counts[symbol]}\n" for symbol in ALPHABET)


def why_not_transcribed(utterance: Utterance, words: Dict[str, str], root: Path) -> str:
    """Why ``utterance`` cannot be fine-tuned on; empty when it can."""
    if utterance.id not in words:
        return f"no transcript in {transcript_file(root, utterance)}"
    outside = sorted(set(words[utterance.id].replace(" ", "")) - set(ALPHABET))
    if outside:
        return f"characters outside the letter dictionary: {''.join(outside)!r}"
    return ""


def write_finetune_labels(
    root: Path, folder: Path, splits: Dict[str, List[Utterance]]
) -> Tuple[Dict[str, int], List[Dict[str, str]]]:
    """``folder/finetune/`` for one client's ``splits``; its utterances per split, and those left out (path,
    reason)."""
    root, out = Path(root).resolve(), Path(folder) / FINETUNE_DIR
    words = read_transcripts(root, [u for split_utts in splits.values() for u in split_utts])
    counts, left_out, ltr_lines = {}, [], []
    for split, split_utts in splits.items():
        kept = []
        for u in split_utts:
            reason = why_not_transcribed(u, words, root)
            if reason:
                left_out.append({"path": u.path, "reason": reason})
            else:
                kept.append(u)
        write_manifest(out / f"{split}.tsv", root, [(os.path.relpath(u.path, root), u.samples) for u in kept])
        lines = [letters(words[u.id]) for u in kept]
        atomic_write_text(out / f"{split}.ltr", "".join(f"{line}\n" for line in lines))
        atomic_write_text(out / f"{split}.wrd", "".join(f"{words[u.id]}\n" for u in kept))
        ltr_lines += lines
        counts[split] = len(kept)
    atomic_write_text(out / "dict.ltr.txt", letter_dictionary(ltr_lines))
    return counts, left_out
