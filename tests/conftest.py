"""Shared fixtures: the toy corpus, one client shard for the tiny recipe, a trained checkpoint.

Everything runs on CPU and talks to nothing but the local disk.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from fedhubert_plugin.toy_data import TRAIN_SUBSET, DEV_SUBSET, write_toy_data

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "fedhubert_plugin"
RECIPES = REPO / "recipes" / "librispeech" / "pretrain"
LABEL_RATE = 100
ENERGY_BINS = 8
N_CLUSTERS = 100


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory) -> Path:
    """The default toy corpus (seed 0)."""
    out = tmp_path_factory.mktemp("toy") / "toy"
    write_toy_data(out, seed=0)
    return out


def energy_labels(wav: np.ndarray) -> list:
    """Test-only frame targets at 100 Hz: log energy of 25 ms frames quantised into bins.

    They stand in for `fedhubert prepare`'s k-means labels; the count per utterance is the
    one fairseq's HuBERT dataset expects at label rate 100.
    """
    frames = 1 + (len(wav) - 400) // 160
    energy = np.array([np.log1p(np.sum(wav[i * 160 : i * 160 + 400] ** 2)) for i in range(frames)])
    edges = np.quantile(energy, np.linspace(0, 1, ENERGY_BINS + 1)[1:-1])
    return np.digitize(energy, edges).tolist()


def write_split(shard: Path, name: str, flacs: list, root: Path) -> None:
    lines = [str(root)]
    labels = []
    for flac in flacs:
        wav, _ = sf.read(flac, dtype="float32")
        lines.append(f"{flac.relative_to(root)}\t{len(wav)}")
        labels.append(" ".join(map(str, energy_labels(wav))))
    (shard / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    (shard / "labels" / f"{name}.km").write_text("\n".join(labels) + "\n")


@pytest.fixture(scope="session")
def client_shard(toy_corpus, tmp_path_factory) -> Path:
    """One client folder in the layout of `fedhubert prepare` (train.tsv, valid.tsv, labels/)."""
    shard = tmp_path_factory.mktemp("shard")
    (shard / "labels").mkdir()
    root = toy_corpus / "LibriSpeech"
    write_split(shard, "train", sorted((root / TRAIN_SUBSET).rglob("*.flac")), root)
    write_split(shard, "valid", sorted((root / DEV_SUBSET).rglob("*.flac")), root)
    (shard / "labels" / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(ENERGY_BINS)))
    return shard


def setup_fed_task(shard: Path, **overrides):
    """fairseq's own task set-up (dataclass defaults merged) for a client folder."""
    from fairseq import tasks
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {"_name": "fed_hubert_pretraining", "data": str(shard), "label_dir": str(shard / "labels"),
         "labels": ["km"], "label_rate": 100, **overrides}
    )
    return tasks.setup_task(cfg)


os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


def fairseq_env() -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")


@pytest.fixture(scope="session")
def trained_run(client_shard, tmp_path_factory) -> dict:
    """`fairseq-hydra-train` with the tiny recipe for 4 updates; its checkpoint and JSON logs."""
    run_dir = tmp_path_factory.mktemp("hydra_run")
    cmd = [
        str(Path(sys.executable).parent / "fairseq-hydra-train"),
        "--config-dir", str(RECIPES),
        "--config-name", "tiny",
        f"task.data={client_shard}",
        f"task.label_dir={client_shard / 'labels'}",
        f"common.user_dir={PLUGIN_DIR}",
        "common.cpu=true",
        "optimization.max_update=4",
        "lr_scheduler.warmup_updates=2",
        f"checkpoint.save_dir={run_dir / 'checkpoints'}",
        f"common.tensorboard_logdir={run_dir / 'tb'}",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=fairseq_env(), timeout=600, cwd=run_dir)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    records = []
    for line in log.splitlines():
        start = line.find("{")
        if start >= 0:
            try:
                records.append(json.loads(line[start:]))
            except json.JSONDecodeError:
                pass
    return {"checkpoint": run_dir / "checkpoints" / "checkpoint_last.pt", "records": records, "log": log}


@pytest.fixture(scope="session")
def messy_librispeech(toy_corpus, tmp_path_factory):
    """The toy LibriSpeech with a corrupted flac, an empty flac, a stereo 44.1 kHz flac and a chapter without transcript."""
    root = tmp_path_factory.mktemp("messy") / "LibriSpeech"
    shutil.copytree(toy_corpus / "LibriSpeech", root)
    speakers = sorted((root / TRAIN_SUBSET).iterdir())
    corrupted = sorted(speakers[0].rglob("*.flac"))[0]
    data = bytearray(corrupted.read_bytes())
    middle = len(data) // 3
    data[middle : middle + 2000] = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    corrupted.write_bytes(bytes(data))
    chapter = next(speakers[1].iterdir())
    empty = chapter / f"{speakers[1].name}-{chapter.name}-0099.flac"
    empty.write_bytes(b"")
    stereo = sorted(speakers[2].rglob("*.flac"))[0]
    wav, _ = sf.read(stereo, dtype="float32")
    up = torchaudio.functional.resample(torch.from_numpy(wav), 16000, 44100).numpy()
    sf.write(stereo, np.stack([up, 0.5 * up], axis=1), 44100)
    untranscribed = next(speakers[3].iterdir())
    next(untranscribed.glob("*.trans.txt")).unlink()
    return root, {"corrupted": corrupted, "empty": empty, "stereo": stereo, "untranscribed": untranscribed}


@pytest.fixture(scope="session")
def prepared(messy_librispeech, tmp_path_factory):
    """4 clients, speaker partition, federated k-means through Flower, via the CLI."""
    root, _ = messy_librispeech
    out = tmp_path_factory.mktemp("prepared") / "data"
    from fedhubert_plugin.cli import main

    args = ["prepare", "--librispeech-root", str(root), "--subsets", TRAIN_SUBSET, DEV_SUBSET,
            "--num-clients", "4", "--out", str(out), "--min-seconds", "1.0", "--n-clusters", str(N_CLUSTERS)]
    assert main(args) == 0
    return out


TINY = str(REPO / "recipes" / "librispeech" / "pretrain" / "tiny.yaml")


def metric_lines(save_dir: Path) -> list:
    """The server's ``metrics.jsonl`` of a run saved in ``save_dir``, one dict per round."""
    return [json.loads(line) for line in (save_dir / "server" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def in_a_run(monkeypatch):
    """Messages exist only inside a Flower run: give them one."""
    from flwr.supercore.task_identity import TaskIdentity

    for attribute in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attribute, 1)


def pretrain_settings(prepared, save_dir, rounds, **kwargs):
    """Settings of a federated run (default: the tiny recipe, 3 local updates) on the `prepared` clients."""
    from fedhubert_plugin.federation.pretrain_app import PretrainSettings

    defaults = dict(recipe=TINY, label_rate=100, n_clusters=N_CLUSTERS, data_root=str(prepared), overrides=["common.cpu=true"],
                    local_updates=3, min_train_nodes=2, min_available_nodes=4)
    return PretrainSettings(save_dir=str(save_dir), rounds=rounds, **{**defaults, **kwargs})


@pytest.fixture(scope="session")
def federated_run(prepared, tmp_path_factory) -> Path:
    """3 federated rounds of the tiny recipe on 4 prepared clients; the save dir."""
    from fedhubert_plugin.federation.pretrain_app import simulate_pretraining

    save_dir = tmp_path_factory.mktemp("federated")
    simulate_pretraining(pretrain_settings(prepared, save_dir, rounds=3), num_clients=4)
    return save_dir
