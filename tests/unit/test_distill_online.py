"""--teacher (online distillation): the KD loss against F.kl_div by hand, zero gradient from a teacher equal to the
student, the multi-label (per-class sigmoid) KD, the feature route, the teacher's input, its checks, the flags, and
the projection in the train state."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import config
from applications.setup.teacher import Teacher, check_teacher
from criterions import create_criterion
from criterions.distill import FeatureProjection, feature_kd, kd_loss
from engine.distill import FeatureTap, OnlineTeacher, TeacherInput
from engine.state import TrainState
from models.spec import ModelSpec
from optim import create_optimizer
from utils.checkpoint import CheckpointError


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_loss_equals_kl_div_by_hand(temperature):
    torch.manual_seed(0)
    s, t = torch.randn(6, 5), 3 * torch.randn(6, 5)
    hand = F.kl_div(F.log_softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1),
                    reduction="batchmean") * temperature ** 2
    assert torch.allclose(kd_loss(s, t, temperature), hand, atol=1e-6)
    # and from the definition: sum_c p_t (log p_t - log p_s), averaged over the batch
    p_t = F.softmax(t / temperature, dim=1)
    by_sum = (p_t * (p_t.log() - F.log_softmax(s / temperature, dim=1))).sum(dim=1).mean() * temperature ** 2
    assert torch.allclose(kd_loss(s, t, temperature), by_sum, atol=1e-5)


def test_multi_label_kd_is_the_bernoulli_kl_per_class():
    torch.manual_seed(1)
    s, t, temperature = torch.randn(4, 3), torch.randn(4, 3), 2.0
    p, q = torch.sigmoid(t / temperature), torch.sigmoid(s / temperature)
    hand = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean() * temperature ** 2
    assert torch.allclose(kd_loss(s, t, temperature, multi_label=True), hand, atol=1e-6)
    assert kd_loss(t, t, temperature, multi_label=True).abs() < 1e-6


def student_and_twin():
    torch.manual_seed(2)
    student = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    return student, copy.deepcopy(student)


@pytest.mark.parametrize("multi_label", [False, True])
def test_a_teacher_identical_to_the_student_gives_zero_distillation_gradient(multi_label):
    student, twin = student_and_twin()
    images = torch.randn(5, 3, 8, 8)
    distiller = OnlineTeacher(twin, alpha=1.0, temperature=3.0, multi_label=multi_label)
    task = torch.zeros((), requires_grad=True)  # alpha 1: the task loss has no weight
    loss = distiller.loss(task, student(images), distiller.teach(images))
    loss.backward()
    assert loss.abs() < 1e-6
    assert all(p.grad.abs().max() < 1e-6 for p in student.parameters())
    assert all(p.grad is None for p in twin.parameters())  # frozen: nothing flows into the teacher


def test_blended_loss_weighs_task_and_distillation():
    student, twin = student_and_twin()
    twin[-1].bias.data += torch.tensor([1.0, -1.0, 0.5])  # a teacher that disagrees
    images, target = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    distiller = OnlineTeacher(twin, alpha=0.3, temperature=2.0)
    logits = student(images)
    task = create_criterion("softmax")(logits, target)
    expected = 0.7 * F.cross_entropy(logits, target) + 0.3 * kd_loss(logits, twin(images), 2.0)
    assert torch.allclose(distiller.loss(task, logits, distiller.teach(images)), expected, atol=1e-6)
    assert distiller.take_seconds() > 0 and distiller.take_seconds() == 0


def test_feature_distillation_through_the_projection():
    student, twin = student_and_twin()
    projection = FeatureProjection(4, 4)
    distiller = OnlineTeacher(twin, alpha=0.5, kind="feature", student_tap=FeatureTap(student[1]),
                              teacher_tap=FeatureTap(twin[1]), projection=projection)
    images = torch.randn(2, 3, 8, 8)
    taught = distiller.teach(images)
    logits = student(images)
    with torch.no_grad():
        expected_map = projection(student[1](student[0](images)))
    loss = distiller.loss(torch.zeros(()), logits, taught)
    assert torch.allclose(loss, 0.5 * F.mse_loss(expected_map, twin[1](twin[0](images))), atol=1e-6)
    loss.backward()
    assert projection.proj.weight.grad.abs().sum() > 0  # the projection trains
    # maps of another size are brought to the teacher's
    small, big = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 6, 6)
    resized = F.interpolate(small, size=(6, 6), mode="bilinear", align_corners=False)
    assert torch.allclose(feature_kd(small, big), F.mse_loss(resized, big))


def test_teacher_input_renormalises_and_resizes():
    raw = torch.rand(2, 3, 8, 8)
    s_mean, s_std, t_mean, t_std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    col = (lambda v: torch.tensor(v).view(1, 3, 1, 1))
    student_view = (raw - col(s_mean)) / col(s_std)
    adapt = TeacherInput(s_mean, s_std, t_mean, t_std, (8, 8), (8, 8))
    assert torch.allclose(adapt(student_view), (raw - col(t_mean)) / col(t_std), atol=1e-5)
    same = TeacherInput(s_mean, s_std, s_mean, s_std, (8, 8), (8, 8))
    assert same(student_view) is student_view  # nothing to do
    resize = TeacherInput(s_mean, s_std, s_mean, s_std, (8, 8), (4, 6))
    assert resize(student_view).shape == (2, 3, 4, 6)


def teacher(class_names=("a", "b", "c"), multi_label=False, num=None):
    return Teacher(nn.Identity(), "t.pth", class_names, num or len(class_names or ()), multi_label, 3, (8, 8),
                   (0.5,) * 3, (0.2,) * 3, "resnet18")


def test_teacher_checks_name_both_sides():
    check_teacher(teacher(), ["a", "b", "c"], False, 3)
    with pytest.raises(ValueError, match=r"t.pth was trained on classes \['a', 'b', 'c'\], the student on "
                                         r"\['a', 'b', 'd'\]"):
        check_teacher(teacher(), ["a", "b", "d"], False, 3)
    with pytest.raises(ValueError, match="has 1000 outputs, the student's data 3 classes"):
        check_teacher(teacher(None, num=1000), ["a", "b", "c"], False, 3)
    with pytest.raises(ValueError, match="is a multi-label model, the student single-label"):
        check_teacher(teacher(multi_label=True), ["a", "b", "c"], False, 3)
    with pytest.raises(ValueError, match="reads 3-channel images, the student 1-channel"):
        check_teacher(teacher(), ["a", "b", "c"], False, 1)


def test_flags(tmp_path, capsys):
    cfg = config.parse_config(["--train", "--teacher", "resnet50", "--distill_type", "feature"])
    assert cfg.teacher == "resnet50" and cfg.distill_type == "feature"
    for argv, error in ((["--teacher", "resnet50", "--distill"], "--distill and --teacher together"),
                        (["--distill_type", "feature"], "--distill_type feature applies to an online teacher")):
        with pytest.raises(SystemExit):
            config.parse_config(["--train", *argv])
        assert error in capsys.readouterr().err
    cfg, given = config.parse_command_line(["--train", "--teacher", str(tmp_path / "missing.pth")])
    with pytest.raises(config.ConfigError, match="--teacher: checkpoint .*missing.pth' does not exist"):
        config.check_files(cfg, given)


def test_the_projection_trains_and_resumes_in_the_train_state_not_in_the_model():
    model, projection = nn.Linear(4, 2), FeatureProjection(3, 5)
    optimizer = create_optimizer(model, "sgd", lr=0.1, weight_decay=1e-4, also=projection)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == \
        {id(p) for p in [*model.parameters(), *projection.parameters()]}
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    spec = ModelSpec("tiny", ["a", "b"], (8, 8), mean=(0.5,) * 3, std=(0.2,) * 3)
    saved = TrainState(model, optimizer, scheduler, projection=projection).capture(
        epoch=0, best_top1=0.0, best_epoch=0, spec=spec, config={}, history=[])
    assert set(saved["model"]) == {"weight", "bias"}  # best.pth's weights and exports: the student's alone
    fresh = FeatureProjection(3, 5)
    other = create_optimizer(nn.Linear(4, 2), "sgd", lr=0.1, also=fresh)
    TrainState(nn.Linear(4, 2), other, torch.optim.lr_scheduler.StepLR(other, 1), projection=fresh).restore(
        saved, "x.pth", class_names=["a", "b"])
    assert torch.equal(fresh.proj.weight, projection.proj.weight)
    with pytest.raises(CheckpointError, match="holds no feature-distillation projection"):
        TrainState(nn.Linear(4, 2), other, scheduler, projection=fresh).restore(
            {**saved, "distill_projection": None}, "x.pth", class_names=["a", "b"])


def test_a_named_teacher_comes_from_the_library_cache_with_its_preprocessing(caches):
    from applications.setup.teacher import load_teacher
    from helpers import put_in_cache
    saved = put_in_cache("resnet18", caches)
    named = load_teacher("resnet18", (16, 16))
    assert named.num_classes == 1000 and named.class_names is None and named.arch == "resnet18"
    assert named.mean == pytest.approx((0.485, 0.456, 0.406)) and named.image_size == (16, 16)
    assert all(torch.equal(named.model.state_dict()[k], v) for k, v in saved.items())
    with pytest.raises(ValueError, match="has 1000 outputs, the student's data 3 classes"):
        check_teacher(named, ["a", "b", "c"], False, 3)
