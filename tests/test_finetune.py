"""CTC fine-tuning data and recipes: each client's letters from its transcripts, and fairseq-hydra-train
fine-tuning a fedhubert checkpoint with them."""

import json
import re
from pathlib import Path

import editdistance
import fairseq
import pytest
from omegaconf import OmegaConf

from fedhubert_plugin.cli import main
from fedhubert_plugin.data.manifest import read_manifest
from fedhubert_plugin.data.scan import Utterance
from fedhubert_plugin.data.transcripts import ALPHABET, FINETUNE_DIR, letters, why_not_transcribed
from fedhubert_plugin.recipes import compose_recipe
from tests.helpers import REPO, fairseq_hydra_train, recipe_differences, setup_fed_task

FINETUNE_RECIPES = REPO / "recipes" / "librispeech" / "finetune"


def test_letters_are_fairseqs_ltr_format_and_odd_characters_are_refused(tmp_path):
    assert letters("AN  OWL'S") == "A N | O W L ' S |"
    u = Utterance("1-2-0003", "1", "2", "train-clean-5", "x.flac", 16000)
    assert why_not_transcribed(u, {"1-2-0003": "CAFÉ"}, tmp_path) == "characters outside the letter dictionary: 'É'"
    assert "no transcript in" in why_not_transcribed(u, {}, tmp_path)
    assert why_not_transcribed(u, {"1-2-0003": "CAFE"}, tmp_path) == ""


def test_fine_tuning_without_padded_audio_is_refused(tmp_path):
    task = setup_fed_task(tmp_path, fine_tuning=True, labels=["ltr"], label_rate=-1, pad_audio=False)
    with pytest.raises(ValueError, match=r"task.fine_tuning=true needs task.pad_audio=true"):
        task.load_dataset("train")


@pytest.mark.e2e
def test_each_client_gets_letters_words_and_one_shared_dictionary(prepared, messy_librispeech):
    root, bad = messy_librispeech
    transcripts = {}
    for path in root.rglob("*.trans.txt"):
        transcripts.update(line.split(" ", 1) for line in path.read_text().splitlines())
    report = json.loads((prepared / "report.json").read_text())
    untranscribed = {row["path"] for row in report["left_out_of_finetuning"]}
    assert untranscribed and all(str(bad["untranscribed"]) in path for path in untranscribed)
    dictionaries = set()
    fine_tuned = set()
    for client in sorted((prepared / "clients").iterdir()):
        folder = client / FINETUNE_DIR
        dictionaries.add(tuple(line.split()[0] for line in (folder / "dict.ltr.txt").read_text().splitlines()))
        for split in ("train", "valid"):
            audio_root, rows = read_manifest(folder / f"{split}.tsv")
            _, pretraining_rows = read_manifest(client / f"{split}.tsv")
            assert set(rows) <= set(pretraining_rows)
            words = (folder / f"{split}.wrd").read_text().splitlines()
            ltr = (folder / f"{split}.ltr").read_text().splitlines()
            assert len(rows) == len(words) == len(ltr)
            for (relative, _), line, letter_line in zip(rows, words, ltr):
                utterance_id = Path(relative).stem
                assert line == transcripts[utterance_id].strip() and letter_line == letters(line)
                fine_tuned.add(str((audio_root / relative).resolve()))
    assert dictionaries == {ALPHABET}  # the same symbols in the same order on every client
    assert not fine_tuned & {str(Path(p).resolve()) for p in untranscribed}
    assert len(fine_tuned) + len(untranscribed) == 59  # every usable utterance: fine-tuned or reported


FAIRSEQ_BASE_10H = Path(fairseq.__file__).parent / "examples" / "hubert" / "config" / "finetune" / "base_10h.yaml"
# (section, key) where base_10h.yaml differs from fairseq's on purpose
INTENDED = {
    ("common", "fp16"): "fedhubert composes recipes with common.fp16=false on a machine without a GPU",
    ("task", "_name"): "fed_hubert_pretraining: fairseq's task with checks that name the offending file",
    ("task", "pad_audio"): "true: fairseq's default crops each batch to its shortest utterance, transcripts whole",
    ("task", "random_crop"): "false: whole utterances",
    ("model", "_name"): "fed_hubert_ctc: fairseq's hubert_ctc with the config field its encoder reads",
}


def test_the_base_10h_recipe_is_fairseqs_but_for_the_intended_differences():
    fairseq = OmegaConf.load(FAIRSEQ_BASE_10H)
    del fairseq["hydra"]  # its sweep folders interpolate hydra's own job name
    theirs = OmegaConf.to_container(fairseq, resolve=True)
    ours = OmegaConf.to_container(
        compose_recipe("base_10h", ["task.data=d", "task.label_dir=d", "model.w2v_path=m"]), resolve=True
    )
    sections = ("common", "checkpoint", "task", "dataset", "criterion", "optimization", "optimizer", "lr_scheduler")
    assert not recipe_differences(theirs, ours, (*sections, "model"), INTENDED)
    assert (ours["task"]["pad_audio"], ours["task"]["random_crop"], ours["model"]["_name"]) == (
        True,
        False,
        "fed_hubert_ctc",
    )


@pytest.mark.e2e
def test_fairseq_hydra_train_fine_tunes_a_fedhubert_checkpoint_and_asr_eval_scores_it(prepared, trained_run, tmp_path):
    folder = prepared / "clients" / "client_000" / FINETUNE_DIR
    overrides = [
        f"task.data={folder}",
        f"task.label_dir={folder}",
        f"model.w2v_path={trained_run['checkpoint']}",
        "optimization.max_update=6",
        "model.freeze_finetune_updates=2",
        f"checkpoint.save_dir={tmp_path / 'checkpoints'}",
    ]
    log = fairseq_hydra_train(FINETUNE_RECIPES, "tiny_ctc", overrides, tmp_path)
    valid = [json.loads(line[line.index("{") :]) for line in log.splitlines() if '"valid_wer"' in line]
    assert valid and all(float(v["valid_wer"]) >= 0 and float(v["valid_loss"]) > 0 for v in valid)
    assert int(valid[-1]["valid_num_updates"]) == 6
    trained = [float(m) for m in re.findall(r'"train_loss": "([0-9.]+)"', log)]
    assert trained and all(loss > 0 for loss in trained)
    from fedhubert_plugin.checkpoints import load_checkpoint

    state = load_checkpoint(tmp_path / "checkpoints" / "checkpoint_best.pt")
    assert state["cfg"]["model"]["_name"] == "fed_hubert_ctc" and state["cfg"]["task"]["fine_tuning"]
    assert state["model"]["w2v_encoder.proj.weight"].shape[0] == len(ALPHABET) + 4  # letters and fairseq's specials

    held_out = prepared / "clients" / "client_001" / FINETUNE_DIR  # other speakers than the fine-tuning client's
    out = tmp_path / "asr_eval"
    checkpoint = tmp_path / "checkpoints" / "checkpoint_best.pt"
    assert main(["asr-eval", "--checkpoint", str(checkpoint), "--data", str(held_out), "--out", str(out)]) == 0
    _, rows = read_manifest(held_out / "valid.tsv")
    expected = dict(zip((path for path, _ in rows), (held_out / "valid.wrd").read_text().splitlines()))
    references = dict(line.split("\t") for line in (out / "ref.word").read_text().splitlines())
    hypotheses = dict(line.split("\t") for line in (out / "hypo.word").read_text().splitlines())
    assert references == expected and set(hypotheses) == set(expected)
    errors = sum(editdistance.eval(hypotheses[k].split(), references[k].split()) for k in references)
    result = json.loads((out / "wer.json").read_text())
    assert result["word_errors"] == errors and result["words"] == sum(len(r.split()) for r in references.values())
    assert result["wer"] == pytest.approx(100 * errors / result["words"])
    # a pretraining checkpoint is refused with what to pass instead
    assert (
        main(["asr-eval", "--checkpoint", str(trained_run["checkpoint"]), "--data", str(held_out), "--out", str(out)])
        == 1
    )
