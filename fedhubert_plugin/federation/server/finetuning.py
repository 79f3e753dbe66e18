"""Federated CTC fine-tuning: a run whose recipe fine-tunes (fairseq's ``task.fine_tuning``, ``hubert_ctc``).

The rounds are pretraining's (``rounds``); what differs is settled here, once, before the first round, under
both launchers (``fedhubert finetune`` and ``flwr run`` with ``recipe`` and ``init-from`` in the run config):
``init-from`` names the pretrained HuBERT, read on the server only, which becomes fairseq's ``model.w2v_path``
together with its waveform normalisation (``task.normalize``, which fairseq requires to agree); the labels are
letters, one sequence per utterance, not frames (label rate -1). The server builds the CTC model from that
checkpoint (``recipes.recipe_initial_model``) and sends the clients its config with the weights, so no client
needs the pretrained file. Each client trains on its ``finetune/`` folder (``fedhubert prepare``), and the best
round is the one of lowest pooled validation WER (``checkpointing.best_metric``).
"""

from dataclasses import replace

from fedhubert_plugin.checkpoints import load_checkpoint, normalization_of
from fedhubert_plugin.federation.settings import FederationSettings, SettingsError, spelled
from fedhubert_plugin.recipes import compose_recipe

LETTERS = -1.0  # fairseq's label rate of sequence labels


def fine_tuning_settings(settings: FederationSettings) -> FederationSettings:
    """``settings`` as a fine-tuning run needs them when its recipe fine-tunes, else unchanged: the pretrained
    checkpoint and its normalisation before the user's overrides (which win), and the letters' label rate."""
    if not compose_recipe(settings.recipe, settings.overrides).task.get("fine_tuning"):
        return settings
    pretrained = settings.init_from
    if not pretrained:
        raise SettingsError(
            f"setting {spelled('init_from')}: recipe {settings.recipe} fine-tunes a pretrained HuBERT; give its "
            "checkpoint (SAVE/server/checkpoint_best.pt of `fedhubert pretrain`; `fedhubert finetune --init`)"
        )
    state = load_checkpoint(pretrained)
    if "cfg" not in state:
        raise SettingsError(
            f"setting {spelled('init_from')}: {pretrained} is in s3prl's format, which fairseq's hubert_ctc cannot "
            "start from; give the fairseq-format checkpoint_best.pt beside it"
        )
    ours = [f"model.w2v_path={pretrained}", f"task.normalize={normalization_of(state, pretrained)}"]
    return replace(settings, overrides=ours + list(settings.overrides), label_rate=LETTERS)
