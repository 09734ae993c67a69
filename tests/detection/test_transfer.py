"""The teacher-labelled transfer set: the teacher's confident detections become the labels, nothing else."""

from __future__ import annotations

import math

import pytest
import torch
from tests.detection.test_fcos import hand_made_output
from torch import nn

from kdistill.detection.fcos import postprocess
from kdistill.detection.transfer import teacher_labelled


class Scripted(nn.Module):
    """A 'teacher' that gives hand_made_output for every image of a batch (confident at one point only)."""

    def forward(self, images: torch.Tensor):
        one = hand_made_output()
        repeat = images.shape[0]
        return type(one)(
            [t.expand(repeat, -1, -1, -1) for t in one.cls_logits],
            [t.expand(repeat, -1, -1, -1) for t in one.box_ltrb],
            [t.expand(repeat, -1, -1, -1) for t in one.centerness],
            [],
            one.strides,
        )


def test_confident_detections_become_the_labels_of_every_image_in_every_batch():
    images = torch.rand(5, 3, 64, 64)
    data = teacher_labelled(Scripted(), images, ("a", "b", "c"), score_threshold=0.5, batch_size=2)
    (expected_boxes, expected_scores, expected_labels) = postprocess(hand_made_output(), image_size=(64, 64))[
        0
    ]
    assert expected_scores.item() == pytest.approx(math.sqrt(0.64 * 0.5))  # 0.566 >= 0.5: kept
    assert len(data) == 5 and data.class_names == ("a", "b", "c") and data.images is images
    for boxes, labels in zip(data.boxes, data.labels, strict=True):
        torch.testing.assert_close(boxes, expected_boxes)
        assert labels.tolist() == expected_labels.tolist() == [1]


def test_detections_below_the_threshold_label_nothing():
    data = teacher_labelled(Scripted(), torch.rand(3, 3, 64, 64), ("a", "b", "c"), score_threshold=0.6)
    assert all(b.shape == (0, 4) for b in data.boxes) and all(lab.numel() == 0 for lab in data.labels)


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match=r"score_threshold must be in \(0, 1\], got 0"):
        teacher_labelled(Scripted(), torch.rand(1, 3, 64, 64), ("a",), score_threshold=0)
    with pytest.raises(ValueError, match=r"images must be \(N, 3, H, W\), got \(3, 64, 64\)"):
        teacher_labelled(Scripted(), torch.rand(3, 64, 64), ("a",))


def test_a_real_detector_labels_a_scene_batch_with_boxes_inside_the_images():
    from kdistill.detection import CLASSES, build_detector, make_scenes

    torch.manual_seed(0)
    teacher = build_detector("fcos_s", num_classes=len(CLASSES)).train()
    scenes = make_scenes(3, seed=0, size=64)
    data = teacher_labelled(teacher, scenes.images, CLASSES, score_threshold=0.05, batch_size=2)
    assert teacher.training  # its mode is given back
    assert len(data) == 3 and data.class_names == CLASSES
    for boxes, labels in zip(data.boxes, data.labels, strict=True):
        assert boxes.shape[1] == 4 and len(boxes) == len(labels)
        assert bool((boxes >= 0).all()) and bool((boxes <= 64).all())
        assert bool(((labels >= 0) & (labels < len(CLASSES))).all())
