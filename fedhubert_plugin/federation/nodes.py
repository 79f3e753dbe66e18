"""Nodes: where a client's data lives, and how many processes it trains on.

In deployment each SuperNode is one site, started with
``flower-supernode --node-config 'data-dir=/data/client_007'``: its client folder (and, where several
SuperNodes share a machine, ``num-threads=N``: its share of the cores).
In simulation the node config holds Flower's ``partition-id``, and the server names the
prepared data folder, so virtual client ``i`` reads ``DATA/clients/client_{i:03d}``.
"""

from pathlib import Path

from flwr.app import Context


def client_name(index: int) -> str:
    """Folder name of client ``index`` in a prepared data folder."""
    return f"client_{index:03d}"


def client_folder(context: Context, data_root: str) -> Path:
    """This node's client folder: ``data-dir`` from the node config, else the simulated partition's
    under ``data_root``."""
    if "data-dir" in context.node_config:
        folder = Path(str(context.node_config["data-dir"]))
    else:
        folder = Path(data_root) / "clients" / client_name(int(context.node_config["partition-id"]))
    if not (folder / "train.tsv").is_file():
        raise FileNotFoundError(f"client folder {folder} has no train.tsv; run `fedhubert prepare` or fix data-dir")
    return folder


def site_processes(context: Context, configured: int) -> int:
    """``--node-config 'gpus=N'``: this node's client trains on N data-parallel ranks, one per GPU (see
    ``site_trainer``); otherwise what the run configured."""
    return int(context.node_config.get("gpus", configured))
