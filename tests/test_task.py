"""fed_hubert_pretraining reads a client shard and names the file when the shard is wrong."""

import shutil

import pytest

import fedhubert_plugin  # noqa: F401
from fedhubert_plugin.tasks.fed_hubert_pretraining import ShardError
from tests.helpers import setup_fed_task


def copy_shard(client_shard, tmp_path):
    shard = tmp_path / "client"
    shutil.copytree(client_shard, shard)
    return shard


def test_loads_a_good_shard(client_shard):
    task = setup_fed_task(client_shard)
    task.load_dataset("train")
    dataset = task.datasets["train"]
    assert len(dataset) == 48
    item = dataset[0]
    assert item["source"].ndim == 1 and item["label_list"][0].ndim == 1
    assert len(task.dictionaries[0]) == 8 + 4  # 8 label symbols + fairseq's 4 specials


def test_label_count_mismatch_names_both_files(client_shard, tmp_path):
    shard = copy_shard(client_shard, tmp_path)
    label_file = shard / "labels" / "train.km"
    label_file.write_text("".join(label_file.read_text().splitlines(keepends=True)[:-1]))
    task = setup_fed_task(shard)
    with pytest.raises(ShardError) as err:
        task.load_dataset("train")
    message = str(err.value)
    assert str(label_file) in message and str(shard / "train.tsv") in message
    assert "47 lines" in message and "48 utterances" in message


def test_missing_label_file_and_dictionary_are_named(client_shard, tmp_path):
    shard = copy_shard(client_shard, tmp_path)
    (shard / "labels" / "valid.km").unlink()
    with pytest.raises(ShardError, match=str(shard / "labels" / "valid.km")):
        setup_fed_task(shard).load_dataset("valid")
    (shard / "labels" / "dict.km.txt").unlink()
    with pytest.raises(ShardError, match=str(shard / "labels" / "dict.km.txt")):
        setup_fed_task(shard).load_dataset("train")


def test_labels_the_dictionary_does_not_list_are_refused(client_shard, tmp_path):
    """fairseq would read them as <unk>: with an empty dictionary every target is the same, and the run looks
    excellent (masked accuracy 0.41 after 2 updates in docs/training-curves.md) while learning nothing."""
    shard = copy_shard(client_shard, tmp_path)
    dictionary = shard / "labels" / "dict.km.txt"
    dictionary.write_text("")
    with pytest.raises(ShardError) as err:
        setup_fed_task(shard).load_dataset("train")
    assert str(dictionary) in str(err.value) and "uses 8 labels that its dictionary" in str(err.value)


def test_missing_manifest_is_named(client_shard, tmp_path):
    shard = copy_shard(client_shard, tmp_path)
    with pytest.raises(ShardError, match=str(shard / "test.tsv")):
        setup_fed_task(shard).load_dataset("test")


def test_labels_made_at_another_rate_are_refused_with_the_fix(client_shard, tmp_path):
    shard = copy_shard(client_shard, tmp_path)
    (shard / "labels" / "labels.json").write_text('{"label_rate": 50, "features": "seed"}')
    with pytest.raises(ShardError) as err:
        setup_fed_task(shard).load_dataset("train")
    assert str(shard / "labels" / "labels.json") in str(err.value) and "task.label_rate=50" in str(err.value)
    # labels.json is wrong here (these labels are at 100 Hz): the per-utterance check catches it
    with pytest.raises(ShardError, match=r"train.km line 1 has \d+ labels \(\d+\.\d+ s at 50.0 Hz\)"):
        setup_fed_task(shard, label_rate=50).load_dataset("train")


def test_an_utterance_with_too_few_labels_is_named_with_its_line(client_shard, tmp_path):
    shard = copy_shard(client_shard, tmp_path)
    label_file = shard / "labels" / "train.km"
    lines = label_file.read_text().splitlines()
    lines[4] = " ".join(lines[4].split()[: len(lines[4].split()) // 2])  # half the frames: labels of other audio
    label_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ShardError) as err:
        setup_fed_task(shard).load_dataset("train")
    message = str(err.value)
    audio = (shard / "train.tsv").read_text().splitlines()[5].split("\t")[0]
    assert f"{label_file} line 5 has" in message and audio in message and "fedhubert prepare" in message
