"""How good a detector's boxes are: COCO mAP against ground truth, and agreement of a student with its teacher.

AP is pycocotools' own (`COCOeval`, the reference implementation), fed from memory: nothing is written to
disk and its prints are silenced. Boxes everywhere are (N, 4) x1 y1 x2 y2 in pixels, as in `DetectionData`;
labels (N,) are integers 0..C-1. COCO's conventions hold as they are: a box matches at IoU >= threshold, at
most 100 detections per image and class count, `small`/`medium`/`large` are absolute areas (< 32², 32²..96²,
> 96² pixels), and a class with no ground truth is left out of the mean, so its false positives cost nothing.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdistill.detection.boxes import box_iou
from kdistill.detection.coco import EDGE_TOLERANCE_PX

IOU_50 = 0.5


@dataclass(frozen=True)
class Detections:
    """One image's detections: boxes (N, 4) x1 y1 x2 y2 pixels, scores (N,), labels (N,) in 0..C-1."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


@dataclass(frozen=True)
class GroundTruth:
    """One image's true objects: boxes (M, 4) x1 y1 x2 y2 pixels, labels (M,) in 0..C-1."""

    boxes: Tensor
    labels: Tensor


def coco_map(
    predictions: Sequence[Detections],
    targets: Sequence[GroundTruth],
    *,
    num_classes: int,
    image_size: int | tuple[int, int] | None = None,
) -> dict[str, Any]:
    """COCO box AP of `predictions` against `targets` (one of each per image, in the same order).

    Returns `map` (AP averaged over IoU 0.50:0.05:0.95), `map_50`, `map_75`, `map_small`, `map_medium`,
    `map_large` and `per_class_ap50` (a list by label), each in [0, 1], or None where there is no ground
    truth to score against (COCOeval's -1: no object of that class, or of that size, in any image).
    Images without predictions or without objects are fine; no predictions at all scores 0.
    image_size: (height, width) or one side of square images; when given, predicted boxes are clipped to the
    image, as a detector's post-processing does, and a ground-truth box outside it is an error.
    """
    if len(predictions) != len(targets):
        raise ValueError(
            f"{len(predictions)} predictions but {len(targets)} targets (need one of each per image)"
        )
    if not predictions:
        raise ValueError("coco_map needs at least one image")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    height, width = (image_size, image_size) if isinstance(image_size, int) else (image_size or (None, None))
    for index, (predicted, target) in enumerate(zip(predictions, targets, strict=True)):
        _check_boxes(
            f"predictions[{index}]", predicted.boxes, predicted.labels, num_classes, predicted.scores
        )
        _check_boxes(f"targets[{index}]", target.boxes, target.labels, num_classes)
        if image_size is not None:
            _check_inside(f"targets[{index}]", target.boxes, height, width)

    images = [{"id": index + 1} for index in range(len(targets))]  # COCO ids start at 1 (0 means unmatched)
    if image_size is not None:
        images = [{**image, "height": height, "width": width} for image in images]
    categories = [{"id": label, "name": str(label)} for label in range(num_classes)]
    annotations = [
        {**_coco_box(box), "id": number, "image_id": image_id, "category_id": label}
        for number, (image_id, box, label) in enumerate(_flatten(targets), start=1)
    ]
    results = [
        {
            **_coco_box(_clipped(box, height, width)),
            "image_id": image_id,
            "category_id": label,
            "score": score,
        }
        for image_id, box, label, score in _flatten_scored(predictions)
    ]
    from pycocotools.cocoeval import COCOeval  # here: training a detector needs no evaluation dependency

    with contextlib.redirect_stdout(io.StringIO()):
        truth = _in_memory_coco({"images": images, "categories": categories, "annotations": annotations})
        # loadRes cannot read an empty list (it looks at the first entry), so no detections is an empty set
        detected = (
            truth.loadRes(results) if results else _in_memory_coco({**truth.dataset, "annotations": []})
        )
        evaluator = COCOeval(truth, detected, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()

    # precision: (IoU thresholds, recall thresholds, classes, area ranges, max detections); -1 = no ground truth
    precision = evaluator.eval["precision"]
    iou_50 = int(np.argmin(np.abs(evaluator.params.iouThrs - IOU_50)))
    all_areas, most_detections = 0, len(evaluator.params.maxDets) - 1
    per_class = [
        _unless_absent(precision[iou_50, :, label, all_areas, most_detections])
        for label in range(num_classes)
    ]
    names = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")  # the order of COCOeval.stats
    summary = {
        name: (None if value < 0 else float(value))
        for name, value in zip(names, evaluator.stats[: len(names)], strict=True)
    }
    return {**summary, "per_class_ap50": per_class}


def teacher_agreement(
    student: Sequence[Detections],
    teacher: Sequence[Detections],
    *,
    score_threshold: float = 0.3,
    iou: float = 0.5,
) -> dict[str, Any]:
    """How well the student reproduces the teacher's detections, image by image.

    The teacher's detections scoring above `score_threshold` are taken as ground truth. `map_50` is COCO AP@.5
    of all the student's detections against them (ranked by score; None when the teacher keeps nothing).
    `precision`, `recall` and `f1` count one-to-one matches among the detections both keep (score above the
    threshold): greedily, the student's highest-scoring box first takes the unmatched teacher box of its
    label with the highest IoU, if that IoU is >= `iou`. An empty side counts as fully precise (no student
    boxes) or fully recalled (no teacher boxes), so two empty sets agree perfectly. `matched`,
    `student_detections` and `teacher_detections` are the counts behind them.
    """
    if len(student) != len(teacher):
        raise ValueError(
            f"{len(student)} student images but {len(teacher)} teacher images (need one per image)"
        )
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou must be in (0, 1], got {iou}")
    for index, (ours, theirs) in enumerate(zip(student, teacher, strict=True)):
        _check_boxes(f"student[{index}]", ours.boxes, ours.labels, None, ours.scores)
        _check_boxes(f"teacher[{index}]", theirs.boxes, theirs.labels, None, theirs.scores)

    kept_teacher = [_above(detections, score_threshold) for detections in teacher]
    kept_student = [_above(detections, score_threshold) for detections in student]
    matched = sum(
        _greedy_matches(ours, theirs, iou) for ours, theirs in zip(kept_student, kept_teacher, strict=True)
    )
    student_count = sum(len(detections.labels) for detections in kept_student)
    teacher_count = sum(len(detections.labels) for detections in kept_teacher)
    precision = matched / student_count if student_count else 1.0
    recall = matched / teacher_count if teacher_count else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0

    targets = [GroundTruth(boxes=kept.boxes, labels=kept.labels) for kept in kept_teacher]
    num_classes = 1 + max((int(d.labels.max()) for d in [*student, *teacher] if len(d.labels)), default=0)
    ap = coco_map(student, targets, num_classes=num_classes)["map_50"]
    return {
        "map_50": ap,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "matched": matched,
        "student_detections": student_count,
        "teacher_detections": teacher_count,
    }


def _greedy_matches(student: Detections, teacher: Detections, iou: float) -> int:
    """Number of one-to-one pairs of the same label at IoU >= iou, taking student boxes by falling score."""
    if len(student.labels) == 0 or len(teacher.labels) == 0:
        return 0
    overlaps = box_iou(student.boxes.double(), teacher.boxes.double())  # (S, T)
    overlaps[student.labels[:, None] != teacher.labels[None, :]] = -1.0  # other labels never match
    matched = 0
    for row in torch.argsort(student.scores, descending=True, stable=True).tolist():
        best = int(overlaps[row].argmax())
        if overlaps[row, best] >= iou:
            overlaps[:, best] = -1.0  # this teacher box is taken
            matched += 1
    return matched


def _above(detections: Detections, score_threshold: float) -> Detections:
    keep = detections.scores > score_threshold
    return Detections(
        boxes=detections.boxes[keep], scores=detections.scores[keep], labels=detections.labels[keep]
    )


def _check_boxes(
    name: str, boxes: Tensor, labels: Tensor, num_classes: int | None, scores: Tensor | None = None
) -> None:
    """One line naming the image and what is wrong, for inputs that COCOeval would misread silently."""
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name}: boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    count = boxes.shape[0]
    if labels.shape != (count,):
        raise ValueError(
            f"{name}: labels must have shape ({count},) to match the boxes, got {tuple(labels.shape)}"
        )
    if scores is not None and scores.shape != (count,):
        raise ValueError(
            f"{name}: scores must have shape ({count},) to match the boxes, got {tuple(scores.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name}: labels must be integers, got {labels.dtype}")
    if count and not torch.isfinite(boxes).all():
        raise ValueError(f"{name}: boxes must be finite numbers")
    if scores is not None and count and not torch.isfinite(scores).all():
        raise ValueError(f"{name}: scores must be finite numbers")
    inverted = ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).nonzero().flatten()
    if len(inverted):
        box = int(inverted[0])
        raise ValueError(
            f"{name}: box {box} {boxes[box].tolist()} is not x1 y1 x2 y2 with x1 <= x2 and y1 <= y2"
        )
    outside = ((labels < 0) | (labels >= (num_classes or math.inf))).nonzero().flatten()
    if len(outside):
        allowed = "0 or more" if num_classes is None else f"in 0..{num_classes - 1}"
        raise ValueError(f"{name}: label {int(labels[outside[0]])} of box {int(outside[0])} is not {allowed}")


def _check_inside(name: str, boxes: Tensor, height: int, width: int) -> None:
    limit = torch.tensor([width, height, width, height], dtype=torch.float64) + EDGE_TOLERANCE_PX
    outside = ((boxes.double().cpu() < -EDGE_TOLERANCE_PX) | (boxes.double().cpu() > limit)).any(dim=1)
    if outside.any():
        box = int(outside.nonzero()[0])
        raise ValueError(
            f"{name}: box {box} {boxes[box].tolist()} lies outside the {width}x{height} image (width x height)"
        )


def _clipped(box: list[float], height: int | None, width: int | None) -> list[float]:
    if height is None or width is None:
        return box
    x1, y1, x2, y2 = box
    return [
        min(max(x1, 0.0), width),
        min(max(y1, 0.0), height),
        min(max(x2, 0.0), width),
        min(max(y2, 0.0), height),
    ]


def _coco_box(box: list[float]) -> dict[str, Any]:
    """x1 y1 x2 y2 -> COCO's [x, y, w, h], with the area COCO's size ranges read."""
    x1, y1, x2, y2 = box
    return {"bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}


def _flatten(targets: Sequence[GroundTruth]):
    for index, target in enumerate(targets):
        for box, label in zip(target.boxes.detach().double().tolist(), target.labels.tolist(), strict=True):
            yield index + 1, box, label


def _flatten_scored(predictions: Sequence[Detections]):
    for index, predicted in enumerate(predictions):
        boxes, labels = predicted.boxes.detach().double().tolist(), predicted.labels.tolist()
        for box, label, score in zip(boxes, labels, predicted.scores.detach().double().tolist(), strict=True):
            yield index + 1, box, label, score


def _in_memory_coco(dataset: dict[str, Any]) -> Any:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _unless_absent(precision: np.ndarray) -> float | None:
    """Mean over COCO's 101 recall points, or None where COCOeval marks the class absent (-1)."""
    return None if (precision < 0).all() else float(precision.mean())
