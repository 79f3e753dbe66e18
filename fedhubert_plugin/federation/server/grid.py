"""What the server waits for on Flower's Grid: enough connected nodes, within a timeout."""

import time
from typing import List

from flwr.serverapp import Grid


def wait_for_nodes(grid: Grid, needed: int, timeout: float) -> List[int]:
    """The ids of the connected nodes once ``needed`` are; raise after ``timeout`` seconds
    (Flower would wait forever)."""
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < needed:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(nodes)} of the {needed} nodes needed are connected after {timeout:g} s "
                f"(min-available-nodes, round-timeout): start the missing SuperNodes, or lower min-available-nodes"
            )
        time.sleep(0.5)
    return nodes
