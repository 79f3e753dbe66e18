"""``fedhubert asr-eval``: word error rate of a CTC fine-tuned checkpoint, decoded with fairseq's parts.

fairseq's ``examples/speech_recognition/new/infer.py`` does not import on Python 3.11 (its ``InferConfig``
has a dataclass default that 3.11 refuses), so this runs its steps with the same fairseq pieces: the task of
the checkpoint pointed at ``--data``, the model from ``checkpoint_utils``, fairseq's ``Decoder`` (Viterbi, or
with ``--lm`` and ``--lexicon`` its KenLM lexicon decoder on flashlight-text, with the defaults of fairseq's
HuBERT ``infer_kenlm.yaml``) through ``task.inference_step``, letters to words with
``post_process(..., "letter")`` and ``editdistance`` over words. Writes ``OUT/hypo.word`` and ``OUT/ref.word``
(one line per utterance, its manifest path first) and ``OUT/wer.json``.
"""

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import editdistance
import fairseq.examples
import torch
from fairseq import checkpoint_utils, tasks, utils
from fairseq.data.data_utils import post_process
from omegaconf import OmegaConf

# fairseq's speech_recognition example imports its parts as `examples.…`, from a checkout's root: the package
# ships them as `fairseq.examples`, under that name they import
sys.modules.setdefault("examples", fairseq.examples)
from examples.speech_recognition.new.decoders.decoder import Decoder  # noqa: E402
from examples.speech_recognition.new.decoders.decoder_config import (  # noqa: E402
    DecoderConfig,
    FlashlightDecoderConfig,
)

from fedhubert_plugin.checkpoints import CheckpointError, load_checkpoint  # noqa: E402
from fedhubert_plugin.configs import AsrEvalConfig  # noqa: E402
from fedhubert_plugin.console import progress_bar  # noqa: E402
from fedhubert_plugin.files import atomic_write_json, atomic_write_text  # noqa: E402

logger = logging.getLogger(__name__)

CTC_MODELS = ("fed_hubert_ctc", "hubert_ctc")


@dataclass
class DecodingConfig(DecoderConfig, FlashlightDecoderConfig):
    """fairseq's decoder choice and its flashlight (KenLM) options in one config, as ``infer.py`` combines them."""


def decoding(cfg: AsrEvalConfig) -> DecodingConfig:
    """Viterbi, or with ``cfg.lm`` the KenLM lexicon decoder; a clear error when its files are missing."""
    if not cfg.lm:
        return DecodingConfig(type="viterbi")
    if not cfg.lexicon:
        raise ValueError(
            f"--lm {cfg.lm} needs --lexicon: fairseq's KenLM decoder spells each word of the language model in "
            "letters from a lexicon (lines 'WORD<TAB>W O R D |', e.g. LibriSpeech's librispeech_lexicon.lst)"
        )
    for path, option in ((cfg.lm, "--lm"), (cfg.lexicon, "--lexicon")):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{option} {path} not found")
    return DecodingConfig(
        type="kenlm",
        lmpath=str(cfg.lm),
        lexicon=str(cfg.lexicon),
        beam=cfg.beam,
        beamthreshold=100.0,  # infer_kenlm.yaml's
        lmweight=cfg.lm_weight,
        wordscore=cfg.word_score,
        silweight=0.0,
    )


def fine_tuned_task(cfg: AsrEvalConfig):
    """The checkpoint's task (fine-tuning, letters) reading ``cfg.data``; a clear error for another checkpoint."""
    state = load_checkpoint(cfg.checkpoint)
    saved = state.get("cfg") or {}
    if saved.get("model", {}).get("_name") not in CTC_MODELS:
        raise CheckpointError(
            f"{cfg.checkpoint} is not a CTC fine-tuned model (model {saved.get('model', {}).get('_name')!r}); "
            "pass the checkpoint_best.pt of a fine-tuning run (recipes/librispeech/finetune/)"
        )
    task_cfg = OmegaConf.create(saved["task"])
    task_cfg.data = task_cfg.label_dir = str(cfg.data)
    return tasks.setup_task(task_cfg)


def decode_subset(cfg: AsrEvalConfig) -> Tuple[List[str], List[str], List[str]]:
    """Manifest paths, hypotheses and references (words) of every utterance of ``cfg.subset``."""
    settings = decoding(cfg)
    task = fine_tuned_task(cfg)
    (model,), _ = checkpoint_utils.load_model_ensemble([str(cfg.checkpoint)], task=task)
    model.eval()
    task.load_dataset(cfg.subset)
    dataset = task.dataset(cfg.subset)
    batches = task.get_batch_iterator(dataset, max_tokens=cfg.max_tokens, required_batch_size_multiple=1)
    decoder = Decoder(settings, task.target_dictionary)
    letters = task.target_dictionary
    ids, hypotheses, references = [], [], []
    for sample in progress_bar(batches.next_epoch_itr(shuffle=False), desc="asr-eval", unit="batch"):
        with torch.no_grad():
            hypos = task.inference_step(decoder, [model], sample)
        for row, sample_id in enumerate(sample["id"].tolist()):
            target = utils.strip_pad(sample["target"][row], letters.pad())
            ids.append(dataset.audio_names[sample_id])
            hypotheses.append(post_process(letters.string(hypos[row][0]["tokens"].int()), "letter"))
            references.append(post_process(letters.string(target.int()), "letter"))
    return ids, hypotheses, references


def evaluate_wer(cfg: AsrEvalConfig) -> Dict:
    """Decode ``cfg.subset`` of ``cfg.data`` and write the hypotheses, references and WER under ``cfg.out``."""
    ids, hypotheses, references = decode_subset(cfg)
    errors = sum(editdistance.eval(h.split(), r.split()) for h, r in zip(hypotheses, references))
    words = sum(len(r.split()) for r in references)
    result = {
        "checkpoint": str(cfg.checkpoint),
        "data": str(cfg.data),
        "subset": cfg.subset,
        "decoder": f"kenlm {cfg.lm}" if cfg.lm else "viterbi",
        "out": str(cfg.out),
        "utterances": len(ids),
        "words": words,
        "word_errors": errors,
        "wer": 100.0 * errors / max(words, 1),
    }
    atomic_write_text(cfg.out / "hypo.word", "".join(f"{i}\t{h}\n" for i, h in zip(ids, hypotheses)))
    atomic_write_text(cfg.out / "ref.word", "".join(f"{i}\t{r}\n" for i, r in zip(ids, references)))
    atomic_write_json(cfg.out / "wer.json", result)
    return result


def wer_line(result: Dict) -> str:
    """The line ``fedhubert asr-eval`` prints."""
    return (
        f"WER {result['wer']:.2f} % ({result['word_errors']} word errors in {result['words']} words, "
        f"{result['utterances']} utterances of {result['subset']}); hypotheses in {Path(result['out'])}"
    )
