"""Cross-device style: a hundred clients sampled a few per round, one client per speaker."""

import json
import shutil

import pytest
import soundfile as sf

from fedhubert_plugin.cli import main
from fedhubert_plugin.configs import from_prepared_data
from fedhubert_plugin.federation.client.local_trainer import CACHED_CLIENTS
from fedhubert_plugin.federation.simulation import simulate_pretraining
from fedhubert_plugin.toy_data import TRAIN_SUBSET, write_toy_data
from tests.helpers import TINY, metric_lines, prepare_argv

CLIENTS, SAMPLED = 100, 5


@pytest.mark.e2e
def test_a_hundred_clients_sampled_five_per_round_with_a_bounded_cache(tmp_path):
    toy = write_toy_data(tmp_path / "toy", speakers=10, dev_speakers=1, utterances_per_speaker=30, keyword_speakers=2)
    data = tmp_path / "data"
    root = toy.librispeech_root
    assert main(prepare_argv(root, data, "--partition", "iid", clients=CLIENTS, subsets=(TRAIN_SUBSET,))) == 0
    assert json.loads((data / "prepare.json").read_text())["num_clients"] == CLIENTS  # federated k-means over all
    settings = from_prepared_data(
        str(data),
        save_dir=str(tmp_path / "save"),
        recipe=TINY,
        num_server_rounds=2,
        local_updates=2,
        fraction_train=SAMPLED / CLIENTS,
        min_train_nodes=SAMPLED,
        evaluate_every=1,
    )
    simulate_pretraining(settings, num_clients=CLIENTS)
    first, second = metric_lines(tmp_path / "save")
    assert len(first["participants"]) == len(second["participants"]) == SAMPLED
    for line in (first, second):
        evaluation = line["validations"][-1]
        assert evaluation["how"] == "evaluation" and len(evaluation["clients"]) == CLIENTS
    # the two Ray actors validated 50 clients each in round 1, and keep only the last ones' tasks
    assert all(client["train_cached_clients"] == CACHED_CLIENTS for client in second["clients"].values())


@pytest.mark.e2e
def test_zero_clients_prepare_one_client_per_speaker(toy_corpus, tmp_path):
    out = tmp_path / "data"
    assert main(prepare_argv(toy_corpus / "LibriSpeech", out, "--kmeans", "local", clients=0)) == 0
    partition = json.loads((out / "partition.json").read_text())
    speakers = [client["speakers"] for client in partition["clients"].values()]
    assert len(speakers) == 10 and all(len(s) == 1 for s in speakers)  # 8 train and 2 dev speakers
    assert json.loads((out / "prepare.json").read_text())["num_clients"] == 10
    assert sorted(p.name for p in (out / "clients").iterdir()) == [f"client_{i:03d}" for i in range(10)]


@pytest.mark.e2e
def test_a_speaker_with_one_usable_utterance_is_left_out_and_reported_not_fatal(toy_corpus, tmp_path):
    root = tmp_path / "LibriSpeech"
    shutil.copytree(toy_corpus / "LibriSpeech" / TRAIN_SUBSET, root / TRAIN_SUBSET)
    speaker = sorted((root / TRAIN_SUBSET).iterdir())[0]
    kept, *shortened = sorted(speaker.rglob("*.flac"))
    for flac in shortened:  # under --min-seconds 1.0: skipped as too short, so one usable utterance is left
        wav, rate = sf.read(flac, dtype="float32")
        sf.write(flac, wav[: rate // 2], rate)
    out = tmp_path / "data"
    argv = prepare_argv(root, out, "--kmeans", "local", clients=0, subsets=(TRAIN_SUBSET,))
    assert main(argv) == 0
    (left_out,) = json.loads((out / "report.json").read_text())["left_out_clients"]
    assert left_out["speakers"] == [speaker.name] and left_out["utterances"] == [str(kept)]
    assert left_out["reason"].startswith("1 usable utterance(s) with --partition speaker: a client needs 2")
    assert json.loads((out / "prepare.json").read_text())["num_clients"] == 7  # the other 7 train speakers
    manifests = "".join(p.read_text() for p in (out / "clients").rglob("*.tsv"))
    assert kept.name not in manifests
