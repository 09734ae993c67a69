"""FCOS training targets, loss and decoding (Tian et al., ICCV 2019, arXiv:1904.01355), in plain torch.

Every cell of every level is a point at ((col + 0.5) * stride, (row + 0.5) * stride) in pixels. A point is
positive for a box when
  - it lies within the box's centre region: the box clipped to its centre +- `center_radius` strides (FCOS's
    "centre sampling", 1.5 in the FCOS repository and torchvision; None: anywhere inside the box, as in the
    paper), and
  - the largest of its four distances to the box edges, max(l, t, r, b), lies in the level's size range
    (so small objects are learnt on fine levels and large ones on coarse levels);
a point positive for several boxes takes the one of smallest area. Boxes are x1 y1 x2 y2 in pixels.

Size ranges: FCOS gives level l the distances (8 * stride_{l-1}, 8 * stride_l], that is (0, 64], (64, 128],
(128, 256] on P3-P5, for images of ~800 px. On kdistill's 128 px images nothing would reach P5, so
`size_ranges_for` shrinks the factor 8 with the image: 8 * shorter_side / 512, kept within [2, 8] (2 at 128 px:
(0, 16], (16, 32], (32, inf); 8 from 512 px on). The last level always reaches to infinity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.detection.boxes import box_iou
from kdistill.detection.models import FCOSOutput
from kdistill.losses.numerics import compute_dtype

__all__ = [
    "assign_targets",
    "batched_nms",
    "centerness_target",
    "flatten_levels",
    "fcos_loss",
    "giou_loss_ltrb",
    "level_points",
    "nms",
    "postprocess",
    "sigmoid_focal_loss",
    "size_ranges_for",
]

CENTER_RADIUS = 1.5  # strides
FCOS_REACH = 8.0  # a level handles max(l, t, r, b) up to this many of its strides (FCOS, ~800 px images)
FCOS_REACH_IMAGE = 512  # images this large (shorter side) or larger get FCOS's reach; smaller ones less
MIN_REACH = 2.0


# ------------------------------------------------------------------------------------------------ targets


def level_points(sizes: Sequence[tuple[int, int]], strides: Sequence[int], device=None) -> list[Tensor]:
    """Per level (H_l * W_l, 2) point centres x, y in pixels, row-major like `tensor.flatten(-2)`."""
    points = []
    for (height, width), stride in zip(sizes, strides, strict=True):
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([x.flatten(), y.flatten()], dim=1))
    return points


def size_ranges_for(image_size: tuple[int, int], strides: Sequence[int]) -> list[tuple[float, float]]:
    """The (low, high] range of max(l, t, r, b) each level learns: FCOS's, scaled down for small images."""
    reach = min(FCOS_REACH, max(MIN_REACH, FCOS_REACH * min(image_size) / FCOS_REACH_IMAGE))
    bounds = [0.0] + [reach * s for s in strides[:-1]] + [math.inf]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _per_point(points: Sequence[Tensor], values: Sequence[float], like: Tensor) -> Tensor:
    """One value per level -> (P,) one per point of all levels."""
    counts = torch.tensor([len(p) for p in points], device=like.device)
    return torch.tensor([float(v) for v in values], dtype=like.dtype, device=like.device).repeat_interleave(
        counts
    )


def assign_targets(
    points: Sequence[Tensor],
    strides: Sequence[int],
    size_ranges: Sequence[tuple[float, float]],
    boxes: Tensor,
    labels: Tensor,
    *,
    center_radius: float | None = CENTER_RADIUS,
) -> tuple[Tensor, Tensor]:
    """FCOS targets of one image for all points of all levels, concatenated in level order.

    points: per level (P_l, 2) from `level_points`; boxes (M, 4) x1 y1 x2 y2; labels (M,).
    Returns labels (P,) int64, -1 for background, and ltrb (P, 4) distances from each point to its assigned
    box (zeros on background points).
    """
    xy = torch.cat(list(points))  # (P, 2)
    stride = _per_point(points, strides, xy)  # (P,) each point's level's value
    low = _per_point(points, [lo for lo, _ in size_ranges], xy)
    high = _per_point(points, [hi for _, hi in size_ranges], xy)
    if len(boxes) == 0:
        return torch.full((len(xy),), -1, dtype=torch.long, device=xy.device), torch.zeros(len(xy), 4).to(xy)

    boxes = boxes.to(xy)
    x, y = xy[:, 0:1], xy[:, 1:2]  # (P, 1) against (M,) boxes -> (P, M)
    x1, y1, x2, y2 = boxes.unbind(1)  # (M,) each
    ltrb = torch.stack([x - x1, y - y1, x2 - x, y2 - y], dim=2)  # (P, M, 4)
    if center_radius is None:
        region = ltrb
    else:  # the box clipped to its centre +- radius strides
        cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, center_radius * stride[:, None]
        region = torch.stack(
            [
                x - torch.maximum(x1, cx - r),
                y - torch.maximum(y1, cy - r),
                torch.minimum(x2, cx + r) - x,
                torch.minimum(y2, cy + r) - y,
            ],
            dim=2,
        )
    reach = ltrb.max(dim=2).values
    candidate = (region.min(dim=2).values > 0) & (reach > low[:, None]) & (reach <= high[:, None])
    area = (x2 - x1) * (y2 - y1)
    cost = torch.where(candidate, area[None, :], torch.full_like(reach, math.inf))
    smallest, box = cost.min(dim=1)
    positive = torch.isfinite(smallest)
    point_labels = torch.where(positive, labels.to(xy.device)[box], -1)
    point_ltrb = torch.where(positive[:, None], ltrb[torch.arange(len(xy)), box], 0.0)
    return point_labels, point_ltrb


def centerness_target(ltrb: Tensor) -> Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)): 1 at a box's centre, towards 0 at its edges."""
    left, top, right, bottom = ltrb.unbind(-1)
    horizontal = torch.minimum(left, right) / torch.maximum(left, right)
    vertical = torch.minimum(top, bottom) / torch.maximum(top, bottom)
    return torch.sqrt((horizontal * vertical).clamp_min(0))


# ------------------------------------------------------------------------------------------------- losses


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, *, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Elementwise focal loss (Lin et al. 2017): -alpha_t (1 - p_t)^gamma log p_t, no reduction.

    p_t = sigmoid(x) where the target is 1, else 1 - sigmoid(x); alpha_t = alpha on targets 1, else 1 - alpha.
    log p_t comes from the logits (BCE with logits), so it stays finite for any logit. Computed in float32
    (float64 stays float64).
    """
    dtype = compute_dtype(logits)
    logits, targets = logits.to(dtype), targets.to(dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t) ** gamma * ce


def giou_loss_ltrb(pred: Tensor, target: Tensor) -> Tensor:
    """1 - GIoU (Rezatofighi et al. 2019) of two boxes given as (..., 4) distances from one shared point.

    Sharing the point makes the intersection min(l) + min(r) by min(t) + min(b) and the enclosing box
    max(l) + max(r) by max(t) + max(b). No reduction.
    """
    pred, target = pred.float(), target.float()
    pl, pt, pr, pb = pred.unbind(-1)
    tl, tt, tr, tb = target.unbind(-1)
    area_pred, area_target = (pl + pr) * (pt + pb), (tl + tr) * (tt + tb)
    intersection = (torch.minimum(pl, tl) + torch.minimum(pr, tr)) * (
        torch.minimum(pt, tt) + torch.minimum(pb, tb)
    )
    union = area_pred + area_target - intersection
    enclosing = (torch.maximum(pl, tl) + torch.maximum(pr, tr)) * (
        torch.maximum(pt, tt) + torch.maximum(pb, tb)
    )
    iou = intersection / union.clamp_min(1e-7)
    return 1 - (iou - (enclosing - union) / enclosing.clamp_min(1e-7))


def flatten_levels(levels: list[Tensor]) -> Tensor:
    """Per level (B, C, H, W) -> (B, sum H*W, C), points in the order of `level_points`."""
    return torch.cat([level.flatten(2).transpose(1, 2) for level in levels], dim=1)


def fcos_loss(
    output: FCOSOutput,
    boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    *,
    image_size: tuple[int, int],
    size_ranges: Sequence[tuple[float, float]] | None = None,
    center_radius: float | None = CENTER_RADIUS,
) -> dict[str, Tensor]:
    """FCOS's training loss of a batch; `total` = cls + box + centerness, each a scalar.

    boxes, labels: per image (M_i, 4) x1 y1 x2 y2 pixels and (M_i,) in [0, K) (as in `DetectionData`).
    cls: sigmoid focal loss summed over all points and classes, divided by the batch's positive points;
    box: 1 - GIoU on positive points, weighted by their centerness target and divided by its sum (FCOS repo);
    centerness: BCE of the centerness logit against its target, mean over positive points.
    A batch without positive points divides cls by 1 and gives 0 box and centerness terms (not NaN).
    size_ranges: per level (low, high] of max(l, t, r, b); default `size_ranges_for(image_size, strides)`.
    """
    if len(boxes) != len(labels) or len(boxes) != output.cls_logits[0].shape[0]:
        raise ValueError(
            f"fcos_loss: {output.cls_logits[0].shape[0]} images but {len(boxes)} box lists and "
            f"{len(labels)} label lists"
        )
    num_classes = output.cls_logits[0].shape[1]
    for image, image_labels in enumerate(labels):
        if len(image_labels) and not bool(((image_labels >= 0) & (image_labels < num_classes)).all()):
            bad = image_labels[(image_labels < 0) | (image_labels >= num_classes)][0].item()
            raise ValueError(
                f"fcos_loss: image {image} has label {bad}; the model has {num_classes} classes "
                f"(labels 0..{num_classes - 1})"
            )
    sizes = [tuple(level.shape[-2:]) for level in output.cls_logits]
    points = level_points(sizes, output.strides, device=output.cls_logits[0].device)
    ranges = size_ranges if size_ranges is not None else size_ranges_for(image_size, output.strides)
    assigned = [
        assign_targets(points, output.strides, ranges, b, lab, center_radius=center_radius)
        for b, lab in zip(boxes, labels, strict=True)
    ]
    target_labels = torch.stack([a[0] for a in assigned])  # (B, P)
    target_ltrb = torch.stack([a[1] for a in assigned])  # (B, P, 4)

    logits = flatten_levels(output.cls_logits)  # (B, P, K)
    ltrb = flatten_levels(output.box_ltrb)  # (B, P, 4)
    centerness = flatten_levels(output.centerness)[..., 0]  # (B, P)
    positive = target_labels >= 0
    num_positive = positive.sum().clamp_min(1)

    one_hot = F.one_hot(target_labels.clamp_min(0), logits.shape[-1]) * positive[..., None]
    cls = sigmoid_focal_loss(logits, one_hot).sum() / num_positive
    center_target = centerness_target(target_ltrb[positive])  # (N_pos,)
    giou = giou_loss_ltrb(ltrb[positive], target_ltrb[positive])
    box = (giou * center_target).sum() / center_target.sum().clamp_min(1e-6)
    center_logits = centerness[positive].to(center_target.dtype)
    center = F.binary_cross_entropy_with_logits(center_logits, center_target, reduction="sum") / num_positive
    return {"cls": cls, "box": box, "centerness": center, "total": cls + box + center}


# ------------------------------------------------------------------------------------------------ decoding


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first.

    Take the best remaining box, drop every remaining box whose IoU with it exceeds iou_threshold, repeat.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    overlaps = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= overlaps[i]
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each class: boxes of different classes are moved apart so they never overlap."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    offsets = classes.to(boxes) * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


@torch.no_grad()
def postprocess(
    output: FCOSOutput,
    *,
    image_size: tuple[int, int],
    score_thresh: float = 0.05,
    nms_iou: float = 0.6,
    max_det: int = 100,
    candidates_per_level: int = 1000,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Detections per image: boxes (N, 4) x1 y1 x2 y2 clipped to image_size (H, W), scores (N,), labels (N,).

    score = sqrt(sigmoid(class logit) * sigmoid(centerness)) (FCOS's test-time score); per level the best
    `candidates_per_level` (point, class) pairs above score_thresh are kept, then class-wise NMS, then the
    max_det best.
    """
    height, width = image_size
    sizes = [tuple(level.shape[-2:]) for level in output.cls_logits]
    points = level_points(sizes, output.strides, device=output.cls_logits[0].device)
    results = []
    for image in range(output.cls_logits[0].shape[0]):
        all_boxes, all_scores, all_labels = [], [], []
        for level, xy in enumerate(points):
            logits = output.cls_logits[level][image].flatten(1).T.float()  # (P_l, K)
            ltrb = output.box_ltrb[level][image].flatten(1).T.float()  # (P_l, 4)
            centerness = output.centerness[level][image].flatten(1).T.float()  # (P_l, 1)
            scores = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(centerness)).flatten()  # point-major
            keep = torch.nonzero(scores > score_thresh).squeeze(1)
            keep = keep[torch.topk(scores[keep], min(candidates_per_level, len(keep))).indices]
            point, label = keep // logits.shape[1], keep % logits.shape[1]
            box = torch.cat([xy[point] - ltrb[point, :2], xy[point] + ltrb[point, 2:]], dim=1)
            all_boxes.append(box)
            all_scores.append(scores[keep])
            all_labels.append(label)
        boxes, scores, labels = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        kept = batched_nms(boxes, scores, labels, nms_iou)[:max_det]
        results.append((boxes[kept], scores[kept], labels[kept]))
    return results
