"""Shared fixtures: the toy corpus, one client shard for the tiny recipe, a trained checkpoint, a federated run.

Everything runs on CPU and talks to nothing but the local disk. Helpers are in ``tests.helpers``.
"""

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from fedhubert_plugin.toy_data import DEV_SUBSET, TRAIN_SUBSET, write_toy_data
from fedhubert_plugin.toy_superb import ToySuperbSummary, write_toy_superb_data
from tests.helpers import (
    N_CLUSTERS,
    RECIPES,
    fairseq_hydra_train,
    prepare_argv,
    pretrain_settings,
    write_energy_dictionary,
    write_split,
)

# Fixtures of tests that train, run Flower or run `fedhubert prepare` (tens of seconds to minutes on 2 cores)
HEAVY_FIXTURES = {"messy_librispeech", "prepared", "trained_run", "federated_run", "superb_corpora"}


ROOT_LOGGER = logging.getLogger()
ROOT_HANDLERS, ROOT_LEVEL = list(ROOT_LOGGER.handlers), ROOT_LOGGER.level


@pytest.fixture(autouse=True)
def root_logger_put_back():
    """A `fedhubert` command run in this process (``main([...])``, here or in a fixture) gives the root logger a
    console handler on the ``sys.stderr`` of that moment, often a test's capture, closed when the test ends: every
    later log record would then fail to print and log its error instead. Each test ends with the root logger as
    the session started, but for pytest's own capture handlers."""
    yield
    for handler in list(ROOT_LOGGER.handlers):
        if handler not in ROOT_HANDLERS and type(handler) is logging.StreamHandler:
            ROOT_LOGGER.removeHandler(handler)
    ROOT_LOGGER.setLevel(ROOT_LEVEL)


@pytest.fixture(scope="session", autouse=True)
def one_ray_instance_per_session():
    """Flower's Ray backend starts Ray for each simulation and shuts it down after (about 4 s on 2 cores, dozens
    of times in the suite). The suite keeps one Ray instance: each simulation still gets its own actors, and every
    actor it made is killed when it ends (a stalled one too) and its CPUs are free again before the next begins."""
    import ray
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    original_add, original_terminate = BasicActorPool.add_actors_to_pool, RayBackend.terminate

    def add_and_remember(pool, num_actors):
        original_add(pool, num_actors)
        pool.every_actor = list(pool.pool)  # Ray restarts a killed actor under the same handle

    def kill_actors_keep_ray(backend):
        for actor in getattr(backend.pool, "every_actor", []):
            ray.kill(actor, no_restart=True)
        deadline = time.monotonic() + 30
        while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.monotonic() < deadline:
            time.sleep(0.1)

    BasicActorPool.add_actors_to_pool, RayBackend.terminate = add_and_remember, kill_actors_keep_ray
    yield
    BasicActorPool.add_actors_to_pool, RayBackend.terminate = original_add, original_terminate
    ray.shutdown()


def pytest_collection_modifyitems(items):
    """Every test not marked ``e2e`` is a unit test: ``-m unit`` runs them alone, ``-m e2e`` the rest.

    Unit tests are fast: one that needs a heavy fixture (directly or through another) stops the collection.
    """
    slow = []
    for item in items:
        if "e2e" in item.keywords:
            continue
        item.add_marker(pytest.mark.unit)
        heavy = sorted(HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())))
        if heavy:
            slow.append(f"{item.nodeid} (uses {', '.join(heavy)})")
    if slow:
        raise pytest.UsageError(
            "unit tests must not train or run Flower; mark these @pytest.mark.e2e or drop the fixture "
            f"(heavy fixtures: {', '.join(sorted(HEAVY_FIXTURES))}):\n  " + "\n  ".join(slow)
        )


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory) -> Path:
    """The default toy corpus (seed 0); ``FEDHUBERT_TOY_CORPUS`` names one already written by `fedhubert toy-data`
    with the defaults (for a machine without espeak-ng, such as a GPU machine that runs only the GPU tests)."""
    given = os.environ.get("FEDHUBERT_TOY_CORPUS")
    if given:
        summary = Path(given) / "toy_data.json"
        if not summary.is_file():
            fix = "write it with `fedhubert toy-data`"
            raise pytest.UsageError(f"FEDHUBERT_TOY_CORPUS={given} has no toy_data.json; {fix}")
        return Path(given)
    out = tmp_path_factory.mktemp("toy") / "toy"
    write_toy_data(out, seed=0)
    return out


@pytest.fixture(scope="session")
def superb_corpora(toy_corpus, tmp_path_factory) -> ToySuperbSummary:
    """The toy corpora of SUPERB's IC and SID, and the ASR files of the toy LibriSpeech (`fedhubert toy-data
    --superb`, seed 0)."""
    return write_toy_superb_data(tmp_path_factory.mktemp("superb"), seed=0, librispeech_root=toy_corpus / "LibriSpeech")


@pytest.fixture(scope="session")
def client_shard(toy_corpus, tmp_path_factory) -> Path:
    """One client folder in the layout of `fedhubert prepare` (train.tsv, valid.tsv, labels/)."""
    shard = tmp_path_factory.mktemp("shard")
    (shard / "labels").mkdir()
    root = toy_corpus / "LibriSpeech"
    write_split(shard, "train", sorted((root / TRAIN_SUBSET).rglob("*.flac")), root)
    write_split(shard, "valid", sorted((root / DEV_SUBSET).rglob("*.flac")), root)
    write_energy_dictionary(shard)
    return shard


@pytest.fixture(scope="session")
def trained_run(client_shard, tmp_path_factory) -> dict:
    """`fairseq-hydra-train` with the tiny recipe for 4 updates; its checkpoint and JSON logs."""
    run_dir = tmp_path_factory.mktemp("hydra_run")
    overrides = [
        f"task.data={client_shard}",
        f"task.label_dir={client_shard / 'labels'}",
        "optimization.max_update=4",
        "lr_scheduler.warmup_updates=2",
        f"checkpoint.save_dir={run_dir / 'checkpoints'}",
        f"common.tensorboard_logdir={run_dir / 'tb'}",
    ]
    log = fairseq_hydra_train(RECIPES, "tiny", overrides, run_dir)
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
    """The toy LibriSpeech with a corrupted flac, an empty flac, a stereo 44.1 kHz flac and a chapter
    without transcript."""
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

    assert main(prepare_argv(root, out, "--n-clusters", str(N_CLUSTERS))) == 0
    return out


@pytest.fixture
def in_a_run(monkeypatch):
    """Messages exist only inside a Flower run: give them one."""
    from flwr.supercore.task_identity import TaskIdentity

    for attribute in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attribute, 1)


@pytest.fixture(scope="session")
def federated_run(prepared, tmp_path_factory) -> Path:
    """3 federated rounds of the tiny recipe on 4 prepared clients; the save dir."""
    from fedhubert_plugin.federation.simulation import simulate_pretraining

    save_dir = tmp_path_factory.mktemp("federated")
    simulate_pretraining(pretrain_settings(prepared, save_dir, rounds=3), num_clients=4)
    return save_dir
