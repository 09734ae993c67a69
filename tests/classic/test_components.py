"""Feature taps, adapters, loss terms and the teacher signal: the parts the methods are built from."""

import pytest
import torch
from torch import nn

from kdistill.classic.adapters import Adapter
from kdistill.classic.config import LossTerm
from kdistill.classic.loop import Batch
from kdistill.classic.methods.offline import OfflineDistiller
from kdistill.classic.methods.terms import LossTerms, term_names
from kdistill.classic.taps import FeatureTap
from kdistill.classic.teacher_outputs import TeacherOutputs
from kdistill.classic.zoo import MODELS, build_model
from kdistill.losses import attention_transfer, fitnet_hint, hinton_kd


def test_tap_captures_the_named_module_and_always_removes_hooks():
    model = build_model("cnn_xs", (1, 8, 8), 10)
    x = torch.randn(3, 1, 8, 8)
    with FeatureTap(model, ["block2"]) as tap:
        model(x)
    expected = model.block2(model.block1(x))
    assert torch.equal(tap.features["block2"], expected)
    assert not model.block2._forward_hooks
    with pytest.raises(RuntimeError), FeatureTap(model, ["block1"]):
        raise RuntimeError("boom")
    assert not model.block1._forward_hooks


def test_tap_unwraps_data_parallel_and_names_unknown_paths():
    model = build_model("cnn_xs", (1, 8, 8), 10)
    wrapped = nn.DataParallel(model)
    with FeatureTap(wrapped, ["block1"]) as tap:
        model(torch.randn(2, 1, 8, 8))
    assert tap.features["block1"].shape == (2, 8, 4, 4)
    with pytest.raises(KeyError, match="did you mean 'block1'"):
        FeatureTap(model, ["blok1"])


@pytest.mark.parametrize(
    "s_shape, t_shape",
    [((16, 4, 4), (64, 4, 4)), ((16, 8, 8), (64, 4, 4)), ((8, 20), (32, 20)), ((10,), (30,))],
)
def test_adapter_maps_student_shape_to_teacher_shape(s_shape, t_shape):
    adapter = Adapter(s_shape, t_shape)
    assert adapter(torch.randn(5, *s_shape)).shape == (5, *t_shape)


def test_adapter_parameters_are_counted_as_extra():
    terms = [LossTerm(name="fitnet_hint", student_layer="block2", teacher_layer="block2")]
    lt = LossTerms(terms, {"block2": (16, 4, 4)}, {"block2": (64, 4, 4)})
    assert lt.extra_parameters() == 16 * 64 + 64  # 1x1 conv weight + bias
    same = LossTerms(terms, {"block2": (16, 4, 4)}, {"block2": (16, 4, 4)})
    assert same.extra_parameters() == 0


def test_terms_are_weighted_and_named():
    terms = [
        LossTerm(name="cross_entropy", weight=0.5),
        LossTerm(name="hinton_kd", weight=2.0, params={"temperature": 3.0}),
    ]
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    y = torch.tensor([1, -1, 3, -1])
    out = LossTerms(terms)(s, t, y)
    assert list(out) == ["ce", "kd/hinton_kd"]
    ce = nn.functional.cross_entropy(s[[0, 2]], y[[0, 2]])
    assert torch.allclose(out["ce"], 0.5 * ce)
    assert torch.allclose(out["kd/hinton_kd"], 2.0 * hinton_kd(s, t, temperature=3.0))


def test_duplicate_term_names_stay_unique():
    terms = [
        LossTerm(name="attention_transfer", student_layer="block1", teacher_layer="block1"),
        LossTerm(name="attention_transfer", student_layer="block1", teacher_layer="block2"),
    ]
    assert term_names(terms) == ["feat/attention_transfer@block1", "feat/attention_transfer@block1'"]


def test_dkd_on_unlabeled_samples_uses_the_teacher_top1():
    from kdistill.losses import dkd

    s, t = torch.randn(3, 5), torch.randn(3, 5)
    y = torch.tensor([2, -1, -1])
    out = LossTerms([LossTerm(name="dkd")])(s, t, y)["kd/dkd"]
    expected = dkd(s, t, torch.where(y >= 0, y, t.argmax(-1)))
    assert torch.allclose(out, expected)


def _teacher_student():
    torch.manual_seed(0)
    return build_model("cnn_m", (1, 8, 8), 10).eval(), build_model("cnn_xs", (1, 8, 8), 10)


def test_cached_teacher_equals_live_teacher():
    teacher, _ = _teacher_student()
    x = torch.randn(40, 1, 8, 8)
    cached = TeacherOutputs(teacher, x, ["block2"], cache=True, chunk=16)
    live = TeacherOutputs(teacher, x, ["block2"], cache=False)
    idx = torch.tensor([3, 17, 39, 0])
    batch = Batch(index=idx, x=x[idx], target=torch.zeros(4, dtype=torch.long))
    (lc, fc), (ll, fl) = cached(batch), live(batch)
    torch.testing.assert_close(lc, ll)
    torch.testing.assert_close(fc["block2"], fl["block2"])


def test_offline_distiller_feature_terms_match_direct_computation():
    teacher, student = _teacher_student()
    x = torch.randn(20, 1, 8, 8)
    terms = [
        LossTerm(name="fitnet_hint", student_layer="block2", teacher_layer="block2"),
        LossTerm(name="attention_transfer", student_layer="block1", teacher_layer="block1", weight=3.0),
    ]
    distiller = OfflineDistiller(student, teacher, terms, x, cache=True)
    idx = torch.arange(5)
    out = distiller(Batch(index=idx, x=x[idx], target=torch.full((5,), -1)))
    s1 = student.block1(x[:5])
    s2 = student.block2(s1)
    with torch.no_grad():
        t1 = teacher.block1(x[:5])
        t2 = teacher.block2(t1)
    adapter = next(iter(distiller.terms.adapters.values()))
    direct = fitnet_hint(adapter(s2), t2)
    torch.testing.assert_close(out["feat/fitnet_hint@block2"], direct)
    torch.testing.assert_close(out["feat/attention_transfer@block1"], 3.0 * attention_transfer(s1, t1))
    # the hint trains the adapter and the student (as the direct computation's gradients), never the teacher
    trained = [adapter.proj.weight, student.block2[0].weight, student.block1[0].weight]
    expected = torch.autograd.grad(direct, trained)
    out["feat/fitnet_hint@block2"].backward()
    for param, grad in zip(trained, expected, strict=True):
        assert grad.abs().sum() > 0
        torch.testing.assert_close(param.grad, grad)
    assert all(p.grad is None for p in teacher.parameters())


def test_every_zoo_model_builds_for_1d_and_2d_inputs():
    for name in MODELS:
        for shape in ((1, 8, 8), (1, 40)):
            if name.startswith("cnn") or name.startswith("mlp"):
                out = build_model(name, shape, 10)(torch.randn(2, *shape))
                assert out.shape == (2, 10)
