"""`fedhubert prepare` on the toy corpus, with bad files mixed in."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fedhubert_plugin.cli import main
from fedhubert_plugin.data.manifest import read_manifest
from fedhubert_plugin.prepare import PrepareConfig, prepare
from fedhubert_plugin.targets.features import PRESETS, manifest_features
from fedhubert_plugin.targets.kmeans import local_codebook, nearest
from fedhubert_plugin.toy_data import DEV_SUBSET, TRAIN_SUBSET
from tests.helpers import N_CLUSTERS, prepare_argv, setup_fed_task


def manifest_entries(out: Path):
    """(client, split, absolute path, samples) for every manifest row."""
    rows = []
    for client in sorted((out / "clients").iterdir()):
        for split in ("train", "valid"):
            root, entries = read_manifest(client / f"{split}.tsv")
            rows += [(client.name, split, (root / rel).resolve(), samples) for rel, samples in entries]
    return rows


def test_bad_files_are_reported_not_fatal(prepared, messy_librispeech):
    _, bad = messy_librispeech
    report = json.loads((prepared / "report.json").read_text())
    reasons = {Path(s["path"]): s["reason"] for s in report["skipped"]}
    assert "corrupted" in reasons[bad["corrupted"]]
    assert "empty" in reasons[bad["empty"]]
    (converted,) = report["converted"]
    assert Path(converted["path"]) == bad["stereo"]
    assert "down-mixed 2 channels" in converted["reason"] and "44100 Hz" in converted["reason"]
    info = sf.info(converted["to"])
    assert (info.samplerate, info.channels) == (16000, 1)
    assert str(bad["untranscribed"]) in report["chapters_without_transcript"]
    listed = {path for _, _, path, _ in manifest_entries(prepared)}
    assert Path(converted["to"]).resolve() in listed
    assert bad["corrupted"].resolve() not in listed and bad["empty"].resolve() not in listed


def test_speakers_are_disjoint_and_clients_balanced_by_duration(prepared):
    partition = json.loads((prepared / "partition.json").read_text())
    speaker_sets = [set(c["speakers"]) for c in partition["clients"].values()]
    assert sum(len(s) for s in speaker_sets) == len(set().union(*speaker_sets)) == 10
    for client, _split, path, _ in manifest_entries(prepared):
        assert path.name.split("-")[0] in partition["clients"][client]["speakers"]
    hours = [c["train"]["hours"] + c["valid"]["hours"] for c in partition["clients"].values()]
    assert max(hours) / min(hours) < 1.6


def test_every_usable_utterance_is_in_exactly_one_manifest(prepared):
    table = (prepared / "utterances.tsv").read_text().splitlines()[1:]
    usable = {Path(line.split("\t")[4]).resolve() for line in table}
    listed = [path for _, _, path, _ in manifest_entries(prepared)]
    assert len(listed) == len(set(listed)) == len(usable) == 59  # 60 synthesized, 1 corrupted (skipped), stereo kept
    assert set(listed) == usable


def test_labels_line_up_with_manifests_and_load_in_fairseq(prepared):
    for client in sorted((prepared / "clients").iterdir()):
        assert len((client / "labels" / "dict.km.txt").read_text().splitlines()) == N_CLUSTERS
        assert json.loads((client / "labels" / "labels.json").read_text())["label_rate"] == 100
        for split in ("train", "valid"):
            _, entries = read_manifest(client / f"{split}.tsv")
            lines = (client / "labels" / f"{split}.km").read_text().splitlines()
            assert len(lines) == len(entries)
            for (_, samples), line in zip(entries, lines):
                labels = [int(x) for x in line.split()]
                assert len(labels) == PRESETS["hubert"].num_frames(samples)
                assert abs(samples / 16000 - len(labels) / 100) < 0.1  # fairseq's tolerance
                assert all(0 <= x < N_CLUSTERS for x in labels)
        task = setup_fed_task(client)
        task.load_dataset("train")
        assert len(task.datasets["train"]) == len(read_manifest(client / "train.tsv")[1])
        assert not (client / "features").exists()  # features are gone once labels are written


def test_federated_kmeans_is_deterministic_for_a_seed(prepared, messy_librispeech, tmp_path):
    root, _ = messy_librispeech
    again = prepare(
        PrepareConfig(root, [TRAIN_SUBSET, DEV_SUBSET], 4, tmp_path / "again", min_seconds=1.0, n_clusters=N_CLUSTERS)
    )
    assert again.label_rate == 100
    assert np.array_equal(
        np.load(prepared / "kmeans" / "codebook.npy"), np.load(tmp_path / "again" / "kmeans" / "codebook.npy")
    )
    for client in sorted((prepared / "clients").iterdir()):
        for split in ("train", "valid"):
            assert (client / "labels" / f"{split}.km").read_text() == (
                tmp_path / "again" / "clients" / client.name / "labels" / f"{split}.km"
            ).read_text()


def test_federated_kmeans_inertia_within_5_percent_of_centralized(prepared):
    pooled = np.concatenate(
        [manifest_features(c / "train.tsv", PRESETS["hubert"])[0] for c in sorted((prepared / "clients").iterdir())]
    )
    federated = nearest(pooled, np.load(prepared / "kmeans" / "codebook.npy"))[1].sum()
    centralized = nearest(pooled, local_codebook(pooled, N_CLUSTERS, seed=0, n_init=20))[1].sum()
    assert federated <= 1.05 * centralized, (federated, centralized)
    steps = [json.loads(line) for line in (prepared / "kmeans" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1)) and steps[-1]["inertia_per_frame"] <= steps[0][
        "inertia_per_frame"
    ]
    assert list((prepared / "kmeans" / "tb").glob("events.out.tfevents.*"))


def test_local_kmeans_with_the_seed_preset(messy_librispeech, tmp_path, capsys):
    root, _ = messy_librispeech
    out = tmp_path / "local"
    options = ["--features", "seed", "--kmeans", "local", "--n-clusters", "500", "--partition", "iid"]
    assert main(prepare_argv(root, out, *options, clients=3, subsets=[TRAIN_SUBSET])) == 0
    table = capsys.readouterr().out
    assert "client_002" in table and "label rate 50 Hz" in table
    assert json.loads((out / "prepare.json").read_text())["label_rate"] == 50
    for client in sorted((out / "clients").iterdir()):
        codebook = np.load(out / "kmeans" / f"{client.name}.npy")
        assert 2 <= len(codebook) < 500  # adaptive: few frames, fewer clusters
        assert len((client / "labels" / "dict.km.txt").read_text().splitlines()) == 500  # one label space for the model
        _, entries = read_manifest(client / "train.tsv")
        lines = (client / "labels" / "train.km").read_text().splitlines()
        for (_, samples), line in zip(entries, lines):
            labels = [int(x) for x in line.split()]
            assert len(labels) == 1 + (samples - 400) // 320
            assert max(labels) < len(codebook)


def test_an_interrupted_run_leaves_no_stale_labels_and_a_rerun_completes(messy_librispeech, tmp_path, monkeypatch):
    import fedhubert_plugin.prepare as prepare_module

    root, _ = messy_librispeech
    cfg = PrepareConfig(root, [TRAIN_SUBSET], 2, tmp_path / "data", min_seconds=1.0, kmeans="local", n_clusters=20)
    prepare(cfg)
    assert (tmp_path / "data" / "prepare.json").is_file()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-way")

    monkeypatch.setattr(prepare_module, "run_local_kmeans", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare(
            PrepareConfig(
                root, [TRAIN_SUBSET], 2, tmp_path / "data", min_seconds=1.0, kmeans="local", n_clusters=20, seed=1
            )
        )
    assert not (tmp_path / "data" / "prepare.json").exists()
    for client in (tmp_path / "data" / "clients").iterdir():
        assert (client / "train.tsv").is_file() and not (client / "labels").exists()
    assert not list((tmp_path / "data").rglob("*.tmp"))
    monkeypatch.undo()
    prepare(
        PrepareConfig(
            root, [TRAIN_SUBSET], 2, tmp_path / "data", min_seconds=1.0, kmeans="local", n_clusters=20, seed=1
        )
    )
    assert (tmp_path / "data" / "prepare.json").is_file()
    for client in (tmp_path / "data" / "clients").iterdir():
        assert len((client / "labels" / "train.km").read_text().splitlines()) == len(
            read_manifest(client / "train.tsv")[1]
        )
