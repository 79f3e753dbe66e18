"""Federated knowledge distillation: criterion hubert_distillation, fedhubert distill, the student in s3prl."""

import json

import numpy as np
import pytest
import torch

from fedhubert_plugin.checkpoints import load_checkpoint, matching_layer
from fedhubert_plugin.cli import main
from fedhubert_plugin.configs import FROM_TRAINED_SERVER, DistillConfig
from fedhubert_plugin.criterions.hubert_distillation import (
    cluster_logits_of,
    cluster_logits_of_student,
    frozen_teacher,
    student_pass,
)
from fedhubert_plugin.export import export_initial
from fedhubert_plugin.federation.schedule import plan_schedule
from fedhubert_plugin.federation.server.checkpointing import initial_model
from fedhubert_plugin.federation.settings import FederationSettings
from fedhubert_plugin.federation.simulation import simulate_pretraining
from fedhubert_plugin.recipes import recipe_initial_model
from tests.helpers import (
    SCHEDULE_OF_3_ROUNDS,
    TINY,
    TINY_STUDENT,
    metric_lines,
    pretrain_settings,
    setup_fed_task,
    teacher_tensors_in_tiny_student,
    valid_losses,
)


def test_student_layers_map_evenly_onto_teacher_layers():
    assert [matching_layer(i, 6, 12) for i in range(1, 7)] == [2, 4, 6, 8, 10, 12]
    assert [matching_layer(i, 1, 2) for i in (1,)] == [2]
    assert [matching_layer(i, 4, 12) for i in range(1, 5)] == [3, 6, 9, 12]


def test_kd_compares_both_models_over_the_same_cluster_vocabulary(tmp_path):
    ckpt = export_initial(TINY, tmp_path / "m.pt", n_clusters=20, label_rate=100, overrides=["common.cpu=true"])
    model = frozen_teacher(str(ckpt))  # eval mode: no dropout
    source = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    targets = [torch.randint(0, 20, (2, 100), generator=torch.Generator().manual_seed(1))]
    captured = {}
    with torch.no_grad(), student_pass(model, captured):
        net_output = model(source, target_list=targets, padding_mask=torch.zeros(2, 16000, dtype=torch.bool))
    assert "apply_mask" not in vars(model)  # the capture is undone
    masked = torch.logical_and(~net_output["padding_mask"], captured["mask_indices"])
    assert masked.sum() > 0 and len(captured["layers"]) == 2
    # fairseq's logits (target first, -inf in the target's column), re-ordered to one column per
    # cluster, equal the teacher-side formula applied to the same frames' encoder output
    from_fairseq = cluster_logits_of_student(net_output["logit_m_list"][0])
    encoder_out = captured["layers"][-1][:, : masked.size(1)]
    with torch.no_grad():
        direct = cluster_logits_of(model, encoder_out[masked])
    assert from_fairseq.shape == (int(masked.sum()), 24) and torch.isfinite(from_fairseq).all()
    torch.testing.assert_close(from_fairseq, direct, rtol=1e-4, atol=1e-4)


def test_teacher_is_frozen_hidden_from_fairseq_and_must_share_the_vocabulary(client_shard, tmp_path):
    matching = export_initial(TINY, tmp_path / "t8.pt", n_clusters=8, label_rate=100, overrides=["common.cpu=true"])
    task = setup_fed_task(client_shard)  # 8 energy bins: 8 clusters
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"_name": "hubert_distillation", "teacher_checkpoint": str(matching)})
    criterion = task.build_criterion(cfg)
    assert list(criterion.parameters()) == [] and criterion.state_dict() == {}
    assert not criterion.teacher.training and not any(p.requires_grad for p in criterion.teacher.parameters())
    assert criterion.teacher is task.build_criterion(cfg).teacher  # loaded once per process
    other = export_initial(TINY, tmp_path / "t50.pt", n_clusters=50, label_rate=100, overrides=["common.cpu=true"])
    with pytest.raises(ValueError, match="predicts 54 classes but the student's labels"):
        task.build_criterion(OmegaConf.create({"_name": "hubert_distillation", "teacher_checkpoint": str(other)}))
    with pytest.raises(ValueError, match="criterion.teacher_checkpoint"):
        task.build_criterion(OmegaConf.create({"_name": "hubert_distillation"}))


def test_a_teacher_of_normalised_audio_teaches_a_student_of_normalised_audio(client_shard, tmp_path):
    """HuBERT Large's task layer-normalises each waveform: fedhubert distill gives the student the same input,
    and the criterion refuses a student task that would feed the teacher audio unlike its training audio."""
    from omegaconf import OmegaConf

    overrides = ["common.cpu=true", "task.normalize=true"]
    teacher = export_initial(TINY, tmp_path / "normalised.pt", n_clusters=8, label_rate=100, overrides=overrides)
    assert "task.normalize=true" in DistillConfig(teacher).settings([])["overrides"]
    cfg = OmegaConf.create({"_name": "hubert_distillation", "teacher_checkpoint": str(teacher)})
    assert setup_fed_task(client_shard, normalize=True).build_criterion(cfg).teacher is not None
    with pytest.raises(ValueError, match="task.normalize=true but the student's task has task.normalize=false"):
        setup_fed_task(client_shard).build_criterion(cfg)


@pytest.fixture(scope="module")
def distilled(federated_run, prepared, tmp_path_factory):
    save = tmp_path_factory.mktemp("distill")
    teacher = federated_run / "server" / "checkpoint_best.pt"
    args = [
        "distill",
        "--data",
        str(prepared),
        "--teacher",
        str(teacher),
        "--recipe",
        "tiny_student",
        "--save-dir",
        str(save),
        "--rounds",
        "3",
        "--local-updates",
        "3",
        "--init-from-teacher",
        "common.cpu=true",
    ]
    assert main(args) == 0
    return save, teacher


@pytest.mark.e2e
def test_distillation_loss_goes_down_and_the_student_is_smaller(distilled):
    save, teacher = distilled
    lines = metric_lines(save)
    assert [line["round"] for line in lines] == [1, 2, 3]
    assert lines[-1]["train"]["kd_loss"] < lines[0]["train"]["kd_loss"]
    assert lines[-1]["train"]["loss"] < lines[0]["train"]["loss"]
    losses = valid_losses(save)
    assert list(losses) == [0, 1, 2, 3] and losses[3] < losses[0]
    assert all(line["rejected"] == [] for line in lines)
    student = load_checkpoint(save / "server" / "checkpoint_last.pt")
    teacher_state = load_checkpoint(teacher)

    def count(weights):
        return sum(v.numel() for v in weights.values())

    assert count(student["model"]) < count(teacher_state["model"])
    assert student["cfg"]["criterion"]["_name"] == "hubert_distillation"
    assert not any(k.startswith("teacher") for k in student["model"])  # only the student travels and is saved
    assert student["cfg"]["model"]["encoder_embed_dim"] == 64


@pytest.mark.e2e
def test_init_from_teacher_starts_the_student_from_the_teachers_fitting_tensors(distilled):
    """The run's own settings rebuild the student it started from: the tensors that fit are the teacher's."""
    save, teacher = distilled
    settings = FederationSettings(**json.loads((save / "server" / "settings.json").read_text()))
    assert settings.init_from == str(teacher.resolve())
    assert (settings.strategy, settings.eta) == ("fedadam", 1e-3)  # not pretraining's FedAvg: from trained weights
    _, started = initial_model(settings, plan_schedule(settings))
    _, fresh = recipe_initial_model(settings.recipe, settings.overrides, settings.label_rate, settings.n_clusters)
    teacher_weights = {k: v.numpy() for k, v in load_checkpoint(teacher)["model"].items()}
    from_teacher = teacher_tensors_in_tiny_student(started)
    for name, value in started.items():
        expected = teacher_weights[name] if name in from_teacher else fresh[name]
        np.testing.assert_array_equal(value, expected, err_msg=name)
        assert name not in from_teacher or not np.array_equal(value, fresh[name]), name


@pytest.mark.e2e
def test_student_loads_in_stock_s3prl_hubert_local(distilled):
    from s3prl.upstream.hubert.hubconf import hubert_local

    save, _ = distilled
    upstream = hubert_local(ckpt=str(save / "server" / "best_global_model.pt"))
    with torch.no_grad():
        states = upstream.eval()([torch.randn(16000)])["hidden_states"]
    assert len(states) == 2 and states[-1].shape[-1] == 64


@pytest.mark.e2e
def test_distillation_resumes_like_pretraining(distilled, prepared, tmp_path):
    save, teacher = distilled
    # planned for the 3 rounds of the `distilled` run from the start, so the 2-round run can be resumed to 3
    overrides = [f"criterion.teacher_checkpoint={teacher}", "common.cpu=true", *SCHEDULE_OF_3_ROUNDS]

    def settings(rounds, resume):
        return pretrain_settings(
            prepared,
            tmp_path,
            rounds,
            recipe=TINY_STUDENT,
            overrides=overrides,
            init_from=str(teacher),
            resume=resume,
            **FROM_TRAINED_SERVER,  # as `fedhubert distill` runs it
        )

    simulate_pretraining(settings(2, False), num_clients=4)
    simulate_pretraining(settings(3, True), num_clients=4)
    resumed = load_checkpoint(tmp_path / "server" / "checkpoint_last.pt")["model"]
    straight = load_checkpoint(save / "server" / "checkpoint_round3.pt")["model"]
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-5)
