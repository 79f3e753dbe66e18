"""`fedhubert superb`: the SUPERB tasks that run here, on several checkpoints, one table; a rerun resumes."""

import json
from pathlib import Path

import pytest

from fedhubert_plugin.cli import main
from fedhubert_plugin.superb import SuperbConfig, task_data


@pytest.mark.e2e
def test_superb_tables_each_checkpoint_beside_hubert_base_and_a_rerun_resumes(federated_run, superb_corpora, tmp_path):
    toy = Path(superb_corpora.fluent_commands_root).parent
    ckpt = federated_run / "server" / "checkpoint_best.pt"
    out = tmp_path / "superb"
    argv = ["superb", "--checkpoint", f"federated={ckpt}", "--random-init", "--toy", str(toy), "--tasks", "ic"]
    assert main([*argv, "--out", str(out)]) == 0
    table = json.loads((out / "superb.json").read_text())
    assert list(table["scores"]["ic"]) == ["federated", "federated (random init)"]
    for name, folder in (("federated", "federated"), ("federated (random init)", "federated_random_init")):
        done = json.loads((out / "ic" / folder / "test.json").read_text())
        assert table["scores"]["ic"][name] == pytest.approx(done["score"]) == 100 * done["test_acc"]
        assert (out / "ic" / folder / "test_predict.csv").is_file()  # what SUPERB scores stays with the run
    assert table["checkpoints"]["federated (random init)"] == str(out / "random_init" / "federated.pt")
    markdown = (out / "superb.md").read_text()
    ours, fresh = table["scores"]["ic"]["federated"], table["scores"]["ic"]["federated (random init)"]
    assert f"| IC | test accuracy (%) | {ours:.2f} | {fresh:.2f} | 98.34 |" in markdown
    logs = {path: path.stat().st_mtime_ns for path in out.glob("ic/*/log.log")}
    assert main([*argv, "--out", str(out)]) == 0  # each pair done is read back, not trained again
    assert {path: path.stat().st_mtime_ns for path in out.glob("ic/*/log.log")} == logs and len(logs) == 2


def test_a_task_without_data_is_named_with_the_paths_it_takes(tmp_path):
    cfg = SuperbConfig(checkpoint=["a=x.pt"], out=tmp_path, tasks=["ic", "sid"], data=["ic=/fsc"])
    with pytest.raises(ValueError, match=r"no data for sid: pass --data TASK=PATHS \(sid: file_path, meta_data\)"):
        task_data(cfg)
    cfg.data = ["ic=/fsc", "sid=/vox1,/vox1/iden_split.txt"]
    assert task_data(cfg) == {"ic": [Path("/fsc")], "sid": [Path("/vox1"), Path("/vox1/iden_split.txt")]}
    cfg.data = ["asv=/vox1"]
    with pytest.raises(ValueError, match="--data asv=/vox1: give TASK=PATH"):
        task_data(cfg)
