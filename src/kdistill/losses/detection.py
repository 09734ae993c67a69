"""Object-detection distillation losses: dense sigmoid responses, box-edge distributions and FPN features.

Detectors predict at many positions (every cell of every FPN level, times anchors), so each loss accepts
one tensor or a list with one tensor per FPN level (levels may differ in spatial size). Layouts:
  logits (response KD, LD): positions first, classes / bins last, e.g. (B, H, W, K) from a conv head's
      (B, K, H, W) by `.permute(0, 2, 3, 1)` (with A anchors: `.reshape(B, H, W, A, K)`);
  features (PKD, imitation, FGD): channels second, (B, C, H, W), the student already mapped to the
      teacher's shape by the caller's adapter (a 1x1 conv, owned by the method).
Everything is computed in float32 (float64 stays float64). Losses are not registered by name here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.losses.masking import REDUCTIONS
from kdistill.losses.numerics import compute_dtype

__all__ = [
    "GlobalContextBlock",
    "dense_response_kd",
    "fgd_loss",
    "fine_grained_imitation",
    "imitation_mask",
    "localization_distillation",
    "max_class_probability",
    "pkd_loss",
]

Levels = Tensor | Sequence[Tensor]  # one tensor, or one per FPN level
_Item = TypeVar("_Item")


# ------------------------------------------------------------------------------------------- input checks


def _as_levels(x: Levels | None, name: str, loss: str) -> list[Tensor] | None:
    if x is None or isinstance(x, Tensor):
        return None if x is None else [x]
    levels = list(x)
    if not levels or not all(isinstance(level, Tensor) for level in levels):
        raise ValueError(f"{loss}: {name} must be a tensor or a non-empty list of per-level tensors")
    return levels


def _level_pairs(student: Levels, teacher: Levels, what: str, loss: str) -> list[tuple[Tensor, Tensor]]:
    """Pair student and teacher levels; both one tensor or both lists of the same length and shapes."""
    if isinstance(student, Tensor) != isinstance(teacher, Tensor):
        raise ValueError(
            f"{loss}: student and teacher {what} must both be tensors or both be lists of per-level tensors, "
            f"got {type(student).__name__} and {type(teacher).__name__}"
        )
    s_levels, t_levels = (
        _as_levels(student, f"student {what}", loss),
        _as_levels(teacher, f"teacher {what}", loss),
    )
    assert s_levels is not None and t_levels is not None
    if len(s_levels) != len(t_levels):
        raise ValueError(f"{loss}: {len(s_levels)} student levels vs {len(t_levels)} teacher levels")
    for i, (s, t) in enumerate(zip(s_levels, t_levels, strict=True)):
        if s.shape != t.shape:
            raise ValueError(
                f"{loss}: student {what} {tuple(s.shape)} and teacher {what} {tuple(t.shape)} differ in shape"
                + _at_level(i, student)
            )
    return list(zip(s_levels, t_levels, strict=True))


def _at_level(i: int, inputs: Levels) -> str:
    return "" if isinstance(inputs, Tensor) else f" (level {i})"


def _per_level(x: _Item | Sequence[_Item], n_levels: int, name: str, loss: str) -> list[_Item]:
    """A per-level argument (stride, context module): one value shared by all levels, or one per level."""
    if isinstance(x, Sequence | nn.ModuleList):
        if len(x) != n_levels:
            raise ValueError(f"{loss}: {len(x)} {name} values for {n_levels} levels")
        return list(x)
    return [x] * n_levels


def _level_weights(
    mask: Levels | None, positions: list[torch.Size], inputs: Levels, loss: str
) -> list[Tensor] | None:
    """Check the mask/weights of every level: bool or floating, shape = that level's position shape."""
    masks = _as_levels(mask, "mask", loss)
    if masks is None:
        return None
    if isinstance(mask, Tensor) != isinstance(inputs, Tensor):
        raise ValueError(
            f"{loss}: mask must be a tensor for tensor inputs and a list (one per level) for lists"
        )
    if len(masks) != len(positions):
        raise ValueError(f"{loss}: {len(masks)} masks for {len(positions)} levels")
    for i, (m, shape) in enumerate(zip(masks, positions, strict=True)):
        if m.dtype != torch.bool and not m.is_floating_point():
            raise ValueError(f"{loss}: mask must be bool or floating (weights), got dtype {m.dtype}")
        if m.shape != shape:
            raise ValueError(
                f"{loss}: mask {tuple(m.shape)} does not match the positions {tuple(shape)}"
                + _at_level(i, inputs)
            )
    return masks


def _sum_levels(values: list[Tensor]) -> Tensor:
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total


def _weighted_reduce(
    per_position: list[Tensor], weights: list[Tensor] | None, reduction: str, inputs: Levels
) -> Tensor | list[Tensor]:
    """Reduce per-position values of all levels together.

    Bool masks select positions (torch.where, so values there cannot leak); float masks weight them.
    "mean" = sum_p w_p L_p / sum_p w_p over the positions of all levels (an all-zero mask gives 0, not
    NaN); "sum" = sum_p w_p L_p; "none" = w_p L_p with the inputs' structure (a tensor or a list).
    """
    if weights is not None:
        per_position = [
            torch.where(w, v, torch.zeros((), dtype=v.dtype, device=v.device))
            if w.dtype == torch.bool
            else v * w
            for v, w in zip(per_position, weights, strict=True)
        ]
    if reduction == "none":
        return per_position[0] if isinstance(inputs, Tensor) else per_position
    total = _sum_levels([v.sum() for v in per_position])
    if reduction == "sum":
        return total
    if weights is None:
        count = torch.tensor(sum(v.numel() for v in per_position), dtype=total.dtype, device=total.device)
    else:
        count = _sum_levels([w.sum(dtype=total.dtype) for w in weights])
    return total / torch.where(count > 0, count, torch.ones_like(count))


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _check_boxes(boxes: Tensor, loss: str) -> Tensor:
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"{loss}: boxes must be (K, 4) as (x1, y1, x2, y2) in pixels, got {tuple(boxes.shape)}"
        )
    return boxes if boxes.is_floating_point() else boxes.float()


# --------------------------------------------------------------------------------------- response terms


def dense_response_kd(
    student_logits: Levels,
    teacher_logits: Levels,
    *,
    temperature: float = 1.0,
    mask: Levels | None = None,
    reduction: str = "mean",
) -> Tensor | list[Tensor]:
    """Classification-response KD for dense heads with sigmoid (per-class binary) outputs (FCOS, RetinaNet).

    Hinton KD (arXiv:1503.02531) with each class an independent Bernoulli, as these heads are trained with
    focal / binary cross-entropy losses rather than a softmax. With p = sigmoid(t / T), q = sigmoid(s / T):
      L_pos = T^2 * sum_k [p_k log(p_k / q_k) + (1 - p_k) log((1 - p_k) / (1 - q_k))]
    i.e. the binary KL summed over the K classes. It equals BCE against the teacher's tempered sigmoid
    minus the teacher's entropy (a constant), so the gradient is the same and identical inputs give 0.
    T^2 keeps the gradient scale as T grows: for large T, L_pos -> sum_k (s_k - t_k)^2 / 8.

    student_logits, teacher_logits: (..., K) per level (positions first, see the module docstring), same
    shapes. mask: per level (...) bool (True = counts) or non-negative float weights, e.g.
    max_class_probability(teacher_logits) to favour what the teacher thinks are objects; None = all.
    Reduction over the positions of all levels together: "mean" (default) = sum_p w_p L_p / sum_p w_p (0 if
    no position counts), "sum", or "none" (w_p L_p per position, a tensor or a list per level). Computed in
    log space (logsigmoid). Returns a 0-dim tensor unless reduction="none".
    """
    _check_temperature(temperature)
    _check_reduction(reduction)
    pairs = _level_pairs(student_logits, teacher_logits, "logits", "dense_response_kd")
    weights = _level_weights(mask, [s.shape[:-1] for s, _ in pairs], student_logits, "dense_response_kd")
    per_position = []
    for s, t in pairs:
        dtype = compute_dtype(s, t)
        z_s, z_t = s.to(dtype) / temperature, t.to(dtype) / temperature
        # log sigmoid(z) and log(1 - sigmoid(z)) = log sigmoid(-z), without forming 1 - p
        log_p_t, log_not_p_t = F.logsigmoid(z_t), F.logsigmoid(-z_t)
        binary_kl = log_p_t.exp() * (log_p_t - F.logsigmoid(z_s)) + log_not_p_t.exp() * (
            log_not_p_t - F.logsigmoid(-z_s)
        )  # (..., K)
        per_position.append(temperature**2 * binary_kl.sum(dim=-1))  # (...)
    return _weighted_reduce(per_position, weights, reduction, student_logits)


def max_class_probability(teacher_logits: Levels) -> Tensor | list[Tensor]:
    """Per-position max over classes of sigmoid(logits), detached: (..., K) -> (...) per level.

    A weight map for dense_response_kd / localization_distillation that down-weights the vast background
    (GFL/LD weight their distribution losses by such a score).
    """
    levels = _as_levels(teacher_logits, "teacher logits", "max_class_probability")
    assert levels is not None
    scores = [t.detach().to(compute_dtype(t)).sigmoid().amax(dim=-1) for t in levels]
    return scores[0] if isinstance(teacher_logits, Tensor) else scores


def localization_distillation(
    student_edge_logits: Levels,
    teacher_edge_logits: Levels,
    *,
    temperature: float = 10.0,
    mask: Levels | None = None,
    reduction: str = "mean",
) -> Tensor | list[Tensor]:
    """Localization Distillation (LD), Zheng et al., CVPR 2022 (arXiv:2102.12252).

    Only for heads that predict each box edge as a distribution over n+1 bins (GFL, GFLv2, LD heads); heads
    that regress the 4 edge offsets directly (FCOS, RetinaNet) have nothing to distill here. With
    p_e = softmax(t_e / T), q_e = softmax(s_e / T) over the bins of edge e in (left, top, right, bottom):
      L_pos = T^2 * sum_e KL(p_e || q_e) = T^2 * sum_e sum_i p_ei log(p_ei / q_ei)
    T^2 keeps the gradient scale as T grows: for large T, L_pos -> sum_e sum_i (d_ei - mean_i d_ei)^2 / (2(n+1)),
    d = s - t. The official (mmdet) KL averages over the bins instead of summing (a factor 1 / (n+1) that its
    loss weight absorbs); this is the KL itself. Default T = 10 as in the paper's configs.

    student_edge_logits, teacher_edge_logits: (..., 4, n+1) per level, same shapes (from mmdet's
    (B, 4(n+1), H, W): `.permute(0, 2, 3, 1).reshape(B, H, W, 4, n + 1)`). mask: per level (...) bool or
    non-negative float weights (LD uses positive locations weighted by a score); None = all positions.
    Reduction over the positions of all levels, as in dense_response_kd: "mean" (default; sum_p w_p L_p /
    sum_p w_p, 0 if none counts), "sum" or "none". Returns a 0-dim tensor unless reduction="none".
    """
    _check_temperature(temperature)
    _check_reduction(reduction)
    pairs = _level_pairs(student_edge_logits, teacher_edge_logits, "edge logits", "localization_distillation")
    for i, (s, _) in enumerate(pairs):
        if s.ndim < 2 or s.shape[-2] != 4 or s.shape[-1] < 2:
            raise ValueError(
                f"localization_distillation: edge logits must be (..., 4, n+1) with n+1 >= 2 bins, got "
                f"{tuple(s.shape)}" + _at_level(i, student_edge_logits)
            )
    weights = _level_weights(
        mask, [s.shape[:-2] for s, _ in pairs], student_edge_logits, "localization_distillation"
    )
    per_position = []
    for s, t in pairs:
        dtype = compute_dtype(s, t)
        log_q = F.log_softmax(s.to(dtype) / temperature, dim=-1)  # (..., 4, n+1)
        log_p = F.log_softmax(t.to(dtype) / temperature, dim=-1)
        kl_per_edge = (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # (..., 4)
        per_position.append(temperature**2 * kl_per_edge.sum(dim=-1))  # (...)
    return _weighted_reduce(per_position, weights, reduction, student_edge_logits)


# ---------------------------------------------------------------------------------------- feature terms


def _standardise_channels(feature: Tensor, eps: float) -> Tensor:
    # (B, C, *spatial): zero mean, unit (population) variance per channel over all other dims
    dims = [0, *range(2, feature.ndim)]
    mean = feature.mean(dim=dims, keepdim=True)
    std = feature.var(dim=dims, keepdim=True, correction=0).sqrt()
    return (feature - mean) / (std + eps)


def pkd_loss(student_feats: Levels, teacher_feats: Levels, *, eps: float = 1e-6) -> Tensor:
    """PKD, Cao et al., NeurIPS 2022 (arXiv:2207.02039): feature imitation via the Pearson correlation.

    Each feature map is standardised per channel over (B, H, W), F_hat = (F - mean) / (std + eps), then
      L_level = (1 / (2 B C H W)) * sum (F_hat_S - F_hat_T)^2 = (1 / C) * sum_c (1 - r_c)    (eps = 0)
    with r_c the Pearson correlation of channel c between student and teacher over (B, H, W). So the loss
    ignores the magnitude and offset of each channel (invariant to a positive per-channel affine map of
    either side), which is what lets heterogeneous detectors distill. std is the population std (unit
    variance exactly, so the identity above holds); mmrazor's PKDLoss uses the unbiased std, which scales
    the loss by (M - 1) / M, M = B H W (negligible at detection sizes). eps guards a constant channel
    (it standardises to 0).

    student_feats, teacher_feats: (B, C, *spatial) per level, equal shapes (resizing / channel adapters are
    the caller's business). Reduction: mean over elements per level (the MSE) / 2, summed over levels as
    the official code does. The loss weight (6 to 10 in the paper's configs) lives in the config.
    Returns a 0-dim tensor.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    pairs = _level_pairs(student_feats, teacher_feats, "features", "pkd_loss")
    total = []
    for i, (s, t) in enumerate(pairs):
        if s.ndim < 2:
            raise ValueError(
                f"pkd_loss: features must be (B, C, *spatial), got {tuple(s.shape)}"
                + _at_level(i, student_feats)
            )
        dtype = compute_dtype(s, t)
        s_hat, t_hat = _standardise_channels(s.to(dtype), eps), _standardise_channels(t.to(dtype), eps)
        total.append(F.mse_loss(s_hat, t_hat) / 2)
    return _sum_levels(total)


def fine_grained_imitation(student_feats: Levels, teacher_feats: Levels, mask: Levels) -> Tensor:
    """Fine-grained feature imitation, Wang et al., CVPR 2019 (arXiv:1906.03609).

      L = (1 / (2 N_p)) * sum_{b, h, w} I_bhw * sum_c (f_adap(s)_bchw - t_bchw)^2,    N_p = sum I_bhw
    as the paper's Eq. 2 and its official code: the squared error is *summed* over the C channels and
    normalised by twice the number of masked positions only, not by channels (so it grows with C). With
    several FPN levels the masked positions of all levels are pooled (one N_p). The paper weights this term
    by lambda = 0.01 in the total loss (config's business).

    student_feats: the student features after the caller's adapter f_adap (a 3x3 conv in the paper),
    (B, C, *spatial) per level; teacher_feats: same shapes. mask: per level (B, *spatial) bool imitation
    mask I (see imitation_mask) or non-negative float weights (N_p = their sum). An empty mask gives 0.
    Returns a 0-dim tensor.
    """
    pairs = _level_pairs(student_feats, teacher_feats, "features", "fine_grained_imitation")
    for i, (s, _) in enumerate(pairs):
        if s.ndim < 3:
            raise ValueError(
                f"fine_grained_imitation: features must be (B, C, *spatial), got {tuple(s.shape)}"
                + _at_level(i, student_feats)
            )
    positions = [s.shape[:1] + s.shape[2:] for s, _ in pairs]
    if mask is None:
        raise ValueError("fine_grained_imitation: mask is required (see imitation_mask)")
    weights = _level_weights(mask, positions, student_feats, "fine_grained_imitation")
    assert weights is not None
    per_position = []
    for s, t in pairs:
        dtype = compute_dtype(s, t)
        per_position.append((s.to(dtype) - t.to(dtype)).pow(2).sum(dim=1))  # (B, *spatial)
    mean = _weighted_reduce(per_position, weights, "mean", student_feats)
    assert isinstance(mean, Tensor)
    return mean / 2


def imitation_mask(
    boxes: Tensor | Sequence[Tensor], feat_hw: tuple[int, int], stride: float, *, thresh_factor: float = 0.5
) -> Tensor:
    """The imitation mask I of Wang et al. (CVPR 2019) for an anchor-free head, one FPN level.

    The paper marks, for each box, the anchor locations whose IoU with it exceeds psi * (the box's max IoU
    over all anchors), psi = 0.5. An anchor-free head has points, not anchors, so here the quality of point
    (h, w) (centre x = (w + 0.5) * stride, y = (h + 0.5) * stride in pixels) for a box is its FCOS
    centerness, sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)), defined for centres strictly inside
    the box. A point is marked if, for some box, its centre is inside it and its centerness >=
    thresh_factor * the best centerness among the points inside that box. thresh_factor = 0 marks every
    point inside a box; 1 only the most central ones. A box that contains no point centre (smaller than the
    stride, or degenerate) marks nothing at this level; call once per level with that level's stride.

    boxes: (K, 4) as (x1, y1, x2, y2) in input-image pixels (GT or teacher boxes) -> (H, W) bool mask, or a
    list of B such tensors (one per image) -> (B, H, W). feat_hw: (H, W) of this level.
    """
    if not 0 <= thresh_factor <= 1:
        raise ValueError(f"thresh_factor must be in [0, 1], got {thresh_factor}")
    if not stride > 0:
        raise ValueError(f"stride must be > 0, got {stride}")
    height, width = feat_hw
    if isinstance(boxes, Tensor):
        return _imitation_mask_one(
            _check_boxes(boxes, "imitation_mask"), height, width, stride, thresh_factor
        )
    masks = [
        _imitation_mask_one(_check_boxes(b, "imitation_mask"), height, width, stride, thresh_factor)
        for b in boxes
    ]
    return torch.stack(masks) if masks else torch.zeros(0, height, width, dtype=torch.bool)


def _imitation_mask_one(
    boxes: Tensor, height: int, width: int, stride: float, thresh_factor: float
) -> Tensor:
    ys = (torch.arange(height, dtype=boxes.dtype, device=boxes.device) + 0.5) * stride  # (H,)
    xs = (torch.arange(width, dtype=boxes.dtype, device=boxes.device) + 0.5) * stride  # (W,)
    x1, y1, x2, y2 = (c.unsqueeze(1) for c in boxes.unbind(dim=1))  # each (K, 1)
    ratio_y, inside_y = _edge_ratio(ys - y1, y2 - ys)  # (K, H)
    ratio_x, inside_x = _edge_ratio(xs - x1, x2 - xs)  # (K, W)
    inside = inside_y.unsqueeze(2) & inside_x.unsqueeze(1)  # (K, H, W)
    centerness = (ratio_y.unsqueeze(2) * ratio_x.unsqueeze(1)).sqrt()  # (K, H, W), 0 outside
    best = centerness.amax(dim=(1, 2), keepdim=True) if boxes.shape[0] else centerness  # (K, 1, 1)
    keep = inside & (centerness >= thresh_factor * best)
    return keep.any(dim=0)  # (H, W); no box -> all False


def _edge_ratio(before: Tensor, after: Tensor) -> tuple[Tensor, Tensor]:
    """min / max of the distances to the two edges along one axis (0 outside), and inside = both > 0."""
    inside = (before > 0) & (after > 0)
    ratio = torch.minimum(before, after) / torch.maximum(before, after)
    return torch.where(inside, ratio, torch.zeros_like(ratio)), inside


# ------------------------------------------------------------------------------------------------- FGD


class GlobalContextBlock(nn.Module):
    """GCNet's global context block (Cao et al., ICCVW 2019, arXiv:1904.11492), FGD's relation extractor.

      R(F) = F + W_v2 ReLU(LN(W_v1 sum_j softmax_j(W_k F_j) F_j))
    (W_k: C -> 1, W_v1: C -> C/2, W_v2: C/2 -> C, all 1x1 convs; LN over the C/2 channels). FGD trains one
    block per side (student, teacher) per FPN level with the student; they are the method's extra
    parameters. Initialised as FGD: W_k Kaiming-normal (fan_in), W_v2 zero, so R(F) = F at first.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"GlobalContextBlock needs channels >= 2, got {channels}")
        hidden = channels // 2
        self.attend = nn.Conv2d(channels, 1, kernel_size=1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.attend.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.attend.bias)
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, feature: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        weights = self.attend(feature).flatten(1).softmax(dim=-1)  # (B, H*W): where to pool from
        context = torch.einsum("bcp,bp->bc", feature.flatten(2), weights)  # (B, C)
        return feature + self.transform(context[:, :, None, None])  # broadcast over (H, W)


def _fgd_attention(feature: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """FGD's spatial and channel attention: (B, C, H, W) -> (B, H, W) summing to H*W, (B, C) summing to C."""
    b, c, h, w = feature.shape
    magnitude = feature.abs()
    spatial = h * w * F.softmax(magnitude.mean(dim=1).flatten(1) / temperature, dim=1)  # (B, H*W)
    channel = c * F.softmax(magnitude.mean(dim=(2, 3)) / temperature, dim=1)  # (B, C)
    return spatial.view(b, h, w), channel


def _fgd_masks(
    boxes: Sequence[Tensor], height: int, width: int, stride: float, like: Tensor
) -> tuple[Tensor, Tensor]:
    """FGD's foreground scale mask and background mask, (B, H, W) each.

    A box covers the cells [floor(x1 / s), ceil(x2 / s)] x [floor(y1 / s), ceil(y2 / s)], both ends
    included, as the official code (so it may reach one cell past the box); its cells get 1 / (the number
    of cells it spans, before clipping to the map), the smallest box winning where boxes overlap.
    Background cells (no box) get 1 / (their count).
    """
    fg = []
    for image_boxes in boxes:
        image_boxes = _check_boxes(image_boxes, "fgd_loss").to(device=like.device, dtype=like.dtype)
        col_lo, col_hi = (image_boxes[:, 0] / stride).floor(), (image_boxes[:, 2] / stride).ceil()  # (K,)
        row_lo, row_hi = (image_boxes[:, 1] / stride).floor(), (image_boxes[:, 3] / stride).ceil()
        scale = 1.0 / ((row_hi - row_lo + 1) * (col_hi - col_lo + 1))  # (K,)
        rows = torch.arange(height, device=like.device, dtype=image_boxes.dtype)
        cols = torch.arange(width, device=like.device, dtype=image_boxes.dtype)
        in_rows = (rows >= row_lo[:, None]) & (rows <= row_hi[:, None])  # (K, H)
        in_cols = (cols >= col_lo[:, None]) & (cols <= col_hi[:, None])  # (K, W)
        covered = in_rows[:, :, None] & in_cols[:, None, :]  # (K, H, W)
        per_box = torch.where(
            covered, scale[:, None, None], torch.zeros((), dtype=scale.dtype, device=scale.device)
        )
        fg.append(per_box.amax(dim=0) if image_boxes.shape[0] else like.new_zeros(height, width))
    fg_mask = torch.stack(fg)  # (B, H, W)
    background = fg_mask == 0
    n_background = background.sum(dim=(1, 2), keepdim=True).clamp_min(1).to(like.dtype)  # all-box image: 0
    return fg_mask, background.to(like.dtype) / n_background


def fgd_loss(
    student_feats: Levels,
    teacher_feats: Levels,
    boxes: Sequence[Tensor],
    stride: float | Sequence[float],
    *,
    temperature: float = 0.5,
    alpha: float = 1e-3,
    beta: float = 5e-4,
    gamma: float = 5e-4,
    lambda_: float = 5e-6,
    student_context: Callable[[Tensor], Tensor] | Sequence[Callable[[Tensor], Tensor]] | None = None,
    teacher_context: Callable[[Tensor], Tensor] | Sequence[Callable[[Tensor], Tensor]] | None = None,
) -> Tensor:
    """Focal and Global Distillation (FGD), Yang et al., CVPR 2022 (arXiv:2111.11837).

    Per FPN level, with F^T, F^S the teacher and (adapted) student features (B, C, H, W):
      attention  A^S = H W softmax(mean_c |F| / T) over H*W,   A^C = C softmax(mean_hw |F| / T) over C
      masks      M_hw = 1 / (H_r W_r) on the cells of box r (smallest box wins), 0 elsewhere;
                 N_hw = 1 / N_bg on the N_bg cells of no box, 0 elsewhere
      L_fg   = sum_{c,h,w} M_hw A^S_t,hw A^C_t,c (F^T - F^S)^2           (teacher attention on both sides)
      L_bg   = sum_{c,h,w} N_hw A^S_t,hw A^C_t,c (F^T - F^S)^2
      L_at   = sum |A^C_t - A^C_s| + sum |A^S_t - A^S_s|                  (L1)
      L_glb  = sum (R_t(F^T) - R_s(F^S))^2,  R = a GlobalContextBlock per side
      L_level = (alpha L_fg + beta L_bg + gamma L_at + lambda_ L_glb) / B
    summed over levels, as the official code (one FeatureLoss per level, each divided by the batch size).

    Defaults: T = 0.5 and the coefficients of the released RetinaNet configs (yzd-v/FGD): alpha = 1e-3,
    beta = 5e-4, gamma = 5e-4, lambda = 5e-6 (its class defaults have gamma = 1e-3); two-stage detectors
    (Faster R-CNN) use 5e-5, 2.5e-5, 5e-5, 5e-7; FCOS uses T = 0.8 and 1.6e-3, 8e-4, 8e-4, 8e-6.

    Where this differs from the official code: boxes map to cells by dividing by `stride` (the official
    code scales by feature size / unpadded image size, which is off by the padding); the global term takes
    the context blocks from the caller instead of owning them (same computation).

    student_feats, teacher_feats: (B, C, H, W) per level, equal shapes (the student through the caller's
    1x1 adapter if channels differ). boxes: B tensors (K_b, 4), (x1, y1, x2, y2) in input pixels (GT boxes),
    shared by all levels. stride: one per level (or one for all). student_context, teacher_context: the
    GlobalContextBlock (or any (B, C, H, W) -> (B, C, H, W) callable) of each side, one per level or one
    for all; required unless lambda_ = 0. Returns a 0-dim tensor.
    """
    _check_temperature(temperature)
    pairs = _level_pairs(student_feats, teacher_feats, "features", "fgd_loss")
    strides = _per_level(stride, len(pairs), "stride", "fgd_loss")
    if lambda_ != 0 and (student_context is None or teacher_context is None):
        raise ValueError(
            f"fgd_loss: lambda_={lambda_} needs student_context and teacher_context (a GlobalContextBlock per "
            "side); pass lambda_=0 to drop the global term"
        )
    s_contexts = _per_level(student_context, len(pairs), "student_context", "fgd_loss")
    t_contexts = _per_level(teacher_context, len(pairs), "teacher_context", "fgd_loss")
    total = []
    for i, (s, t) in enumerate(pairs):
        if s.ndim != 4:
            raise ValueError(
                f"fgd_loss: features must be (B, C, H, W), got {tuple(s.shape)}" + _at_level(i, student_feats)
            )
        if len(boxes) != s.shape[0]:
            raise ValueError(
                f"fgd_loss: {len(boxes)} box tensors for a batch of {s.shape[0]} (features {tuple(s.shape)})"
            )
        dtype = compute_dtype(s, t)
        s, t = s.to(dtype), t.to(dtype)
        batch, _, height, width = s.shape
        spatial_t, channel_t = _fgd_attention(t, temperature)
        spatial_s, channel_s = _fgd_attention(s, temperature)
        fg_mask, bg_mask = _fgd_masks(boxes, height, width, strides[i], t)
        # (B, C, H, W): teacher attention weights the squared error at every cell and channel
        weighted_error = (t - s).pow(2) * spatial_t[:, None] * channel_t[:, :, None, None]
        fg = (weighted_error * fg_mask[:, None]).sum()
        bg = (weighted_error * bg_mask[:, None]).sum()
        attention = (channel_t - channel_s).abs().sum() + (spatial_t - spatial_s).abs().sum()
        level = alpha * fg + beta * bg + gamma * attention
        if lambda_ != 0:
            s_context, t_context = s_contexts[i], t_contexts[i]
            assert s_context is not None and t_context is not None
            level = level + lambda_ * (t_context(t) - s_context(s)).pow(2).sum()
        total.append(level / batch)
    return _sum_levels(total)
