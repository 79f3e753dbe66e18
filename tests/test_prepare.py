"""`fedhubert prepare` on the toy corpus, with bad files mixed in."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fedhubert_plugin.cli import main
from fedhubert_plugin.data.manifest import read_manifest, write_manifest
from fedhubert_plugin.prepare import PrepareConfig, prepare
from fedhubert_plugin.targets.feature_files import utterance_features
from fedhubert_plugin.targets.features import PRESETS
from fedhubert_plugin.targets.kmeans import local_codebook, nearest
from fedhubert_plugin.targets.labels import cached_features, label_client, unusable_utterances
from fedhubert_plugin.toy_data import DEV_SUBSET, TRAIN_SUBSET
from tests.helpers import N_CLUSTERS, pooled_features, prepare_argv, setup_fed_task


def manifest_entries(out: Path):
    """(client, split, absolute path, samples) for every manifest row."""
    rows = []
    for client in sorted((out / "clients").iterdir()):
        for split in ("train", "valid"):
            root, entries = read_manifest(client / f"{split}.tsv")
            rows += [(client.name, split, (root / rel).resolve(), samples) for rel, samples in entries]
    return rows


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_speakers_are_disjoint_and_clients_balanced_by_duration(prepared):
    partition = json.loads((prepared / "partition.json").read_text())
    speaker_sets = [set(c["speakers"]) for c in partition["clients"].values()]
    assert sum(len(s) for s in speaker_sets) == len(set().union(*speaker_sets)) == 10
    for client, _split, path, _ in manifest_entries(prepared):
        assert path.name.split("-")[0] in partition["clients"][client]["speakers"]
    hours = [c["train"]["hours"] + c["valid"]["hours"] for c in partition["clients"].values()]
    assert max(hours) / min(hours) < 1.6


@pytest.mark.e2e
def test_every_usable_utterance_is_in_exactly_one_manifest(prepared):
    table = (prepared / "utterances.tsv").read_text().splitlines()[1:]
    usable = {Path(line.split("\t")[4]).resolve() for line in table}
    listed = [path for _, _, path, _ in manifest_entries(prepared)]
    assert len(listed) == len(set(listed)) == len(usable) == 59  # 60 synthesized, 1 corrupted (skipped), stereo kept
    assert set(listed) == usable


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_federated_kmeans_inertia_within_5_percent_of_centralized(prepared):
    pooled = pooled_features(sorted((prepared / "clients").iterdir()), PRESETS["hubert"])
    federated = nearest(pooled, np.load(prepared / "kmeans" / "codebook.npy"))[1].sum()
    centralized = nearest(pooled, local_codebook(pooled, N_CLUSTERS, seed=0, n_init=20))[1].sum()
    assert federated <= 1.05 * centralized, (federated, centralized)
    steps = [json.loads(line) for line in (prepared / "kmeans" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1)) and steps[-1]["inertia_per_frame"] <= steps[0][
        "inertia_per_frame"
    ]
    assert list((prepared / "kmeans" / "tb").glob("events.out.tfevents.*"))


@pytest.mark.e2e
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


@pytest.mark.e2e
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


def test_audio_that_does_not_decode_is_dropped_where_features_are_made(toy_corpus, tmp_path):
    """The scan reads headers only: a truncated or corrupted file is caught once, at feature extraction,
    removed from the manifest before labels are written, and listed with its reason."""
    root = toy_corpus / "LibriSpeech"
    flacs = sorted((root / TRAIN_SUBSET).rglob("*.flac"))[:5]
    audio = tmp_path / "audio"
    shutil.copytree(root / TRAIN_SUBSET, audio / TRAIN_SUBSET)
    good, truncated, corrupted = [audio / f.relative_to(root) for f in flacs[:3]]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    data = bytearray(corrupted.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 2000] = np.random.default_rng(0).integers(0, 256, 2000, np.uint8).tobytes()
    corrupted.write_bytes(bytes(data))
    client = tmp_path / "client"
    rows = [(str(f.relative_to(root)), sf.info(str(f)).frames) for f in flacs]  # the samples the scan saw
    write_manifest(client / "train.tsv", audio, rows)
    write_manifest(client / "valid.tsv", audio, rows[3:])

    features = cached_features(client, "train", PRESETS["hubert"])
    _, kept = read_manifest(client / "train.tsv")
    assert [rel for rel, _ in kept] == [rows[0][0], rows[3][0], rows[4][0]]
    assert features.lengths.tolist() == [PRESETS["hubert"].num_frames(samples) for _, samples in kept]
    reasons = {Path(row["path"]): row["reason"] for row in unusable_utterances(client)}
    assert set(reasons) == {truncated, corrupted} and good not in reasons
    assert "truncated" in reasons[truncated] or "corrupted" in reasons[truncated]
    assert "corrupted" in reasons[corrupted]
    # read back in bounded chunks of whole utterances, equal to a fresh in-memory extraction
    groups = list(features.utterance_groups(max_frames=500))
    assert len(groups) > 1 and all(len(frames) == lengths.sum() for lengths, frames in groups)
    fresh = np.concatenate([f for _, f, _ in utterance_features(client / "train.tsv", PRESETS["hubert"])])
    assert np.array_equal(np.concatenate([frames for _, frames in groups]), fresh)
    assert len(features.sample(100, seed=0)) < features.frames

    codebook = np.random.default_rng(0).normal(size=(N_CLUSTERS, 39)).astype(np.float32)
    frames = label_client(client, codebook, PRESETS["hubert"], N_CLUSTERS)
    lines = (client / "labels" / "train.km").read_text().splitlines()
    assert len(lines) == 3 and frames["train"] == features.frames
    assert [int(x) for x in lines[0].split()] == nearest(fresh[: features.lengths[0]], codebook)[0].tolist()


@pytest.mark.e2e
def test_a_killed_prepare_resumes_without_redoing_finished_clients(messy_librispeech, tmp_path, monkeypatch):
    """Killed while labelling the second client: the rerun makes only the features that were missing."""
    import fedhubert_plugin.codebooks as codebooks_module
    import fedhubert_plugin.targets.labels as labels_module

    root, bad = messy_librispeech
    cfg = PrepareConfig(root, [TRAIN_SUBSET], 2, tmp_path / "data", min_seconds=1.0, kmeans="local", n_clusters=20)
    real_label_client, real_write_features = codebooks_module.label_client, labels_module.write_features
    labelled, extracted = [], []

    def killed_at_second_client(folder, *args, **kwargs):
        if labelled:
            raise KeyboardInterrupt("killed")
        labelled.append(folder.name)
        return real_label_client(folder, *args, **kwargs)

    def counted(manifest, *args, **kwargs):
        extracted.append((manifest.parent.name, manifest.stem))
        return real_write_features(manifest, *args, **kwargs)

    monkeypatch.setattr(labels_module, "write_features", counted)
    monkeypatch.setattr(codebooks_module, "label_client", killed_at_second_client)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg)
    assert extracted == [("client_000", "train"), ("client_000", "valid"), ("client_001", "train")]
    monkeypatch.setattr(codebooks_module, "label_client", real_label_client)
    extracted.clear()
    prepare(cfg)
    assert extracted == [("client_001", "valid")]  # the rest came from the caches of the killed run
    report = json.loads((tmp_path / "data" / "report.json").read_text())
    assert [Path(s["path"]) for s in report["skipped"]].count(bad["corrupted"]) == 1  # found again in the cache
    for client in (tmp_path / "data" / "clients").iterdir():
        assert not (client / "features").exists()
        for split in ("train", "valid"):
            lines = (client / "labels" / f"{split}.km").read_text().splitlines()
            assert len(lines) == len(read_manifest(client / f"{split}.tsv")[1])


def test_prepare_stops_before_features_when_the_disk_is_too_small(toy_corpus, tmp_path, monkeypatch):
    import fedhubert_plugin.prepare as prepare_module

    monkeypatch.setattr(prepare_module.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    out = tmp_path / "data"
    with pytest.raises(RuntimeError, match=rf"{out} has 0.0 GB free.*MB per hour.*--out on a larger disk"):
        prepare(PrepareConfig(toy_corpus / "LibriSpeech", [TRAIN_SUBSET], 2, out, min_seconds=1.0, kmeans="local"))
    assert not list(out.glob("clients/*/features"))
