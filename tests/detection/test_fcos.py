"""kdistill's FCOS detector: shapes, targets placed by hand, the loss terms against independent formulas, NMS
against a brute-force loop, and a tiny model that learns one image well enough for postprocess to find it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdistill.detection.fcos import (
    assign_targets,
    batched_nms,
    box_iou,
    centerness_target,
    fcos_loss,
    giou_loss_ltrb,
    level_points,
    nms,
    postprocess,
    sigmoid_focal_loss,
    size_ranges_for,
)
from kdistill.detection.models import DETECTOR_SIZES, DetectorSize, FCOSDetector, FCOSOutput, build_detector
from kdistill.registry import UnknownNameError

SIZE = 128
STRIDES = (8, 16, 32)
TINY = DetectorSize(
    stem_channels=8, stage_channels=(8, 16, 16, 24), stage_depth=1, fpn_channels=16, head_convs=1
)
RANGES = [(0.0, 16.0), (16.0, 32.0), (32.0, math.inf)]
INF_RANGES = [(0.0, math.inf)] * 3


def points_128() -> list[torch.Tensor]:
    return level_points([(16, 16), (8, 8), (4, 4)], STRIDES)


def positives_by_level(labels: torch.Tensor) -> list[set[tuple[float, float]]]:
    """The (x, y) of the positive points of each level."""
    out, start = [], 0
    for level in points_128():
        chosen = labels[start : start + len(level)] >= 0
        out.append({tuple(p) for p in level[chosen].tolist()})
        start += len(level)
    return out


# ------------------------------------------------------------------------------------------------ model


def test_output_shapes_per_level_for_a_128_image():
    model = build_detector("fcos_s", num_classes=6)
    out = model(torch.rand(2, 3, SIZE, SIZE))
    sides = [SIZE // s for s in STRIDES]
    assert [tuple(t.shape) for t in out.cls_logits] == [(2, 6, n, n) for n in sides]
    assert [tuple(t.shape) for t in out.box_ltrb] == [(2, 4, n, n) for n in sides]
    assert [tuple(t.shape) for t in out.centerness] == [(2, 1, n, n) for n in sides]
    assert [tuple(t.shape) for t in out.features] == [(2, 64, n, n) for n in sides]
    assert out.strides == STRIDES
    assert all(bool((t > 0).all()) for t in out.box_ltrb)
    # focal-loss prior: every class starts near p = 0.01 (weights std 0.01 keep logits near the bias)
    probs = torch.sigmoid(torch.cat([t.flatten() for t in out.cls_logits]))
    assert probs.mean().item() == pytest.approx(0.01, rel=0.2)


def test_fpn_features_are_the_tappable_modules_outputs():
    from kdistill.classic.taps import FeatureTap

    model = build_detector("fcos_s", num_classes=3).eval()
    with FeatureTap(model, ["fpn.outputs.0", "fpn.outputs.2"]) as tap:
        out = model(torch.rand(1, 3, 64, 64))
    torch.testing.assert_close(tap.features["fpn.outputs.0"], out.features[0])
    torch.testing.assert_close(tap.features["fpn.outputs.2"], out.features[2])


def test_teacher_is_several_times_the_student():
    params = {name: sum(p.numel() for p in build_detector(name, 6).parameters()) for name in DETECTOR_SIZES}
    assert params["fcos_l"] >= 3 * params["fcos_s"]
    assert params["fcos_s"] < params["fcos_m"] < params["fcos_l"]


def test_unknown_detector_name_says_what_is_known():
    with pytest.raises(
        UnknownNameError, match=r"^unknown detector 'fcos_x'; did you mean 'fcos_s'\? known: fcos_l"
    ):
        build_detector("fcos_x", 3)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = FCOSDetector(TINY, num_classes=3)
    # one box for each level under the 128 px ranges (0, 16], (16, 32], (32, inf)
    boxes = torch.tensor([[4.0, 4.0, 24.0, 24.0], [70.0, 4.0, 118.0, 52.0], [10.0, 28.0, 110.0, 126.0]])
    out = model(torch.rand(1, 3, SIZE, SIZE))
    loss = fcos_loss(out, [boxes], [torch.tensor([0, 1, 2])], image_size=(SIZE, SIZE))
    loss["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert missing == []


# ---------------------------------------------------------------------------------------------- targets


def test_size_ranges_are_fcos_at_512_px_and_shrink_to_two_strides_on_small_images():
    assert size_ranges_for((800, 1333), STRIDES) == [(0, 64), (64, 128), (128, math.inf)]  # the FCOS paper's
    assert size_ranges_for((512, 512), STRIDES) == [(0, 64), (64, 128), (128, math.inf)]
    assert size_ranges_for((256, 300), STRIDES) == [(0, 32), (32, 64), (64, math.inf)]
    assert size_ranges_for((SIZE, SIZE), STRIDES) == RANGES
    assert size_ranges_for((32, 32), STRIDES) == RANGES


def test_points_are_cell_centres():
    p3 = points_128()[0]
    assert p3[:3].tolist() == [[4.0, 4.0], [12.0, 4.0], [20.0, 4.0]]
    assert p3[16].tolist() == [4.0, 12.0]


def test_small_box_is_learnt_on_p3_by_the_points_of_its_centre_region():
    labels, ltrb = assign_targets(
        points_128(), STRIDES, RANGES, torch.tensor([[0.0, 0.0, 20.0, 20.0]]), torch.tensor([2])
    )
    p3, p4, p5 = positives_by_level(labels)
    # P3 points at 4 and 12 lie inside (x = 20 is on the right edge: outside); max(l, t, r, b) = 16 <= 16
    assert p3 == {(4.0, 4.0), (12.0, 4.0), (4.0, 12.0), (12.0, 12.0)} and p4 == set() and p5 == set()
    assert set(labels[labels >= 0].tolist()) == {2}
    at = {tuple(p): i for i, p in enumerate(torch.cat(points_128()).tolist())}
    assert ltrb[at[(12.0, 4.0)]].tolist() == [12.0, 4.0, 8.0, 16.0]
    assert ltrb[at[(4.0, 12.0)]].tolist() == [4.0, 12.0, 16.0, 8.0]
    assert ltrb[at[(28.0, 4.0)]].tolist() == [0.0, 0.0, 0.0, 0.0] and labels[at[(28.0, 4.0)]] == -1


def test_big_box_goes_to_p5_and_only_near_its_centre():
    box = torch.tensor([[8.0, 8.0, 120.0, 120.0]])
    labels, ltrb = assign_targets(points_128(), STRIDES, RANGES, box, torch.tensor([1]))
    p3, p4, p5 = positives_by_level(labels)
    # centre 64 +- 1.5 * 32 = (16, 112): the P5 points 48 and 80; every point inside has max distance > 32
    assert p3 == set() and p4 == set() and p5 == {(48.0, 48.0), (80.0, 48.0), (48.0, 80.0), (80.0, 80.0)}
    # without centre sampling, every P5 point strictly inside the box is positive: 16, 48, 80, 112 on each axis
    labels, _ = assign_targets(points_128(), STRIDES, RANGES, box, torch.tensor([1]), center_radius=None)
    assert positives_by_level(labels)[2] == {
        (x, y) for x in (16.0, 48.0, 80.0, 112.0) for y in (16.0, 48.0, 80.0, 112.0)
    }


def test_a_point_in_two_boxes_takes_the_smaller():
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [8.0, 0.0, 28.0, 24.0]])
    labels, ltrb = assign_targets(
        points_128(), STRIDES, INF_RANGES, boxes, torch.tensor([0, 1]), center_radius=None
    )
    at = {tuple(p): i for i, p in enumerate(torch.cat(points_128()).tolist())}
    assert labels[at[(12.0, 12.0)]] == 1 and ltrb[at[(12.0, 12.0)]].tolist() == [4.0, 12.0, 16.0, 12.0]
    assert labels[at[(36.0, 36.0)]] == 0 and ltrb[at[(36.0, 36.0)]].tolist() == [36.0, 36.0, 4.0, 4.0]


def test_no_boxes_means_all_background():
    labels, ltrb = assign_targets(
        points_128(), STRIDES, RANGES, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    )
    assert bool((labels == -1).all()) and bool((ltrb == 0).all()) and len(labels) == 16 * 16 + 8 * 8 + 4 * 4


def test_centerness_target_by_hand():
    ltrb = torch.tensor([[5.0, 5.0, 5.0, 5.0], [2.0, 3.0, 8.0, 6.0]])
    torch.testing.assert_close(centerness_target(ltrb), torch.tensor([1.0, math.sqrt(2 / 8 * 3 / 6)]))


# ------------------------------------------------------------------------------------------------- losses


def test_focal_loss_matches_the_formula_in_numpy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=gen, dtype=torch.float64) * 4
    targets = (torch.rand(50, 7, generator=gen) < 0.3).double()
    x, t = logits.numpy(), targets.numpy()
    p = 1 / (1 + np.exp(-x))
    alpha, gamma = 0.25, 2.0
    expected = np.where(
        t == 1, -alpha * (1 - p) ** gamma * np.log(p), -(1 - alpha) * p**gamma * np.log(1 - p)
    )
    got = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)
    # gamma 0, alpha 0.5 is half the binary cross-entropy
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    np.testing.assert_allclose(
        sigmoid_focal_loss(logits, targets, alpha=0.5, gamma=0.0).numpy(), bce / 2, rtol=1e-5
    )


def test_giou_loss_by_hand():
    # pred [-2, -2, 2, 2] and target [-1, -1, 3, 3] around the point (0, 0): intersection 3 x 3 = 9,
    # union 16 + 16 - 9 = 23, enclosing 5 x 5 = 25, GIoU = 9/23 - (25 - 23)/25
    pred = torch.tensor([[2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(giou_loss_ltrb(pred, target), torch.tensor([1 - (9 / 23 - 2 / 25), 0.0]))
    # one box inside the other: GIoU = IoU = 4 / 36
    torch.testing.assert_close(
        giou_loss_ltrb(torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([3.0, 3.0, 3.0, 3.0])),
        torch.tensor(1 - 4 / 36),
    )


def test_loss_terms_are_their_formulas_on_the_assigned_points():
    torch.manual_seed(0)
    model = FCOSDetector(TINY, num_classes=3)
    boxes, labels = torch.tensor([[4.0, 4.0, 24.0, 24.0], [40.0, 40.0, 100.0, 90.0]]), torch.tensor([0, 2])
    out = model(torch.rand(1, 3, SIZE, SIZE))
    loss = fcos_loss(out, [boxes], [labels], image_size=(SIZE, SIZE))
    target_labels, target_ltrb = assign_targets(points_128(), STRIDES, RANGES, boxes, labels)
    pos = target_labels >= 0
    logits = torch.cat([t[0].flatten(1).T for t in out.cls_logits])
    ltrb = torch.cat([t[0].flatten(1).T for t in out.box_ltrb])
    ctr = torch.cat([t[0].flatten() for t in out.centerness])
    one_hot = torch.zeros_like(logits)
    one_hot[pos, target_labels[pos]] = 1
    n = pos.sum()
    weight = centerness_target(target_ltrb[pos])
    expected_box = (giou_loss_ltrb(ltrb[pos], target_ltrb[pos]) * weight).sum() / weight.sum()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(ctr[pos], weight, reduction="sum")
    torch.testing.assert_close(loss["cls"], sigmoid_focal_loss(logits, one_hot).sum() / n)
    torch.testing.assert_close(loss["box"], expected_box)
    torch.testing.assert_close(loss["centerness"], bce / n)
    torch.testing.assert_close(loss["total"], loss["cls"] + loss["box"] + loss["centerness"])


def test_an_image_without_boxes_gives_finite_zero_box_terms():
    out = FCOSDetector(TINY, num_classes=3)(torch.rand(1, 3, 64, 64))
    loss = fcos_loss(out, [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], image_size=(64, 64))
    assert (
        loss["box"].item() == 0.0 and loss["centerness"].item() == 0.0 and math.isfinite(loss["cls"].item())
    )


def test_loss_refuses_a_wrong_number_of_targets():
    out = FCOSDetector(TINY, num_classes=3)(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"^fcos_loss: 2 images but 1 box lists and 1 label lists$"):
        fcos_loss(out, [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], image_size=(64, 64))


# ---------------------------------------------------------------------------------------------------- NMS


def brute_force_nms(boxes: list[list[float]], scores: list[float], threshold: float) -> list[int]:
    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union

    remaining = sorted(range(len(boxes)), key=lambda i: -scores[i])
    keep = []
    while remaining:
        best = remaining.pop(0)
        keep.append(best)
        remaining = [i for i in remaining if iou(boxes[best], boxes[i]) <= threshold]
    return keep


def random_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes clustered around a few centres, so that many overlap."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(5, 2, generator=gen) * 100
    xy = centres[torch.randint(0, 5, (n,), generator=gen)] + torch.randn(n, 2, generator=gen) * 6
    wh = 10 + torch.rand(n, 2, generator=gen) * 30
    return torch.cat([xy - wh / 2, xy + wh / 2], dim=1).double(), torch.rand(
        n, generator=gen, dtype=torch.float64
    )


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_matches_brute_force(threshold, seed):
    boxes, scores = random_boxes(150, seed)
    kept = nms(boxes, scores, threshold).tolist()
    expected = brute_force_nms(boxes.tolist(), scores.tolist(), threshold)
    assert kept == expected and 5 <= len(kept) < 150


def test_batched_nms_is_nms_within_each_class():
    boxes, scores = random_boxes(120, 3)
    classes = torch.randint(0, 3, (120,), generator=torch.Generator().manual_seed(4))
    kept = set(batched_nms(boxes, scores, classes, 0.5).tolist())
    expected = set()
    for c in range(3):
        index = torch.nonzero(classes == c).squeeze(1)
        expected |= {
            index[i].item() for i in brute_force_nms(boxes[index].tolist(), scores[index].tolist(), 0.5)
        }
    assert kept == expected


# ------------------------------------------------------------------------------------------ end to end


def test_tiny_detector_overfits_one_image_and_postprocess_finds_both_boxes():
    torch.manual_seed(0)
    image = 0.5 + 0.05 * torch.randn(1, 3, SIZE, SIZE)
    boxes = torch.tensor([[10.0, 12.0, 34.0, 40.0], [57.0, 51.0, 121.0, 115.0]])
    labels = torch.tensor([0, 2])
    for (x1, y1, x2, y2), color in zip(boxes.int().tolist(), ([0.9, 0.1, 0.1], [0.1, 0.2, 0.9]), strict=True):
        image[0, :, y1:y2, x1:x2] = torch.tensor(color)[:, None, None]
    model = FCOSDetector(TINY, num_classes=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        loss = fcos_loss(model(image), [boxes], [labels], image_size=(SIZE, SIZE))["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    found, scores, found_labels = postprocess(model(image), image_size=(SIZE, SIZE))[0]
    assert bool((found >= 0).all()) and bool((found <= SIZE).all())
    assert scores.tolist() == sorted(scores.tolist(), reverse=True)
    top = box_iou(boxes, found[:2])  # (2 targets, 2 best detections)
    match = top.argmax(dim=1)
    assert sorted(match.tolist()) == [0, 1]
    assert bool((top.max(dim=1).values > 0.5).all())
    assert found_labels[match].tolist() == labels.tolist()


def hand_made_output(num_classes: int = 3) -> FCOSOutput:
    """An output for a 64 px image that is confident about one point only: P3 cell (row 2, col 5), class 1."""
    sides = [8, 4, 2]
    logits = [torch.full((1, num_classes, n, n), -20.0) for n in sides]
    ltrb = [torch.full((1, 4, n, n), 4.0) for n in sides]
    centerness = [torch.full((1, 1, n, n), -20.0) for n in sides]
    logits[0][0, 1, 2, 5] = math.log(0.64 / 0.36)  # sigmoid = 0.64
    centerness[0][0, 0, 2, 5] = 0.0  # sigmoid = 0.5
    ltrb[0][0, :, 2, 5] = torch.tensor([10.0, 6.0, 30.0, 7.0])
    return FCOSOutput(logits, ltrb, centerness, [], STRIDES)


def test_postprocess_decodes_a_point_into_its_box_and_clips_it():
    boxes, scores, labels = postprocess(hand_made_output(), image_size=(64, 64))[0]
    # the point is ((5 + 0.5) * 8, (2 + 0.5) * 8) = (44, 20); x2 = 44 + 30 = 74 is clipped to the width 64
    torch.testing.assert_close(boxes, torch.tensor([[34.0, 14.0, 64.0, 27.0]]))
    torch.testing.assert_close(scores, torch.tensor([math.sqrt(0.64 * 0.5)]))
    assert labels.tolist() == [1]


def test_postprocess_with_nothing_above_the_threshold_is_empty():
    boxes, scores, labels = postprocess(hand_made_output(), image_size=(64, 64), score_thresh=0.9)[0]
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)


def test_postprocess_keeps_at_most_max_det():
    out = FCOSDetector(TINY, num_classes=3)(torch.rand(2, 3, 64, 64))
    results = postprocess(out, image_size=(64, 64), score_thresh=0.0, nms_iou=1.0, max_det=7)
    assert [len(r[0]) for r in results] == [7, 7]


def test_loss_refuses_a_label_the_model_has_no_class_for():
    out = FCOSDetector(TINY, num_classes=3)(torch.rand(2, 3, 64, 64))
    boxes = [torch.tensor([[0.0, 0.0, 9.0, 9.0]])] * 2
    with pytest.raises(
        ValueError, match=r"^fcos_loss: image 1 has label 3; the model has 3 classes \(labels 0..2\)$"
    ):
        fcos_loss(out, boxes, [torch.tensor([0]), torch.tensor([3])], image_size=(64, 64))
