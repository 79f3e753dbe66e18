"""Where a run sits against the reference learning curves of the tiny recipe (``docs/training-curves.md``).

``reference_curves.json`` holds them: per run kind (``centralized``, and the federated strategies ``fedavg`` and
``fedadam``), the validation loss and masked and unmasked accuracy against the updates made in all (every client's,
summed), as the band over seeds of ``benchmarks/learning_curve.py``'s runs (its corpus: 16 train speakers, 31 min;
4 clients, speaker non-IID, 10 local updates a round; each kind's ``source`` says which). A run on other data or
with other settings sits elsewhere; the band says what healthy training of this recipe looked like.
"""

import json
from pathlib import Path
from typing import Dict, Optional

import numpy as np

REFERENCE_FILE = Path(__file__).with_name("reference_curves.json")
MEASURES = ("loss", "acc_masked", "acc_unmasked")


def reference_curves(path: Path = REFERENCE_FILE) -> Dict:
    """The stored curves (``{"recipe", "runs": {kind: {"source", "updates": [...], measure: {"min", "max",
    "mean"}}}}``)."""
    return json.loads(Path(path).read_text())


def reference_band(curve: Optional[Dict], updates: int) -> Optional[Dict[str, list]]:
    """Each measure's [min, max] over the reference seeds of one run kind's ``curve`` (an entry of
    ``reference_curves()["runs"]``) at ``updates``, linear between the stored points; None beyond the stored
    updates, or without a curve."""
    if not curve or not curve["updates"][0] <= updates <= curve["updates"][-1]:
        return None
    return {
        measure: [float(np.interp(updates, curve["updates"], curve[measure][edge])) for edge in ("min", "max")]
        for measure in MEASURES
    }


def reference_note(band: Dict[str, list], updates: int, metrics: Dict[str, float]) -> str:
    """One log line: a validation's loss and masked accuracy beside the reference band at ``updates``."""
    loss, acc = band["loss"], band["acc_masked"]
    return (
        f"at {updates:,} updates in all: valid loss {metrics.get('loss', float('nan')):.3f} (reference "
        f"{loss[0]:.3f}–{loss[1]:.3f}), masked acc {metrics.get('acc_masked', float('nan')):.3f} (reference "
        f"{acc[0]:.3f}–{acc[1]:.3f}); the tiny recipe's reference curves: docs/training-curves.md"
    )


def first_reaching(kind: str, measure: str, value: float, curves: Dict) -> Optional[int]:
    """The first stored updates at which the seeds' mean ``measure`` of ``kind`` reaches ``value``; None if never."""
    curve = curves["runs"][kind]
    return next((u for u, mean in zip(curve["updates"], curve[measure]["mean"]) if mean >= value), None)
