"""The server's record of a run in ``SAVE/server/``: ``settings.json``, ``metrics.jsonl``, TensorBoard, resume state.

``metrics.jsonl`` holds one JSON line per round; ``read_metrics`` is its one reader (the demo's
report, ``--resume`` and the tests use it). ``server_state.pt`` holds what ``--resume`` needs
beyond the round's checkpoint: the progress, FedOpt's moments, the privacy spent, the RNG.
"""

import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch

from fedhubert_plugin.checkpoints import load_checkpoint
from fedhubert_plugin.federation.server.screening import layers
from fedhubert_plugin.federation.server.strategies import accountant_state, restore_accountant
from fedhubert_plugin.files import atomic_write, atomic_write_text
from fedhubert_plugin.reference_curve import reference_band, reference_note

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PARTICIPATION_FILE = "participation.md"
STATE_FILE = "server_state.pt"
MOMENTS = ("m_t", "v_t")  # FedOpt's first and second moments


def metrics_path(save_or_server_dir: Union[str, Path]) -> Path:
    """``metrics.jsonl`` of a run, given its save dir or its ``server`` folder."""
    folder = Path(save_or_server_dir)
    return (folder if folder.name == "server" else folder / "server") / METRICS_FILE


def read_metrics(save_or_server_dir: Union[str, Path], until_round: Optional[int] = None) -> List[Dict]:
    """The rounds of ``metrics.jsonl`` (up to ``until_round``); a line cut short by a kill is dropped."""
    path = metrics_path(save_or_server_dir)
    rounds = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s: dropping a line cut short (the server was killed while writing it)", path)
            continue
        if until_round is None or record["round"] <= until_round:
            rounds.append(record)
    return rounds


def participation(lines: List[Dict]) -> Dict[str, Dict]:
    """Per client (by name; a node id only for one that never replied): rounds trained, rounds failed, last error."""
    clients: Dict[str, Dict] = {}
    for line in lines:
        for name in line["participants"]:
            clients.setdefault(name, {"trained": 0, "failed": 0, "last_error": ""})["trained"] += 1
        for rejection in line["rejected"]:
            row = clients.setdefault(rejection["client"], {"trained": 0, "failed": 0, "last_error": ""})
            row["failed"] += 1
            row["last_error"] = f"round {line['round']}: {rejection['reason']}"
    return dict(sorted(clients.items()))


def participation_table(lines: List[Dict]) -> str:
    """Markdown: ``participation`` of the rounds in ``lines``."""
    rows = ["| client | rounds trained | rounds failed | last error |", "| --- | --- | --- | --- |"]
    for name, row in participation(lines).items():
        error = row["last_error"].replace("|", "/").replace("\n", " ")[:300]
        rows.append(f"| {name} | {row['trained']} | {row['failed']} | {error} |")
    return "\n".join(rows)


def validations(lines: List[Dict]) -> Dict[int, Dict]:
    """The validations in ``lines`` by the round whose model they measured (0: the initial model), in order of
    that round; each ``{"model_round", "how", "metrics", "clients"}``. A model validated twice keeps its latest."""
    found = {}
    for line in lines:
        for validation in line["validations"]:
            found[validation["model_round"]] = validation
    return dict(sorted(found.items()))


def updates_behind(lines: List[Dict], behind: Optional[Dict[int, int]] = None) -> Dict[int, int]:
    """The updates in all (every client's, summed) behind each round's model, from ``lines`` in order (0: the
    initial model); ``behind``: the counts of earlier lines to go on from."""
    behind = dict(behind or {0: 0})
    for line in lines:
        made = sum(client.get("train_updates", 0) for client in line["clients"].values())
        behind[line["round"]] = behind[max(r for r in behind if r < line["round"])] + made
    return behind


def model_name(model_round: int) -> str:
    return "the initial model" if model_round == 0 else f"round {model_round}'s model"


def validation_figures(metrics: Dict[str, float], digits: int = 4) -> Dict[str, str]:
    """A validation's headline figures, formatted: its loss, and the masked accuracy of pretraining or the WER of
    fine-tuning."""
    figures = {"valid loss": f"{metrics.get('loss', math.inf):.{digits}f}"}
    if "wer" in metrics:
        figures["WER"] = f"{metrics['wer']:.{digits - 2}f} %"
    else:
        figures["masked acc"] = f"{metrics.get('acc_masked', math.nan):.{digits}f}"
    return figures


def round_summary(line: Dict) -> str:
    """One line for the log: the round's training, then each validation it made and of which model."""
    train = line["train"]
    parts = [
        f"round {line['round']}: train loss {train.get('loss', math.nan):.4f}, lr {train.get('lr', math.nan):.3g} "
        f"({len(line['participants'])} clients, {line['round_seconds']:.1f} s)"
    ]
    for validation in line["validations"]:
        figures = ", ".join(f"{name} {value}" for name, value in validation_figures(validation["metrics"]).items())
        parts.append(f"{model_name(validation['model_round'])}: {figures}")
    if line["privacy"]:
        parts.append(f"privacy spent epsilon {line['privacy']['epsilon']:.3f}")
    return "; ".join(parts)


def zero_update(line: Dict) -> bool:
    """Whether every client of the round sent its weights back unchanged (update norm 0), i.e. learnt nothing."""
    norms = [row.get("train_update_norm") for row in line["clients"].values()]
    return bool(norms) and all(norm == 0 for norm in norms)


def round_postfix(line: Dict) -> Dict[str, str]:
    """The progress bar's postfix after a round: its train loss, and the latest validation's loss and masked
    accuracy."""
    postfix = {"train loss": f"{line['train'].get('loss', math.nan):.3f}"}
    if line["validations"]:
        postfix.update(validation_figures(line["validations"][-1]["metrics"], digits=3))
    return postfix


@dataclass
class Progress:
    """How far a run got: the last completed round, the updates done, the best validation so far (its score:
    the recipe's ``checkpoint.best_checkpoint_metric``, negated when larger is better; ``checkpointing``)."""

    round_done: int = 0
    updates_done: int = 0
    best_score: float = math.inf
    best_round: int = 0
    schedule: Dict[str, int] = field(default_factory=dict)  # the clients' lr schedule (``Schedule.key``)


class RunLog:
    """Writes a run's metrics (JSON lines and TensorBoard in fairseq's ``tb/train``, ``tb/valid`` layout) and state."""

    def __init__(self, server_dir: Path, reference: Optional[Dict] = None):
        """``reference``: the reference curve of the run's kind (an entry of ``reference_curve.reference_curves()
        ["runs"]``), to log each validation beside."""
        from tensorboardX import SummaryWriter  # the writer fairseq uses

        self.server_dir = Path(server_dir)
        self.server_dir.mkdir(parents=True, exist_ok=True)
        self.boards = {tag: SummaryWriter(str(self.server_dir / "tb" / tag)) for tag in ("train", "valid")}
        self.reference = reference
        self.updates_behind = updates_behind(read_metrics(self.server_dir)) if reference else {}

    @property
    def state_path(self) -> Path:
        return self.server_dir / STATE_FILE

    def append(self, line: Dict) -> None:
        """Add a round's line to ``metrics.jsonl``, its scalars to TensorBoard, and its summary to the log."""
        if self.reference:
            self.place_on_reference(line)
        with open(self.server_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(line) + "\n")
        logger.info("%s", round_summary(line))
        for validation in line["validations"]:
            if "reference" in validation:
                note = reference_note(validation["reference"], validation["updates"], validation["metrics"])
                logger.info("%s %s", model_name(validation["model_round"]), note)
        if zero_update(line):
            logger.warning(
                "round %d: every client's update is zero (lr %g): the round learnt nothing and the server applied "
                "only its momentum. Did the clients' lr schedule end (optimization.max_update)? See docs/federation.md",
                line["round"],
                line["train"].get("lr", math.nan),
            )
        privacy = {"epsilon": line["privacy"]["epsilon"]} if line["privacy"] else {}
        traffic = {"bytes_sent": line["bytes_sent"], "bytes_received": line["bytes_received"]}
        for key, value in {**line["train"], **privacy, **traffic}.items():
            self.boards["train"].add_scalar(key, value, line["round"])
        for validation in line["validations"]:  # at the round of the model it measured
            for key, value in validation["metrics"].items():
                self.boards["valid"].add_scalar(key, value, validation["model_round"])
        for board in self.boards.values():
            board.flush()

    def place_on_reference(self, line: Dict) -> None:
        """Give each validation of ``line`` the updates behind its model and, within the reference curves, their
        band there."""
        self.updates_behind = updates_behind([line], self.updates_behind)
        for validation in line["validations"]:
            validation["updates"] = self.updates_behind.get(validation["model_round"], 0)
            band = reference_band(self.reference, validation["updates"])
            if band:
                validation["reference"] = band

    def save_state(self, progress: Progress, strategy) -> None:
        """What ``--resume`` needs after ``progress.round_done``."""
        optimizer = layers(strategy)[-1]
        moments = {
            name: {
                k: torch.from_numpy(np.asarray(v, dtype=np.float32))
                for k, v in (getattr(optimizer, name, None) or {}).items()
            }
            for name in MOMENTS
        }
        state = {
            "round": progress.round_done,
            "updates": progress.updates_done,
            "best_score": progress.best_score,
            "best_round": progress.best_round,
            "schedule": progress.schedule,
            "random": random.getstate(),
            "accountant": accountant_state(strategy),
            **moments,
        }
        atomic_write(self.state_path, lambda tmp: torch.save(state, tmp))

    def restore_state(self, strategy) -> Progress:
        """The progress saved last; puts back the strategy's moments, the privacy spent and the RNG, and cuts
        ``metrics.jsonl`` back to the rounds that state covers."""
        state = load_checkpoint(self.state_path)
        random.setstate(state["random"])
        optimizer = layers(strategy)[-1]
        for name in MOMENTS:
            if state[name]:
                setattr(optimizer, name, {k: v.numpy() for k, v in state[name].items()})
        restore_accountant(strategy, state.get("accountant", ""))
        progress = Progress(
            int(state["round"]),
            int(state["updates"]),
            float(state["best_score"]),
            int(state["best_round"]),
            dict(state.get("schedule", {})),  # none in a state saved before schedules were sized to the run
        )
        for stale in self.server_dir.glob(".*.tmp"):  # a write cut short by a kill; its target is whole or absent
            logger.warning("removing %s, left by a server killed while writing", stale)
            stale.unlink()
        kept = read_metrics(self.server_dir, until_round=progress.round_done)
        atomic_write_text(self.server_dir / METRICS_FILE, "".join(json.dumps(line) + "\n" for line in kept))
        return progress

    def close(self) -> None:
        for board in self.boards.values():
            board.close()
