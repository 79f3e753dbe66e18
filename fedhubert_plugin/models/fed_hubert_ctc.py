"""fairseq model ``fed_hubert_ctc``: fairseq's ``hubert_ctc`` (HuBERT with a CTC letter head), buildable.

fairseq 0.12's ``HubertEncoder`` reads ``cfg.autoregressive``, a field its ``HubertCtcConfig`` does not declare,
so ``model._name=hubert_ctc`` stops with "Key 'autoregressive' not in 'HubertCtcConfig'" (fairseq issue 4916).
This config declares it, off, as CTC needs; the model is fairseq's, unchanged.
"""

from dataclasses import dataclass, field

from fairseq.models import register_model
from fairseq.models.hubert.hubert_asr import HubertCtc, HubertCtcConfig


@dataclass
class FedHubertCtcConfig(HubertCtcConfig):
    """``HubertCtcConfig`` and the field its encoder reads."""

    autoregressive: bool = field(default=False, metadata={"help": "false for CTC: no decoder inputs"})


@register_model("fed_hubert_ctc", dataclass=FedHubertCtcConfig)
class FedHubertCtc(HubertCtc):
    """fairseq's ``HubertCtc`` under the config above."""
