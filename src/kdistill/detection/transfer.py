"""A teacher-labelled transfer set: unlabelled images (extra scenes, a user's own footage) with the teacher's
confident detections as their boxes, so a student can learn from far more images than anyone labelled.

Only detections scoring at least `score_threshold` become labels (FCOS's test-time score, `fcos.postprocess`):
below it a teacher's boxes are mostly noise that the student would be taught to repeat.
"""

from __future__ import annotations

import torch
from torch import nn

from kdistill.detection.coco import DetectionData
from kdistill.detection.fcos import postprocess

__all__ = ["teacher_labelled"]


@torch.inference_mode()
def teacher_labelled(
    teacher: nn.Module,
    images: torch.Tensor,
    class_names: tuple[str, ...],
    *,
    score_threshold: float = 0.5,
    nms_iou: float = 0.6,
    batch_size: int = 32,
) -> DetectionData:
    """`images` (N, 3, H, W) labelled by `teacher` (an FCOS detector, put in eval mode): per image the boxes
    and labels of its detections scoring >= score_threshold, after class-wise NMS."""
    if not 0.0 < score_threshold <= 1.0:
        raise ValueError(f"score_threshold must be in (0, 1], got {score_threshold}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    was_training = teacher.training
    teacher.eval()
    boxes: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    size = (images.shape[2], images.shape[3])
    for start in range(0, len(images), batch_size):
        output = teacher(images[start : start + batch_size])
        for b, _, lab in postprocess(output, image_size=size, score_thresh=score_threshold, nms_iou=nms_iou):
            boxes.append(b.float().cpu())
            labels.append(lab.long().cpu())
    teacher.train(was_training)
    return DetectionData(images, boxes, labels, tuple(class_names))
