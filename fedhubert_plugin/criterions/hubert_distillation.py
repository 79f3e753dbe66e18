"""fairseq criterion ``hubert_distillation``: a frozen HuBERT teacher teaches a smaller student.

loss = alpha * KD + (1 - alpha) * HuBERT + hidden_weight * hidden regression, where

- HuBERT is fairseq's masked-prediction loss on the k-means targets (``hubert`` criterion);
- KD is T² · KL(teacher ‖ student) of the cluster distributions at the student's masked
  frames, both softened by the temperature T. The teacher sees the unmasked audio; both
  models predict over the same cluster vocabulary (the same ``dict.km.txt``);
- the hidden regression (DistilHuBERT's L1 − log σ(cosine), per frame) pulls the output
  of student layer i (1-based, of L_s) towards teacher layer ceil(i · L_t / L_s), e.g. a
  6-layer student of a 12-layer teacher learns layers 2, 4, 6, 8, 10 and 12. When widths
  differ the teacher's states are mapped to the student's width by a fixed orthonormal
  projection (seeded, no parameters, so nothing but the student travels).

The teacher is read once per process from ``teacher_checkpoint`` (fedhubert's loader,
``weights_only=True``), kept in eval mode without gradients, and is not part of the
criterion's parameters or state: fairseq neither optimizes nor saves it, and the
federation never sends it.
"""

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Dict, List

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.criterions.hubert_criterion import HubertCriterion, HubertCriterionConfig

from fedhubert_plugin.checkpoints import load_hubert_model, matching_layer

_TEACHERS: Dict[str, torch.nn.Module] = {}
_TEACHER_NORMALIZES: Dict[str, bool] = {}  # per teacher: trained on layer-normalised waveforms


@dataclass
class HubertDistillationConfig(HubertCriterionConfig):
    teacher_checkpoint: str = field(
        default="", metadata={"help": "the teacher: a fedhubert or fairseq HuBERT checkpoint"}
    )
    alpha: float = field(default=0.5, metadata={"help": "weight of the KD term; 1 - alpha weighs the HuBERT loss"})
    temperature: float = field(default=2.0, metadata={"help": "softmax temperature of the KD term"})
    hidden_weight: float = field(default=0.0, metadata={"help": "weight of the layer-to-layer hidden-state regression"})


def frozen_teacher(path: str) -> torch.nn.Module:
    """The teacher model of ``path``, loaded once per process, in eval mode, without gradients."""
    if path not in _TEACHERS:
        teacher, task_cfg = load_hubert_model(path)
        teacher.eval().requires_grad_(False)
        _TEACHERS[path], _TEACHER_NORMALIZES[path] = teacher, bool(task_cfg.normalize)
    return _TEACHERS[path]


def check_same_input(path: str, task) -> None:
    """The student's batches are the teacher's input: both layer-normalise waveforms (HuBERT Large's task) or
    neither (Base's)."""
    teacher_normalizes = _TEACHER_NORMALIZES[path]
    if teacher_normalizes != bool(task.cfg.normalize):
        raise ValueError(
            f"teacher {path} was trained with task.normalize={str(teacher_normalizes).lower()} but the student's "
            f"task has task.normalize={str(bool(task.cfg.normalize)).lower()}: the teacher must hear audio as it was "
            f"trained on; pass task.normalize={str(teacher_normalizes).lower()} (fedhubert distill sets it from the "
            "teacher)"
        )


def cluster_logits_of_student(logits_m: torch.Tensor) -> torch.Tensor:
    """Per-cluster logits from fairseq's HuBERT logits (column 0 the target, then every cluster).

    fairseq puts the target's similarity in column 0 and -inf in the target's own column;
    putting it back gives the logits over the whole cluster vocabulary.
    """
    target, clusters = logits_m[:, :1], logits_m[:, 1:]
    return torch.where(torch.isinf(clusters), target, clusters)


def cluster_logits_of(model, features: torch.Tensor) -> torch.Tensor:
    """Logits over every cluster for frame features (N, D), as HuBERT scores them (cosine / logit_temp)."""
    projected = model.final_proj(features)
    if model.untie_final_proj:
        projected = projected.chunk(len(model.num_classes), dim=-1)[0]
    label_embs = model.label_embs_concat[: model.num_classes[0]]
    if model.target_glu:
        label_embs = model.target_glu(label_embs)
    return (
        torch.cosine_similarity(projected.float().unsqueeze(1), label_embs.float().unsqueeze(0), dim=-1)
        / model.logit_temp
    )


@contextlib.contextmanager
def layer_outputs(model, into: List[torch.Tensor]):
    """Collect the output (B, T, C) of every encoder layer of ``model`` while inside."""
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out: into.append(out[0].transpose(0, 1)))
        for layer in model.encoder.layers
    ]
    try:
        yield into
    finally:
        for hook in hooks:
            hook.remove()


@contextlib.contextmanager
def student_pass(model, captured: Dict):
    """Keep the student's mask, net output and layer outputs of the next forward pass."""
    original_apply_mask = model.apply_mask

    def apply_mask(*args, **kwargs):
        x, mask_indices = original_apply_mask(*args, **kwargs)
        captured["mask_indices"] = mask_indices
        return x, mask_indices

    model.apply_mask = apply_mask
    output_hook = model.register_forward_hook(lambda _m, _i, out: captured.__setitem__("net_output", out))
    try:
        with layer_outputs(model, captured.setdefault("layers", [])):
            yield captured
    finally:
        output_hook.remove()
        del model.apply_mask  # back to the class's method


@functools.lru_cache(maxsize=None)
def projection(from_dim: int, to_dim: int) -> torch.Tensor:
    """A fixed (seeded) matrix (from_dim, to_dim) with orthonormal columns or rows (computed once per shape)."""
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(max(from_dim, to_dim), min(from_dim, to_dim), generator=generator))
    return q if from_dim >= to_dim else q.T


@register_criterion("hubert_distillation", dataclass=HubertDistillationConfig)
class HubertDistillationCriterion(HubertCriterion):
    """HuBERT masked prediction plus distillation from a frozen teacher (see the module docstring)."""

    def __init__(
        self,
        task,
        pred_masked_weight,
        pred_nomask_weight,
        loss_weights=None,
        log_keys=None,
        teacher_checkpoint="",
        alpha=0.5,
        temperature=2.0,
        hidden_weight=0.0,
    ):
        super().__init__(task, pred_masked_weight, pred_nomask_weight, loss_weights, log_keys)
        if not teacher_checkpoint:
            raise ValueError(
                "criterion hubert_distillation needs criterion.teacher_checkpoint=<teacher .pt> "
                "(e.g. SAVE/server/checkpoint_best.pt of a pretraining run)"
            )
        self.teacher_checkpoint = teacher_checkpoint
        self.alpha, self.temperature, self.hidden_weight = alpha, temperature, hidden_weight
        teacher = frozen_teacher(teacher_checkpoint)
        check_same_input(teacher_checkpoint, task)
        classes = len(task.dictionaries[0])
        if teacher.num_classes[0] != classes:
            raise ValueError(
                f"teacher {teacher_checkpoint} predicts {teacher.num_classes[0]} classes but the student's labels "
                f"({task.cfg.label_dir}/dict.{task.cfg.labels[0]}.txt) have {classes}: "
                "distil on the labels the teacher was trained on"
            )

    @property
    def teacher(self) -> torch.nn.Module:
        # a plain attribute would make the teacher a submodule: fairseq would count and save it
        return _TEACHERS[self.teacher_checkpoint]

    def forward(self, model, sample, reduce=True, log_pred=False):
        captured: Dict = {}
        with student_pass(model, captured):
            hubert_loss, sample_size, logging_output = super().forward(model, sample, reduce, log_pred)
        teacher = self.teacher.to(sample["net_input"]["source"].device)
        teacher_layers: List[torch.Tensor] = []
        with torch.no_grad(), layer_outputs(teacher, teacher_layers):
            teacher_x, _ = teacher.extract_features(
                sample["net_input"]["source"].float(), padding_mask=sample["net_input"].get("padding_mask"), mask=False
            )
        padding_mask = captured["net_output"]["padding_mask"]
        frames = padding_mask.size(1)
        masked = torch.logical_and(~padding_mask, captured["mask_indices"])

        kd = self.kd_loss(
            captured["net_output"]["logit_m_list"][0], cluster_logits_of(teacher, teacher_x[:, :frames][masked])
        )
        loss = self.alpha * kd + (1 - self.alpha) * hubert_loss
        logging_output["loss_hubert"] = hubert_loss.detach().item()
        logging_output["loss_kd"] = kd.detach().item()
        if self.hidden_weight > 0:
            hidden = self.hidden_loss(captured["layers"], teacher_layers, ~padding_mask) * sample_size
            loss = loss + self.hidden_weight * hidden
            logging_output["loss_hidden"] = hidden.detach().item()
        logging_output["loss"] = loss.item() if reduce else loss
        return loss, sample_size, logging_output

    def kd_loss(self, student_logits_m: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """T² · Σ over masked frames of KL(teacher ‖ student), both at temperature T."""
        t = self.temperature
        student = F.log_softmax(cluster_logits_of_student(student_logits_m).float() / t, dim=-1)
        teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
        return F.kl_div(student, teacher, log_target=True, reduction="sum") * t * t

    def hidden_loss(
        self, student_layers: List[torch.Tensor], teacher_layers: List[torch.Tensor], frames: torch.Tensor
    ) -> torch.Tensor:
        """Mean over layers and real frames of L1 − log σ(cosine) between mapped layer outputs."""
        losses = []
        length = frames.size(1)  # the encoder pads its input to a multiple of required_seq_len_multiple
        for i, student in enumerate(student_layers, start=1):
            student = student[:, :length]
            teacher = teacher_layers[matching_layer(i, len(student_layers), len(teacher_layers)) - 1][
                :, :length
            ].float()
            if teacher.size(-1) != student.size(-1):
                teacher = teacher @ projection(teacher.size(-1), student.size(-1)).to(teacher.device)
            student, teacher = student.float()[frames], teacher[frames]
            l1 = (student - teacher).abs().mean(-1)
            cosine = F.cosine_similarity(student, teacher, dim=-1)
            losses.append((l1 - F.logsigmoid(cosine)).mean())
        return torch.stack(losses).mean()
