"""HuBERT iteration 2, federated: k-means targets from a layer of the iteration-1 global model."""

import json

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from fedhubert_plugin.checkpoints import load_checkpoint
from fedhubert_plugin.cli import main
from fedhubert_plugin.data.manifest import read_manifest
from fedhubert_plugin.export import export_initial
from fedhubert_plugin.federation.simulation import simulate_pretraining
from fedhubert_plugin.targets.features import CheckpointFeatures
from fedhubert_plugin.targets.kmeans import nearest
from fedhubert_plugin.toy_data import TRAIN_SUBSET
from tests.helpers import TINY, metric_lines, pooled_features, prepare_argv, pretrain_settings, valid_losses
from upstream.hubert_local.hubconf import hubert_local

IT2_CLUSTERS = 50


def test_checkpoint_features_are_the_models_layer_at_its_frame_rate(tmp_path):
    ckpt = export_initial(TINY, tmp_path / "m.pt", n_clusters=20, label_rate=100, overrides=["common.cpu=true"])
    features = CheckpointFeatures(str(ckpt), layer=1, device="cpu")
    assert features.label_rate == 50 and features.dim == 128 and features.name == "layer1"
    wav = torch.randn(16_037, generator=torch.Generator().manual_seed(0)).numpy()
    feats = features(wav)
    assert feats.shape == (features.num_frames(len(wav)), 128) == (49, 128)
    # the same numbers s3prl sees as the input of layer 2 (= output of layer 1)
    with torch.no_grad():
        s3prl_states = hubert_local(ckpt=str(ckpt)).eval()([torch.from_numpy(wav)])["hidden_states"]
    np.testing.assert_allclose(feats, s3prl_states[1][0].numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="has encoder layers 1 to 2"):
        CheckpointFeatures(str(ckpt), layer=3)


def test_checkpoint_features_need_a_checkpoint_and_a_layer(toy_corpus, tmp_path):
    args = prepare_argv(
        toy_corpus / "LibriSpeech", tmp_path / "d", "--features", "checkpoint", clients=2, subsets=[TRAIN_SUBSET]
    )
    assert main(args) == 1
    assert not (tmp_path / "d" / "prepare.json").exists()


@pytest.fixture(scope="module")
def iteration2(federated_run, messy_librispeech, tmp_path_factory):
    root, _ = messy_librispeech
    out = tmp_path_factory.mktemp("iteration2") / "data"
    checkpoint = federated_run / "server" / "checkpoint_best.pt"
    options = [
        "--n-clusters",
        str(IT2_CLUSTERS),
        "--features",
        "checkpoint",
        "--checkpoint",
        str(checkpoint),
        "--layer",
        "2",
    ]
    assert main(prepare_argv(root, out, *options)) == 0
    return out, checkpoint


@pytest.mark.e2e
def test_iteration2_labels_count_50hz_frames_and_features_are_gone(iteration2):
    out, checkpoint = iteration2
    features = CheckpointFeatures(str(checkpoint), layer=2, device="cpu")
    assert json.loads((out / "prepare.json").read_text())["label_rate"] == 50
    for client in sorted((out / "clients").iterdir()):
        meta = json.loads((client / "labels" / "labels.json").read_text())
        assert meta["label_rate"] == 50 and meta["layer"] == 2 and meta["checkpoint"] == str(checkpoint)
        assert len((client / "labels" / "dict.km.txt").read_text().splitlines()) == IT2_CLUSTERS
        assert not (client / "features").exists()  # features are dropped once the labels are written
        for split in ("train", "valid"):
            _, rows = read_manifest(client / f"{split}.tsv")
            labels = (client / "labels" / f"{split}.km").read_text().splitlines()
            assert len(labels) == len(rows)
            for (_, samples), line in zip(rows, labels):
                ids = [int(x) for x in line.split()]
                assert len(ids) == features.num_frames(samples)
                assert abs(len(ids) / 50 - samples / 16000) < 0.1  # fairseq's label-length tolerance
                assert all(0 <= i < IT2_CLUSTERS for i in ids)


@pytest.mark.e2e
def test_federated_codebook_matches_centralized_kmeans_on_the_same_features(iteration2):
    out, checkpoint = iteration2
    features = CheckpointFeatures(str(checkpoint), layer=2, device="cpu")
    pooled = pooled_features(sorted((out / "clients").iterdir()), features)
    federated = float(nearest(pooled, np.load(out / "kmeans" / "codebook.npy"))[1].sum())
    centralized = KMeans(n_clusters=IT2_CLUSTERS, n_init=10, random_state=0).fit(pooled).inertia_
    assert federated <= 1.05 * centralized, (federated, centralized)


@pytest.mark.e2e
@pytest.mark.parametrize("continued", [False, True])
def test_a_round_of_pretraining_on_iteration2_targets(iteration2, tmp_path, continued):
    out, checkpoint = iteration2
    settings = pretrain_settings(
        out, tmp_path, rounds=1, label_rate=50, n_clusters=IT2_CLUSTERS, init_from=str(checkpoint) if continued else ""
    )
    simulate_pretraining(settings, num_clients=4)
    (line,) = metric_lines(tmp_path)
    assert line["participants"] == ["client_000", "client_001", "client_002", "client_003"] and line["rejected"] == []
    assert np.isfinite(line["train"]["loss"]) and all(np.isfinite(list(valid_losses(tmp_path).values())))
    saved = load_checkpoint(tmp_path / "server" / "checkpoint_last.pt")
    assert saved["cfg"]["task"]["label_rate"] == 50 and saved["model"]["label_embs_concat"].shape[0] == IT2_CLUSTERS + 4
