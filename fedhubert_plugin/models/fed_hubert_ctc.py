"""fairseq model ``fed_hubert_ctc``: fairseq's ``hubert_ctc`` (HuBERT with a CTC letter head), buildable anywhere.

fairseq 0.12's ``HubertEncoder`` reads ``cfg.autoregressive``, a field its ``HubertCtcConfig`` does not declare,
so ``model._name=hubert_ctc`` stops with "Key 'autoregressive' not in 'HubertCtcConfig'" (fairseq issue 4916).
This config declares it, off, as CTC needs.

It also declares ``w2v_dictionaries``: the pretrained model's label symbols. fairseq builds the encoder from the
pretraining checkpoint (``w2v_path``), or from its config alone (``w2v_args``) and then takes the pretraining
label dictionaries from the fine-tuning task's state, reading them from the pretraining labels' folder; the
encoder keeps their size (``label_embs_concat``). With ``w2v_args`` and ``w2v_dictionaries`` the model builds
without the pretraining checkpoint or its labels: on federated clients, and from fedhubert's CTC checkpoints.
The model is fairseq's, unchanged.
"""

from dataclasses import dataclass, field
from typing import Any

from fairseq.models import register_model
from fairseq.models.hubert.hubert_asr import HubertCtc, HubertCtcConfig

from fedhubert_plugin.checkpoints import dictionary_of


@dataclass
class FedHubertCtcConfig(HubertCtcConfig):
    """``HubertCtcConfig``, the field its encoder reads, and the pretrained model's label symbols."""

    autoregressive: bool = field(default=False, metadata={"help": "false for CTC: no decoder inputs"})
    w2v_dictionaries: Any = field(
        default=None,
        metadata={"help": "the pretrained model's label symbols, one list per label set (with w2v_args)"},
    )


@register_model("fed_hubert_ctc", dataclass=FedHubertCtcConfig)
class FedHubertCtc(HubertCtc):
    """fairseq's ``HubertCtc`` under the config above."""

    @classmethod
    def build_model(cls, cfg: FedHubertCtcConfig, task):
        if cfg.w2v_args is not None and cfg.w2v_dictionaries:
            task.load_state_dict({"dictionaries": [dictionary_of(symbols) for symbols in cfg.w2v_dictionaries]})
        return super().build_model(cfg, task)
