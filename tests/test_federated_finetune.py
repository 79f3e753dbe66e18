"""Federated CTC fine-tuning: `fedhubert finetune` from a pretrained checkpoint, fairseq's hubert_ctc on every
client's letters, the encoder frozen on the run's clock, WER pooled over clients, the best round by it, resume, and
a global checkpoint that decodes without the pretrained file."""

import filecmp
import json
import shutil

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils
from omegaconf import OmegaConf

from fedhubert_plugin.checkpoints import as_s3prl_state, load_checkpoint
from fedhubert_plugin.cli import main
from fedhubert_plugin.data import ALPHABET, FINETUNE_DIR
from fedhubert_plugin.federation.client.local_trainer import LocalTrainer
from fedhubert_plugin.federation.client.work import FitTask, TrainerSpec
from fedhubert_plugin.federation.schedule import plan_schedule, scheduled_overrides
from fedhubert_plugin.federation.server.finetuning import fine_tuning_settings
from fedhubert_plugin.federation.server.runlog import read_metrics, validations
from fedhubert_plugin.federation.server.validation import averaged_validation
from fedhubert_plugin.federation.settings import FederationSettings, SettingsError
from fedhubert_plugin.recipes import encoder_args
from tests.helpers import TINY, write_bigram_lm

# 2 rounds of 3 updates, the encoder frozen for the first 3: all of round 1
RUN = ["--num-server-rounds", "2", "--local-updates", "3"]
SCHEDULE = ["optimization.max_update=6", "model.freeze_finetune_updates=3"]
ENCODER = "w2v_encoder.w2v_model."


def finetune(prepared, pretrained, save, *extra):
    argv = ["finetune", "--data-root", str(prepared), "--init", str(pretrained), "--save-dir", str(save), *extra]
    assert main(argv) == 0


@pytest.fixture(scope="module")
def finetuned(prepared, trained_run, tmp_path_factory):
    """`fedhubert finetune` of the 4 prepared clients from a copy of trained_run's checkpoint, deleted after the run:
    nothing after it may need the pretrained file. The save dir."""
    folder = tmp_path_factory.mktemp("finetuned")
    pretrained = folder / "pretrained.pt"
    shutil.copyfile(trained_run["checkpoint"], pretrained)
    finetune(prepared, pretrained, folder / "save", *RUN, *SCHEDULE)
    pretrained.unlink()
    return folder / "save"


@pytest.mark.e2e
def test_validation_wer_is_pooled_over_clients_and_picks_the_best_round(finetuned):
    found = validations(read_metrics(finetuned))
    assert sorted(found) == [0, 1, 2]  # the initial model, round 1's (before round 2) and round 2's (evaluation)
    for validation in found.values():
        clients = list(validation["clients"].values())
        assert len(clients) == 4
        errors, words = sum(c["word_errors"] for c in clients), sum(c["words"] for c in clients)
        assert words > 0 and validation["metrics"]["words"] == words
        assert validation["metrics"]["wer"] == pytest.approx(100 * errors / words)  # all words, not per client
        assert validation["metrics"]["loss"] > 0
    best = min((1, 2), key=lambda r: found[r]["metrics"]["wer"])
    server = finetuned / "server"
    assert read_metrics(finetuned)[-1]["best_round"] == best
    assert filecmp.cmp(server / "checkpoint_best.pt", server / f"checkpoint_round{best}.pt", shallow=False)
    assert not (server / "best_global_model.pt").exists()  # s3prl's HuBERT format holds no CTC model
    state = load_checkpoint(server / "checkpoint_best.pt")
    assert state["cfg"]["model"]["_name"] == "fed_hubert_ctc" and state["cfg"]["task"]["fine_tuning"]
    assert state["model"]["w2v_encoder.proj.weight"].shape[0] == len(ALPHABET) + 4


@pytest.mark.e2e
def test_the_encoder_is_frozen_for_the_first_updates_of_the_run_not_of_each_round(finetuned, trained_run):
    pretrained = load_checkpoint(trained_run["checkpoint"])["model"]
    rounds = {r: load_checkpoint(finetuned / "server" / f"checkpoint_round{r}.pt")["model"] for r in (1, 2)}
    layer, conv = "encoder.layers.0.fc1.weight", "feature_extractor.conv_layers.0.0.weight"
    assert torch.equal(rounds[1][ENCODER + layer], pretrained[layer])  # updates 1-3: frozen
    assert not torch.equal(rounds[2][ENCODER + layer], rounds[1][ENCODER + layer])  # update 4 on: trained
    assert not torch.equal(rounds[2]["w2v_encoder.proj.weight"], rounds[1]["w2v_encoder.proj.weight"])
    assert torch.equal(rounds[2][ENCODER + conv], pretrained[conv])  # the recipe's feature_grad_mult 0


@pytest.mark.e2e
def test_the_global_checkpoint_trains_and_decodes_without_the_pretrained_file(finetuned, prepared, tmp_path):
    best = finetuned / "server" / "checkpoint_best.pt"
    state = load_checkpoint(best)
    assert state["cfg"]["model"]["w2v_args"]["model"]["_name"] == "hubert"  # the fixture deleted the pretrained file
    folder = prepared / "clients" / "client_001" / FINETUNE_DIR
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(best)], arg_overrides={"data": str(folder)})
    assert type(models[0]).__name__ == "FedHubertCtc" and task.target_dictionary.symbols[4:] == list(ALPHABET)
    out = tmp_path / "asr_eval"
    assert main(["asr-eval", "--checkpoint", str(best), "--data", str(folder), "--out", str(out)]) == 0
    assert json.loads((out / "wer.json").read_text())["words"] > 0
    # a client's trainer, as a node builds it from a train message: the recipe, the overrides (naming the
    # pretrained file, gone) and the pretrained config that came with the weights
    overrides = json.loads((finetuned / "server" / "settings.json").read_text())["overrides"]
    spec = TrainerSpec("tiny_ctc", tuple(overrides), -1.0, encoder_args=encoder_args(OmegaConf.create(state["cfg"])))
    arrays = {k: v.numpy() for k, v in state["model"].items()}
    result = LocalTrainer(spec).fit(FitTask(prepared / "clients" / "client_000", arrays, 3, local_updates=1))
    assert result.metrics["updates"] == 1 and result.arrays.keys() == arrays.keys()


@pytest.mark.e2e
def test_asr_eval_decodes_with_a_kenlm_language_model_and_its_lexicon(finetuned, prepared, tmp_path, capsys):
    trained = sorted((prepared / "clients").glob(f"*/{FINETUNE_DIR}/train.wrd"))
    sentences = [line.split() for path in trained for line in path.read_text().splitlines()]
    lm, lexicon = write_bigram_lm(sentences, tmp_path)
    folder, out = prepared / "clients" / "client_001" / FINETUNE_DIR, tmp_path / "kenlm"
    argv = ["asr-eval", "--checkpoint", str(finetuned / "server" / "checkpoint_best.pt"), "--data", str(folder)]
    assert main([*argv, "--out", str(out), "--lm", str(lm)]) == 1
    assert f"--lm {lm} needs --lexicon" in capsys.readouterr().err
    # a high word score: the barely trained model still spells words, which the lexicon decoder takes from the LM's
    kenlm = ["--lm", str(lm), "--lexicon", str(lexicon), "--beam", "50", "--word-score", "5"]
    assert main([*argv, "--out", str(out), *kenlm]) == 0
    result = json.loads((out / "wer.json").read_text())
    assert result["decoder"] == f"kenlm {lm}" and result["words"] > 0
    hypotheses = [line.split("\t")[1].split() for line in (out / "hypo.word").read_text().splitlines()]
    assert any(hypotheses) and set().union(*hypotheses) <= {w for sentence in sentences for w in sentence}


@pytest.mark.e2e
def test_resumed_fine_tuning_equals_the_uninterrupted_run(finetuned, prepared, trained_run, tmp_path):
    pretrained = tmp_path / "pretrained.pt"
    shutil.copyfile(trained_run["checkpoint"], pretrained)
    finetune(prepared, pretrained, tmp_path / "save", "--num-server-rounds", "1", "--local-updates", "3", *SCHEDULE)
    finetune(prepared, pretrained, tmp_path / "save", *RUN, "--resume", *SCHEDULE)
    assert [line["round"] for line in read_metrics(tmp_path / "save")] == [1, 2]
    resumed = load_checkpoint(tmp_path / "save" / "server" / "checkpoint_last.pt")["model"]
    straight = load_checkpoint(finetuned / "server" / "checkpoint_round2.pt")["model"]
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)


@pytest.mark.e2e
def test_a_fine_tuning_run_needs_a_fairseq_format_pretrained_checkpoint(trained_run, tmp_path):
    settings = FederationSettings(save_dir=str(tmp_path), recipe="tiny_ctc", data_root=str(tmp_path))
    with pytest.raises(SettingsError, match=r"--init-from .*recipe tiny_ctc fine-tunes a pretrained HuBERT"):
        fine_tuning_settings(settings)
    s3prl_format = tmp_path / "best_global_model.pt"
    torch.save(as_s3prl_state(load_checkpoint(trained_run["checkpoint"]), "trained"), s3prl_format)
    with pytest.raises(SettingsError, match=r"s3prl's format.*give the fairseq-format checkpoint_best.pt"):
        fine_tuning_settings(FederationSettings(**{**settings.__dict__, "init_from": str(s3prl_format)}))
    pretrained = str(trained_run["checkpoint"])
    ready = fine_tuning_settings(
        FederationSettings(**{**settings.__dict__, "overrides": ["task.normalize=true"], "init_from": pretrained})
    )
    assert ready.overrides == [
        f"model.w2v_path={pretrained}",
        "task.normalize=false",
        "task.normalize=true",
    ]  # users win
    assert ready.label_rate == -1.0
    pretraining = FederationSettings(save_dir=str(tmp_path), recipe=TINY, init_from=pretrained)
    assert fine_tuning_settings(pretraining) is pretraining


def test_the_frozen_encoder_and_tri_stage_phases_follow_the_run_length():
    assert scheduled_overrides("tiny_ctc", [], 40)[-2:] == [
        "optimization.max_update=40",
        "model.freeze_finetune_updates=4",
    ]
    kept = ["model.freeze_finetune_updates=7"]
    assert scheduled_overrides("tiny_ctc", kept, 40) == [*kept, "optimization.max_update=40"]
    settings = FederationSettings(recipe="tiny_ctc", num_server_rounds=4, local_updates=10)
    schedule = plan_schedule(settings)
    assert (schedule.max_update, schedule.warmup) == (40, 4)  # tri_stage's phase_ratio: 10 % warm-up
    assert "encoder frozen for the first 4" in schedule.describe(settings)


def test_error_rates_are_pooled_over_all_words_not_averaged_over_clients():
    rows = {
        "a": {"loss": 1.0, "wer": 50.0, "word_errors": 1.0, "words": 2.0, "num-examples": 1},
        "b": {"loss": 3.0, "wer": 0.0, "word_errors": 0.0, "words": 8.0, "num-examples": 1},
    }
    metrics = averaged_validation(1, rows).metrics
    assert metrics["wer"] == pytest.approx(10.0) and metrics["loss"] == pytest.approx(2.0)
    assert (metrics["word_errors"], metrics["words"]) == (1.0, 10.0)
    assert np.isnan(averaged_validation(1, {"a": {**rows["a"], "words": 0.0}}).metrics["wer"])
