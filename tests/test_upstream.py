"""The s3prl upstream hubert_local: same hidden states as s3prl's own, from every checkpoint format; the SUPERB
hidden-set folder of `fedhubert export --superb` gives the same ones with no fedhubert installed."""

import subprocess
import sys

import pytest
import torch

from fedhubert_plugin import cli
from fedhubert_plugin.checkpoints import CheckpointError
from fedhubert_plugin.export import export_initial, export_s3prl
from upstream.hubert_local.hubconf import hubert_local

TINY = "recipes/librispeech/pretrain/tiny.yaml"


def hidden_states(upstream, wavs):
    with torch.no_grad():
        return upstream.eval()(wavs)["hidden_states"]


def stock_s3prl_hubert_local(ckpt):
    from s3prl.upstream.hubert.hubconf import hubert_local as s3prl_hubert_local

    return s3prl_hubert_local(ckpt=str(ckpt))


@pytest.fixture(scope="module")
def wavs():
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(16000, generator=generator), torch.randn(11000, generator=generator)]


def assert_same_states(ours, theirs):
    assert len(ours) == len(theirs)
    for mine, stock in zip(ours, theirs):
        assert torch.equal(mine, stock)


@pytest.mark.e2e
def test_fairseq_checkpoint_loads_directly_with_s3prl_hidden_states(trained_run, wavs, tmp_path):
    fairseq_ckpt = trained_run["checkpoint"]  # fairseq-hydra-train's checkpoint_last.pt
    converted = export_s3prl(fairseq_ckpt, tmp_path / "converted.pt")
    ours_fairseq = hubert_local(ckpt=str(fairseq_ckpt))
    ours_converted = hubert_local(ckpt=str(converted))
    stock = stock_s3prl_hubert_local(converted)
    states = hidden_states(ours_fairseq, wavs)
    assert len(states) == 2 + 1  # the tiny recipe's 2 layers' inputs plus the encoder output
    assert states[0].shape == (2, 49, 128)  # 1 s of audio at 16 kHz / 320
    assert_same_states(states, hidden_states(stock, wavs))
    assert_same_states(hidden_states(ours_converted, wavs), hidden_states(stock, wavs))
    assert ours_fairseq.get_downsample_rates("hidden_states") == 320


@pytest.mark.parametrize("layers,width", [(3, 96), (1, 64)])
def test_students_of_any_width_and_depth(layers, width, wavs, tmp_path):
    shape = [
        f"model.encoder_layers={layers}",
        f"model.encoder_embed_dim={width}",
        f"model.encoder_ffn_embed_dim={2 * width}",
        "model.encoder_attention_heads=4",
        "common.cpu=true",
    ]
    student = export_initial(TINY, tmp_path / "student.pt", n_clusters=50, label_rate=100, overrides=shape)
    states = hidden_states(hubert_local(ckpt=str(student)), wavs)
    assert len(states) == layers + 1 and states[-1].shape[-1] == width
    assert_same_states(states, hidden_states(stock_s3prl_hubert_local(student), wavs))


def test_unreadable_or_foreign_checkpoints_are_refused_with_the_file(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pt"):
        hubert_local(ckpt=str(text))
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, other)
    with pytest.raises(CheckpointError, match="other.pt is neither an s3prl HuBERT checkpoint"):
        hubert_local(ckpt=str(other))


# a process where fedhubert cannot be imported: what the SUPERB committee runs has torch and s3prl only
LOAD_WITHOUT_FEDHUBERT = """
import sys
sys.modules["fedhubert_plugin"] = None
sys.modules["upstream"] = None
import torch
folder, wavs, out = sys.argv[1:]
upstream = torch.hub.load(folder, "customized_upstream", source="local")
with torch.no_grad():
    states = upstream.eval()(torch.load(wavs))["hidden_states"]
torch.save({"states": list(states), "rate": upstream.get_downsample_rates("hidden_states")}, out)
"""


@pytest.mark.e2e
def test_the_superb_hidden_set_folder_loads_without_fedhubert_with_hubert_locals_states(trained_run, wavs, tmp_path):
    folder = tmp_path / "submission"
    assert cli.main(["export", "--checkpoint", str(trained_run["checkpoint"]), "--superb", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["expert.py", "hubconf.py", "model.pt"]
    torch.save(wavs, tmp_path / "wavs.pt")
    loader = [sys.executable, "-c", LOAD_WITHOUT_FEDHUBERT, str(folder), str(tmp_path / "wavs.pt")]
    done = subprocess.run([*loader, str(tmp_path / "out.pt")], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = torch.load(tmp_path / "out.pt")
    assert loaded["rate"] == 320
    assert_same_states(loaded["states"], hidden_states(hubert_local(ckpt=str(trained_run["checkpoint"])), wavs))


def test_export_writes_a_file_or_a_superb_folder_not_both(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["export", "--initial", "tiny", "--out", str(tmp_path / "m.pt"), "--superb", str(tmp_path / "d")])
    assert "not allowed with argument" in capsys.readouterr().err
