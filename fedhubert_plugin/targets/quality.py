"""How well a label set matches the phones: the HuBERT paper's phone purity, cluster purity and PNMI.

Labels are read as fairseq's ``examples/hubert/measure_teacher_quality.py`` reads them (each
utterance named by its manifest entry's file name), phone alignments as it reads them
(``<utterance id><TAB>ph,ph,...`` at the label rate, stress digits dropped) or from Montreal
Forced Aligner TextGrids (read with praatio, sampled at the label rate), and the measures are
that script's own functions, so the figures are fairseq's:

- phone purity: E over clusters of max over phones p(phone | cluster) (fairseq's "ref pur");
- cluster purity: E over phones of max over clusters p(cluster | phone) ("hyp pur");
- PNMI: I(phone; cluster) / H(phone) ("MI/H(ref)").
"""

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from fairseq.examples.hubert.measure_teacher_quality import (
    comp_joint_prob,
    comp_norm_mutual_info,
    comp_purity,
    read_lab,
    read_phn,
)
from praatio import textgrid

from fedhubert_plugin.files import atomic_write_json
from fedhubert_plugin.targets import LabelQualityConfig
from fedhubert_plugin.targets.labels import SPLITS

SILENCE = "sil"  # the one phone of every frame that no TextGrid interval names (MFA's "", "sil", "sp")


@dataclass
class LabelQuality:
    """The measures of one label set against the phone alignments."""

    phone_purity: float
    cluster_purity: float
    pnmi: float
    phone_entropy: float
    cluster_entropy: float
    frames: int
    utterances: int  # scored: with labels and an alignment
    aligned_without_labels: int  # e.g. utterances that prepare skipped
    labelled_without_alignment: int
    frame_difference: int  # frames by which labels and alignments differed in length, summed


def textgrid_phones(path: Path, label_rate: float) -> List[str]:
    """Phone per frame at ``label_rate`` of a Montreal Forced Aligner TextGrid (its phones tier; a frame takes
    the interval that holds its centre, stress digits dropped, silence as ``SILENCE``)."""
    grid = textgrid.openTextgrid(str(path), includeEmptyIntervals=False)
    tiers = [name for name in grid.tierNames if name.lower().endswith("phones")]
    if not tiers:
        raise ValueError(
            f"{path} has no phones tier (tiers: {', '.join(grid.tierNames)}); give Montreal Forced Aligner "
            "output, whose phone tier is named 'phones' or '<speaker> - phones'"
        )
    centres = (np.arange(int(round(grid.maxTimestamp * label_rate))) + 0.5) / label_rate
    phones = [SILENCE] * len(centres)
    for start, end, label in grid.getTier(tiers[0]).entries:
        first, last = np.searchsorted(centres, [start, end])
        phone = re.sub("[0-9]", "", label.strip())
        phones[first:last] = [SILENCE if phone in ("", "sil", "sp") else phone] * (last - first)
    return phones


def read_alignments(paths: Sequence[Path], label_rate: float = 0) -> Dict[str, List[str]]:
    """Utterance id -> phone per frame, from fairseq-style alignment files (e.g. ``toy/alignments/100hz/*.tsv``)
    or from TextGrids (one per utterance, named after its audio file; sampled at ``label_rate``)."""
    phones: Dict[str, List[str]] = {}
    for path in map(Path, paths):
        if path.suffix.lower() == ".textgrid":
            phones[path.stem] = textgrid_phones(path, label_rate)
        else:
            phones.update(read_phn(str(path)))
    if not phones:
        raise FileNotFoundError(f"no phone alignments in {[str(p) for p in paths]}")
    return phones


def alignment_files(folder: Path, label_rate: float) -> List[Path]:
    """The alignment files for labels at ``label_rate``: ``folder/<rate>hz/*.tsv`` when it exists, else
    ``folder/*.tsv``, else the TextGrids anywhere under ``folder`` (Montreal Forced Aligner's output)."""
    at_rate = Path(folder) / f"{label_rate:g}hz"
    files = sorted((at_rate if at_rate.is_dir() else Path(folder)).glob("*.tsv"))
    files = files or sorted(path for path in Path(folder).rglob("*") if path.suffix.lower() == ".textgrid")
    if not files:
        raise FileNotFoundError(
            f"no alignment files (*.tsv) in {at_rate} or {folder}, and no TextGrids under {folder}: give the folder "
            f"that `fedhubert toy-data` wrote (OUT/alignments), fairseq-style phone alignments at "
            f"{label_rate:g} Hz, or Montreal Forced Aligner's output folder"
        )
    return files


def client_labels(data_root: Path, splits: Sequence[str] = SPLITS) -> Dict[str, List[str]]:
    """Utterance id -> label per frame, of every client of a ``fedhubert prepare`` folder."""
    labels: Dict[str, List[str]] = {}
    for client in sorted((Path(data_root) / "clients").iterdir()):
        for split in splits:
            labels.update(read_lab(str(client / f"{split}.tsv"), str(client / "labels" / f"{split}.km")))
    if not labels:
        raise FileNotFoundError(f"no client labels under {data_root}/clients: run `fedhubert prepare` first")
    return labels


def label_quality(phones: Dict[str, List[str]], labels: Dict[str, List[str]]) -> LabelQuality:
    """fairseq's measures of ``labels`` against ``phones``; utterances that only one side has are counted,
    not scored."""
    scored = [uid for uid in phones if uid in labels]
    if not scored:
        raise ValueError("no utterance has both labels and a phone alignment: are they of the same corpus?")
    joint, _, _, frames, difference, skipped = comp_joint_prob(phones, labels)
    _, phone_purity = comp_purity(joint, axis=0)
    _, cluster_purity = comp_purity(joint, axis=1)
    _, pnmi, _, phone_entropy, cluster_entropy = comp_norm_mutual_info(joint)
    return LabelQuality(
        phone_purity=float(phone_purity),
        cluster_purity=float(cluster_purity),
        pnmi=float(pnmi),
        phone_entropy=float(phone_entropy),
        cluster_entropy=float(cluster_entropy),
        frames=int(frames),
        utterances=len(scored),
        aligned_without_labels=len(skipped),
        labelled_without_alignment=len(labels) - len(scored),
        frame_difference=int(difference),
    )


def labels_of(pairs: Sequence[Sequence[Path]]) -> Dict[str, List[str]]:
    """Utterance id -> label per frame, from (manifest, label file) pairs (e.g. fairseq's simple_kmeans output)."""
    labels: Dict[str, List[str]] = {}
    for manifest, label_file in pairs:
        labels.update(read_lab(str(manifest), str(label_file)))
    return labels


def quality_table(rows: Dict[str, LabelQuality]) -> str:
    """A markdown table: one row per label set."""
    lines = [
        "| labels | phone purity | cluster purity | PNMI | utterances | frames |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, q in rows.items():
        lines.append(
            f"| {name} | {q.phone_purity:.4f} | {q.cluster_purity:.4f} | {q.pnmi:.4f} | {q.utterances} | {q.frames} |"
        )
    return "\n".join(lines)


def score_labels(cfg: LabelQualityConfig) -> Dict[str, LabelQuality]:
    """``cfg``'s labels (every client's of ``data_root``, or the ``labels`` pairs) scored against its alignments,
    by the name of the labels; also written to ``cfg.json`` when given."""
    if cfg.data_root:
        rate = cfg.label_rate or json.loads((cfg.data_root / "prepare.json").read_text())["label_rate"]
        labels, name = client_labels(cfg.data_root, cfg.splits), str(cfg.data_root)
    else:
        rate, labels, name = cfg.label_rate or 100, labels_of(cfg.labels), " ".join(str(km) for _, km in cfg.labels)
    quality = label_quality(read_alignments(alignment_files(cfg.alignments, rate), rate), labels)
    if cfg.json:
        atomic_write_json(cfg.json, {"labels": name, "label_rate": rate, **asdict(quality)})
    return {name: quality}
