"""COCO mAP and teacher agreement against values worked out by hand from COCO's rules.

COCO's AP at one IoU threshold: detections ranked by score, each matched to the unmatched ground truth box it
overlaps most (IoU >= threshold); precision made non-increasing from the right, then read at the 101 recall
points 0, 0.01, ..., 1 (the first detection reaching each recall) and averaged; 0 where recall is never reached.
"""

from __future__ import annotations

import re

import pytest
import torch

from kdistill.detection.metrics import Detections, GroundTruth, box_iou, coco_map, teacher_agreement

IOU_THRESHOLDS = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]  # COCO's, written out
RECALL_POINTS = 101
SQUARE = [0.0, 0.0, 10.0, 10.0]
# IoU with SQUARE 0.625: the overlap is the 10 x 6.25 box itself, the union SQUARE's 100 pixels
SHORT = [0.0, 0.0, 10.0, 6.25]
# IoU with SQUARE 1/3: shifted by half its width, overlap 50, union 150
SHIFTED = [5.0, 0.0, 15.0, 10.0]


def truth(boxes: list[list[float]], labels: list[int]) -> GroundTruth:
    return GroundTruth(
        boxes=torch.tensor(boxes).reshape(-1, 4), labels=torch.tensor(labels, dtype=torch.int64)
    )


def found(boxes: list[list[float]], scores: list[float], labels: list[int]) -> Detections:
    return Detections(
        boxes=torch.tensor(boxes).reshape(-1, 4),
        scores=torch.tensor(scores),
        labels=torch.tensor(labels, dtype=torch.int64),
    )


def nothing() -> Detections:
    return found([], [], [])


def as_detections(target: GroundTruth, scores: list[float]) -> Detections:
    return Detections(boxes=target.boxes, scores=torch.tensor(scores), labels=target.labels)


def test_perfect_predictions_score_one_at_every_threshold_size_and_class():
    # one small (10x10 = 100 px < 32^2), one medium (50x50), one large (120x120) object, two classes
    targets = [
        truth([[2, 2, 12, 12], [20, 20, 70, 70]], [0, 1]),
        truth([[0, 0, 120, 120]], [1]),
    ]
    predictions = [as_detections(targets[0], [0.9, 0.4]), as_detections(targets[1], [0.7])]

    result = coco_map(predictions, targets, num_classes=2)

    for name in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large"):
        assert result[name] == pytest.approx(1.0), name
    assert result["per_class_ap50"] == pytest.approx([1.0, 1.0])


def test_one_match_between_thresholds_counts_at_the_thresholds_it_passes():
    result = coco_map([found([SHORT], [0.8], [0])], [truth([SQUARE], [0])], num_classes=1)

    passed = sum(threshold <= 0.625 for threshold in IOU_THRESHOLDS)  # 0.5, 0.55, 0.6
    assert result["map_50"] == pytest.approx(1.0)
    assert result["map_75"] == pytest.approx(0.0)
    assert result["map"] == pytest.approx(passed / len(IOU_THRESHOLDS))
    # the object is small (100 px), so the small range holds it all and the others hold nothing
    assert result["map_small"] == pytest.approx(result["map"])
    assert result["map_medium"] is None
    assert result["map_large"] is None


def test_a_wrong_label_scores_zero():
    result = coco_map([found([SQUARE], [0.9], [1])], [truth([SQUARE], [0])], num_classes=2)

    assert result["map"] == pytest.approx(0.0)
    assert result["map_50"] == pytest.approx(0.0)
    assert result["per_class_ap50"] == [pytest.approx(0.0), None]  # class 1 has no ground truth


def test_a_duplicate_lowers_precision_from_where_it_ranks():
    # two objects; the first is found twice (0.9 and 0.8), the second once (0.7)
    second = [30.0, 30.0, 40.0, 40.0]
    prediction = found([SQUARE, SQUARE, second], [0.9, 0.8, 0.7], [0, 0, 0])
    result = coco_map([prediction], [truth([SQUARE, second], [0, 0])], num_classes=1)

    # ranked: hit, duplicate (false positive), hit -> recall 1/2, 1/2, 1; precision 1, 1/2, 2/3,
    # non-increasing from the right: 1, 2/3, 2/3. Recall points 0..0.50 (51 of them) read 1, the other 50 read 2/3
    expected = (51 * 1.0 + 50 * (2 / 3)) / RECALL_POINTS
    assert result["map_50"] == pytest.approx(expected)
    assert result["map"] == pytest.approx(expected)  # both matches are exact, so every threshold agrees


def test_a_looser_duplicate_ranked_first_costs_half_where_it_misses():
    # two predictions of one object: the better scored overlaps 0.625, the other exactly
    prediction = found([SHORT, SQUARE], [0.9, 0.8], [0, 0])
    result = coco_map([prediction], [truth([SQUARE], [0])], num_classes=1)

    # IoU threshold <= 0.625: the first is the hit, the duplicate comes after full recall -> AP 1.
    # Above it: a miss then the hit -> precision 0, 1/2 -> 1/2, 1/2 at every recall point -> AP 1/2
    per_threshold = [1.0 if threshold <= 0.625 else 0.5 for threshold in IOU_THRESHOLDS]
    assert result["map_50"] == pytest.approx(1.0)
    assert result["map_75"] == pytest.approx(0.5)
    assert result["map"] == pytest.approx(sum(per_threshold) / len(per_threshold))


def test_no_predictions_score_zero():
    targets = [truth([SQUARE], [0]), truth([SHIFTED], [1])]

    result = coco_map([nothing(), nothing()], targets, num_classes=2)

    assert result["map"] == pytest.approx(0.0)
    assert result["map_50"] == pytest.approx(0.0)
    assert result["per_class_ap50"] == pytest.approx([0.0, 0.0])


def test_images_with_neither_objects_nor_predictions_change_nothing():
    predictions = [found([SHORT, SHIFTED], [0.9, 0.6], [0, 0])]
    targets = [truth([SQUARE], [0])]
    alone = coco_map(predictions, targets, num_classes=1)

    padded = coco_map(
        [nothing(), *predictions, nothing()], [truth([], []), *targets, truth([], [])], num_classes=1
    )

    assert padded == alone


def test_a_class_without_ground_truth_is_none_and_left_out_of_the_mean():
    targets = [truth([SQUARE, [30, 30, 40, 40]], [0, 2])]
    hits = found([SQUARE, [30, 30, 40, 40]], [0.9, 0.8], [0, 2])
    with_strays = found([*hits.boxes.tolist(), SHIFTED], [0.9, 0.8, 0.95], [0, 2, 1])

    result = coco_map([with_strays], targets, num_classes=3)

    assert result["per_class_ap50"] == [pytest.approx(1.0), None, pytest.approx(1.0)]
    assert result == coco_map([hits], targets, num_classes=3)


def test_no_ground_truth_anywhere_gives_none_everywhere():
    result = coco_map([found([SQUARE], [0.9], [0])], [truth([], [])], num_classes=2)

    assert result == {
        "map": None,
        "map_50": None,
        "map_75": None,
        "map_small": None,
        "map_medium": None,
        "map_large": None,
        "per_class_ap50": [None, None],
    }


def test_image_size_clips_predictions_to_the_image():
    # half the prediction lies left of the image: IoU 100 / 150 unclipped, 1 once clipped
    prediction, target = found([[-5.0, 0.0, 10.0, 10.0]], [0.9], [0]), truth([SQUARE], [0])

    unclipped = coco_map([prediction], [target], num_classes=1)
    clipped = coco_map([prediction], [target], num_classes=1, image_size=(10, 20))

    assert unclipped["map_75"] == pytest.approx(0.0)
    assert clipped["map"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("predictions", "targets", "message"),
    [
        ([nothing()], [], "1 predictions but 0 targets (need one of each per image)"),
        ([], [], "coco_map needs at least one image"),
        (
            [found([SQUARE], [0.9], [0])],
            [GroundTruth(boxes=torch.zeros(1, 5), labels=torch.zeros(1, dtype=torch.int64))],
            "targets[0]: boxes must have shape (N, 4), got (1, 5)",
        ),
        (
            [nothing(), found([SQUARE], [0.9], [3])],
            [truth([], []), truth([SQUARE], [0])],
            "predictions[1]: label 3 of box 0 is not in 0..1",
        ),
        (
            [found([[10.0, 0.0, 0.0, 10.0]], [0.9], [0])],
            [truth([SQUARE], [0])],
            "predictions[0]: box 0 [10.0, 0.0, 0.0, 10.0] is not x1 y1 x2 y2 with x1 <= x2 and y1 <= y2",
        ),
        (
            [found([SQUARE], [0.9, 0.8], [0])],
            [truth([SQUARE], [0])],
            "predictions[0]: scores must have shape (1,) to match the boxes, got (2,)",
        ),
        (
            [found([SQUARE], [0.9], [0])],
            [GroundTruth(boxes=torch.tensor([SQUARE]), labels=torch.tensor([0.0]))],
            "targets[0]: labels must be integers, got torch.float32",
        ),
        (
            [found([SQUARE], [float("nan")], [0])],
            [truth([SQUARE], [0])],
            "predictions[0]: scores must be finite numbers",
        ),
    ],
)
def test_bad_input_is_named(predictions, targets, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        coco_map(predictions, targets, num_classes=2)


def test_ground_truth_outside_the_given_image_size_is_an_error():
    message = "targets[0]: box 0 [0.0, 0.0, 10.0, 10.0] lies outside the 8x10 image (width x height)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        coco_map([nothing()], [truth([SQUARE], [0])], num_classes=1, image_size=(10, 8))


def brute_force_iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    overlap = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap
    return overlap / union if union > 0 else 0.0


def test_box_iou_matches_a_loop_over_pairs():
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(12, 2, generator=generator, dtype=torch.float64) * 10
    sides = torch.rand(12, 2, generator=generator, dtype=torch.float64) * 10
    boxes = torch.cat([corners, corners + sides], dim=1)
    # plus a point-like box, a box touching another at an edge, and a copy
    boxes = torch.cat([boxes, torch.tensor([[3.0, 3.0, 3.0, 3.0], [0, 0, 10, 10], [10, 0, 20, 10], SQUARE])])
    a, b = boxes[:9], boxes[9:]

    result = box_iou(a, b)

    expected = [[brute_force_iou(x, y) for y in b.tolist()] for x in a.tolist()]
    torch.testing.assert_close(result, torch.tensor(expected, dtype=torch.float64))
    assert box_iou(boxes[-4:-3], boxes[-4:-3]).item() == 0.0  # no area on either side: 0, not NaN


def test_box_iou_of_empty_sets_is_empty():
    assert box_iou(torch.zeros(0, 4), torch.tensor([SQUARE])).shape == (0, 1)


def scene() -> Detections:
    """A teacher's view of one image: three confident boxes of two classes and one it barely believes."""
    boxes = [SQUARE, [30, 30, 50, 60], [60, 10, 90, 20], [5, 40, 25, 60]]
    return found(boxes, [0.95, 0.8, 0.6, 0.1], [0, 1, 0, 1])


def test_the_teacher_agrees_with_itself():
    result = teacher_agreement([scene(), nothing()], [scene(), nothing()])

    # the 0.1 box is not ground truth; as a prediction it ranks below every hit, after full recall
    assert result == {
        "map_50": pytest.approx(1.0),
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "matched": 3,
        "student_detections": 3,
        "teacher_detections": 3,
    }


def test_a_shifted_student_box_agrees_less():
    teacher = found([SQUARE, [30, 30, 40, 40]], [0.9, 0.8], [0, 0])
    student = found([SQUARE, [35, 30, 45, 40]], [0.9, 0.8], [0, 0])  # the second shifted to IoU 1/3

    result = teacher_agreement([student], [teacher])

    assert (result["matched"], result["precision"], result["recall"]) == (1, 0.5, 0.5)
    assert result["f1"] == pytest.approx(0.5)
    # hit then miss: recall 1/2 reached at precision 1 (51 recall points), never recall above it
    assert result["map_50"] == pytest.approx(51 / RECALL_POINTS)


def test_matching_is_one_to_one_and_within_a_label():
    teacher = found([SQUARE, SHIFTED], [0.9, 0.9], [0, 1])
    # two students on the one label-0 box; a third on the label-1 box but labelled 0
    student = found([SQUARE, SQUARE, SHIFTED], [0.9, 0.8, 0.7], [0, 0, 0])

    result = teacher_agreement([student], [teacher])

    precision, recall = 1 / 3, 1 / 2
    assert (result["matched"], result["student_detections"], result["teacher_detections"]) == (1, 3, 2)
    assert result["precision"] == pytest.approx(precision)
    assert result["recall"] == pytest.approx(recall)
    assert result["f1"] == pytest.approx(2 * precision * recall / (precision + recall))


def test_the_best_scored_student_box_takes_its_best_overlap():
    near = [2.5, 0.0, 12.5, 10.0]  # IoU 0.6 with SQUARE and with SHIFTED; SQUARE and SHIFTED overlap 1/3
    teacher = found(
        [near, SQUARE], [0.9, 0.9], [0, 0]
    )  # listed first, so taking the first IoU >= 0.5 is wrong
    student = found([SQUARE, SHIFTED], [0.9, 0.8], [0, 0])

    result = teacher_agreement([student], [teacher])

    # SQUARE takes SQUARE (IoU 1 beats 0.6), leaving `near` to SHIFTED (0.6)
    assert result["matched"] == 2


def test_detections_at_or_below_the_threshold_are_not_counted():
    teacher = found([SQUARE, SHIFTED], [0.9, 0.3], [0, 0])
    student = found([SQUARE, SHIFTED], [0.9, 0.2], [0, 0])

    result = teacher_agreement([student], [teacher], score_threshold=0.3)

    assert (result["matched"], result["student_detections"], result["teacher_detections"]) == (1, 1, 1)


def test_nothing_on_either_side_agrees_and_has_no_map():
    result = teacher_agreement([nothing()], [found([SQUARE], [0.1], [0])])

    assert (result["precision"], result["recall"], result["f1"], result["map_50"]) == (1.0, 1.0, 1.0, None)


@pytest.mark.parametrize(
    ("student", "teacher", "iou", "message"),
    [
        ([nothing()], [], 0.5, "1 student images but 0 teacher images (need one per image)"),
        ([nothing()], [nothing()], 0.0, "iou must be in (0, 1], got 0.0"),
        ([nothing()], [found([SQUARE], [0.9], [-1])], 0.5, "teacher[0]: label -1 of box 0 is not 0 or more"),
    ],
)
def test_bad_agreement_input_is_named(student, teacher, iou, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        teacher_agreement(student, teacher, iou=iou)


def test_classes_are_scored_apart_across_images():
    # per class k in 0..2, image i in 0..1 holds one object; class k's prediction misses on image k % 2 only
    targets, predictions = [], []
    for image in range(2):
        boxes = [[20.0 * k, 0.0, 20.0 * k + 10, 10.0] for k in range(3)]
        targets.append(truth(boxes, [0, 1, 2]))
        guesses = [box if k % 2 != image else [b + 100 for b in box] for k, box in enumerate(boxes)]
        predictions.append(found(guesses, [0.9 - 0.1 * image] * 3, [0, 1, 2]))

    result = coco_map(predictions, targets, num_classes=3)

    # each class has 2 objects and 1 hit, so recall stops at 1/2 (recall points 0..0.50, 51 of them).
    # classes 0 and 2 miss on image 0 (score 0.9), then hit (0.8): precision 0, 1/2 -> 1/2 at those points;
    # class 1 hits on image 0 (0.9), then misses: precision 1, 1/2 -> 1 at those points
    expected = [51 * 0.5 / RECALL_POINTS, 51 / RECALL_POINTS, 51 * 0.5 / RECALL_POINTS]
    assert result["per_class_ap50"] == pytest.approx(expected)
    assert result["map_50"] == pytest.approx(sum(expected) / 3)
