"""One detection student's training step: its FCOS loss where boxes are known, plus the arm's distillation terms
against the teacher's cached outputs.

    batch of image indices ──> student forward (features tapped by module path)
        ├─ FCOS loss on images with boxes: labelled images, and transfer images when the arm uses pseudo labels
        └─ per term, against the teacher's outputs for the same images (computed once per run, `TeacherOutputs`):
             response   dense classification KD (sigmoid, tempered) + teacher-box regression (GIoU)
             pkd        Pearson-correlation feature distillation on the tapped levels
             imitation  fine-grained imitation on cells near objects
             fgd        focal (foreground/background, attention) and global distillation

Student features pass through a learned 1x1 conv per level (`adapters`) onto the teacher's channels; FGD's
global-context blocks are learned too. They are saved beside the student (`student.` prefix) in the job's
weights and dropped at export.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdistill.classic.loop import Batch
from kdistill.classic.taps import FeatureTap
from kdistill.detection.config import DetectionArm, DetectionLossTerm
from kdistill.detection.fcos import fcos_loss, flatten_levels, giou_loss_ltrb
from kdistill.detection.models import FCOSDetector, FCOSOutput
from kdistill.losses.detection import (
    GlobalContextBlock,
    dense_response_kd,
    fgd_loss,
    fine_grained_imitation,
    imitation_mask,
    max_class_probability,
    pkd_loss,
)

__all__ = ["DetectionDistiller", "DetectorTraining", "TeacherOutputs", "teacher_outputs"]

FEATURE_TERMS = ("pkd", "imitation", "fgd")


@dataclass
class TeacherOutputs:
    """The frozen teacher's outputs on every training image, index-aligned with the training images."""

    cls_logits: list[Tensor]  # per level (N, K, H, W)
    box_ltrb: list[Tensor]  # per level (N, 4, H, W)
    features: dict[str, Tensor]  # tapped module path -> (N, C, H, W)

    def select(self, index: Tensor) -> TeacherOutputs:
        return TeacherOutputs(
            [t[index] for t in self.cls_logits],
            [t[index] for t in self.box_ltrb],
            {k: v[index] for k, v in self.features.items()},
        )


@torch.inference_mode()
def teacher_outputs(
    teacher: FCOSDetector, images: Tensor, layers: Sequence[str], *, batch_size: int = 32
) -> TeacherOutputs:
    """Run the teacher (eval mode) once over `images`, keeping its head outputs and the tapped features."""
    teacher.eval()
    logits: list[list[Tensor]] = []
    ltrb: list[list[Tensor]] = []
    features: dict[str, list[Tensor]] = {layer: [] for layer in layers}
    with FeatureTap(teacher, list(layers)) as tap:
        for start in range(0, len(images), batch_size):
            output = teacher(images[start : start + batch_size])
            logits.append(output.cls_logits)
            ltrb.append(output.box_ltrb)
            for layer in layers:
                features[layer].append(tap.features[layer])
    return TeacherOutputs(
        [torch.cat(level) for level in zip(*logits, strict=True)],
        [torch.cat(level) for level in zip(*ltrb, strict=True)],
        {layer: torch.cat(parts) for layer, parts in features.items()},
    )


class DetectorTraining(nn.Module):
    """A detector trained on boxes alone (the teacher's training and the scratch baseline): batch -> FCOS loss."""

    def __init__(self, student: FCOSDetector, boxes: Sequence[Tensor], labels: Sequence[Tensor]) -> None:
        super().__init__()
        self.student = student
        self.boxes, self.labels = list(boxes), list(labels)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        output = self.student(batch.x)
        index = batch.index.tolist()
        size = (batch.x.shape[-2], batch.x.shape[-1])
        loss = fcos_loss(
            output, [self.boxes[i] for i in index], [self.labels[i] for i in index], image_size=size
        )
        return {"det": loss["total"]}


class DetectionDistiller(nn.Module):
    """Student + the learned parts of its loss terms; `forward(batch)` gives the arm's weighted loss terms.

    Training images are indexed 0..N-1: the first `labeled` have ground truth; the others are transfer images
    whose boxes (`boxes[i]` for i >= labeled) are the teacher's confident detections, used as FCOS targets only
    when the arm asks for pseudo labels, and as the object masks of imitation / FGD always.
    """

    def __init__(
        self,
        student: FCOSDetector,
        arm: DetectionArm,
        *,
        teacher: TeacherOutputs,
        boxes: Sequence[Tensor],
        labels: Sequence[Tensor],
        labeled: int,
        example: Tensor,
    ) -> None:
        super().__init__()
        self.student, self.arm, self.teacher = student, arm, teacher
        self.boxes, self.labels, self.labeled = list(boxes), list(labels), labeled
        self.student_layers = sorted(
            {p for t in arm.losses if t.name in FEATURE_TERMS for p in t.student_layers}
        )
        student_channels = self._channels(example)
        self.adapters = nn.ModuleDict()
        self.contexts = nn.ModuleDict()
        for i, term in enumerate(arm.losses):
            if term.name not in FEATURE_TERMS:
                continue
            pairs = list(zip(term.student_layers, term.teacher_layers, strict=True))
            self.adapters[str(i)] = nn.ModuleList(
                nn.Conv2d(student_channels[s], teacher.features[t].shape[1], 1) for s, t in pairs
            )
            if term.name == "fgd" and term.params.get("lambda_", 1.0) != 0:
                self.contexts[str(i)] = nn.ModuleList(
                    nn.ModuleList(
                        [
                            GlobalContextBlock(teacher.features[t].shape[1]),
                            GlobalContextBlock(teacher.features[t].shape[1]),
                        ]
                    )
                    for _, t in pairs
                )

    def _channels(self, example: Tensor) -> dict[str, int]:
        was_training = self.student.training
        self.student.eval()
        with torch.no_grad(), FeatureTap(self.student, self.student_layers) as tap:
            self.student(example)
        self.student.train(was_training)
        return {p: f.shape[1] for p, f in tap.features.items()}

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        with FeatureTap(self.student, self.student_layers) as tap:
            output = self.student(batch.x)
        index = batch.index
        size = (batch.x.shape[-2], batch.x.shape[-1])
        terms = {"det": self._detection_loss(output, index, size)}
        if not self.arm.losses:
            return terms
        teacher = self.teacher.select(index.to(self.teacher.cls_logits[0].device))
        teacher = TeacherOutputs(
            [t.to(batch.x.device) for t in teacher.cls_logits],
            [t.to(batch.x.device) for t in teacher.box_ltrb],
            {k: v.to(batch.x.device) for k, v in teacher.features.items()},
        )
        boxes = [self.boxes[i].to(batch.x.device) for i in index.tolist()]
        for i, term in enumerate(self.arm.losses):
            value = self._term(i, term, output, tap.features, teacher, boxes)
            key = term.name if term.name not in terms else f"{term.name}.{i}"
            terms[key] = term.weight * value
        return terms

    def _detection_loss(self, output: FCOSOutput, index: Tensor, size: tuple[int, int]) -> Tensor:
        """FCOS loss over the batch's images that have boxes to learn (0 when none has)."""
        has_boxes = index < self.labeled
        if self.arm.pseudo_labels:
            has_boxes = torch.ones_like(has_boxes)
        chosen = torch.nonzero(has_boxes).squeeze(1)
        if len(chosen) == 0:
            return output.cls_logits[0].sum() * 0.0
        part = FCOSOutput(
            [t[chosen] for t in output.cls_logits],
            [t[chosen] for t in output.box_ltrb],
            [t[chosen] for t in output.centerness],
            [t[chosen] for t in output.features],
            output.strides,
        )
        rows = index[chosen].tolist()
        loss = fcos_loss(part, [self.boxes[i] for i in rows], [self.labels[i] for i in rows], image_size=size)
        # the loss is a mean over the chosen images' positives: scale by their share of the batch, so a batch
        # with one labelled image does not weigh as much as a batch of them
        return loss["total"] * (len(chosen) / len(index))

    def _term(
        self,
        i: int,
        term: DetectionLossTerm,
        output: FCOSOutput,
        student_features: dict[str, Tensor],
        teacher: TeacherOutputs,
        boxes: list[Tensor],
    ) -> Tensor:
        p = term.params
        if term.name == "response":
            return response_distillation(
                output,
                teacher,
                temperature=float(p.get("temperature", 1.0)),
                box_weight=float(p.get("box_weight", 1.0)),
            )
        adapters = self.adapters[str(i)]
        student_levels = [
            adapter(student_features[s]) for adapter, s in zip(adapters, term.student_layers, strict=True)
        ]
        teacher_levels = [teacher.features[t] for t in term.teacher_layers]
        if term.name == "pkd":
            return pkd_loss(student_levels, teacher_levels)
        strides = [float(s) for s in output.strides]
        if term.name == "imitation":
            masks = [
                imitation_mask(
                    boxes, tuple(t.shape[-2:]), stride, thresh_factor=float(p.get("thresh_factor", 0.5))
                )
                for t, stride in zip(teacher_levels, strides, strict=True)
            ]
            return fine_grained_imitation(student_levels, teacher_levels, masks)
        contexts = self.contexts[str(i)] if str(i) in self.contexts else None
        return fgd_loss(
            student_levels,
            teacher_levels,
            boxes,
            strides,
            temperature=float(p.get("temperature", 0.8)),
            alpha=float(p.get("alpha", 1.6e-3)),
            beta=float(p.get("beta", 8e-4)),
            gamma=float(p.get("gamma", 8e-4)),
            lambda_=float(p.get("lambda_", 8e-6)),
            student_context=[pair[0] for pair in contexts] if contexts is not None else None,
            teacher_context=[pair[1] for pair in contexts] if contexts is not None else None,
        )


def response_distillation(
    output: FCOSOutput, teacher: TeacherOutputs, *, temperature: float = 1.0, box_weight: float = 1.0
) -> Tensor:
    """Dense-head response KD for FCOS: the binary KL of every class at every position (`dense_response_kd`),
    summed and divided by the teacher's soft object count (the sum over positions of its top class
    probability, at least 1), as FCOS divides its focal loss by the number of positives; plus `box_weight`
    times the GIoU loss between the student's and the teacher's box distances, weighted per position by that
    teacher probability (FCOS regresses distances directly, so this takes the place of LD's edge
    distributions)."""
    student_logits = [t.permute(0, 2, 3, 1) for t in output.cls_logits]
    teacher_logits = [t.permute(0, 2, 3, 1) for t in teacher.cls_logits]
    weights = max_class_probability(teacher_logits)  # per level (B, H, W)
    objects = sum(w.sum() for w in weights).clamp_min(1.0)
    cls = (
        dense_response_kd(student_logits, teacher_logits, temperature=temperature, reduction="sum") / objects
    )
    if box_weight == 0:
        return cls
    flat_weights = torch.cat([w.flatten(1) for w in weights], dim=1)  # (B, P)
    student_ltrb = flatten_levels(output.box_ltrb)  # (B, P, 4)
    teacher_ltrb = flatten_levels(teacher.box_ltrb).to(student_ltrb.dtype)
    giou = giou_loss_ltrb(student_ltrb.reshape(-1, 4), teacher_ltrb.reshape(-1, 4)).reshape(
        flat_weights.shape
    )
    box = (giou * flat_weights).sum() / flat_weights.sum().clamp_min(1e-6)
    return cls + box_weight * box
