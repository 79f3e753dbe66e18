"""What every benchmark records: the machine and versions, and its results as JSON plus a markdown table."""

import datetime
import json
import platform
from pathlib import Path
from typing import Dict, List

import torch

RESULTS = Path(__file__).parent / "results"


def machine_meta() -> Dict:
    """Date, machine, CPU threads, GPU and torch version of this run."""
    return {
        "date": datetime.date.today().isoformat(),
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


def write_results(name: str, rows: List[Dict], table: List[str], note: str) -> str:
    """``results/<name>.json`` (meta and rows) and ``results/<name>.md`` (table, then the machine and ``note``)."""
    meta = machine_meta()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    text = "\n".join(table) + (
        f"\n\n{meta['date']}, {meta['machine']}, {meta['threads']} CPU threads, GPU: {meta['gpu']}, "
        f"torch {meta['torch']}; {note}\n"
    )
    (RESULTS / f"{name}.md").write_text(text)
    return text
