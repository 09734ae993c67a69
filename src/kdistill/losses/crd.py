"""Contrastive representation distillation (CRD), Tian, Krishnan & Isola, ICLR 2020 (arXiv:1910.10699).

A "module" loss: it owns trainable parts (an embedding head on each side) and state (a memory bank of the
whole training set's embeddings per side), so the engine builds it from the feature shapes and the data-set
size, trains its parameters with the student's, and checkpoints its buffers (see `LossSpec`, role "module").

Each side's feature is mapped by a linear head to a shared `dim` and L2-normalised. The student embedding
of sample i is contrasted with the teacher's memory-bank row of the same sample (the positive) and with K
other rows (the negatives), and the teacher embedding symmetrically with the student's bank; the loss is the
sum of the two NCE losses. The banks follow the embeddings with momentum and are renormalised. This follows
the official implementation (github.com/HobbitLong/RepDistiller, `crd/`): the same heads, bank init, fixed
partition constant Z estimated on the first batch, NCE with uniform noise and momentum update.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.losses.numerics import compute_dtype
from kdistill.losses.spec import LOSSES, LossSpec


def contrast_scores(anchor: Tensor, bank: Tensor, contrast: Tensor, temperature: float) -> Tensor:
    """<anchor_b, bank_j> / T for the rows j = contrast[b]: (B, D), (N, D), (B, 1+K) -> (B, 1+K).

    One (B, N) product and a gather: cheaper than gathering (B, 1+K, D) bank rows while K is a sizeable
    fraction of N, as on the classic task's data sets; the cost grows with N.
    """
    return ((anchor / temperature) @ bank.T).gather(1, contrast)  # scale the (B, D) side, not (B, N)


def crd_nce_loss(scores: Tensor, *, log_z: Tensor | float, num_samples: int) -> Tensor:
    """The NCE loss of CRD (paper eq. 10-11, official `ContrastLoss`) from an anchor's contrast scores.

    P(j | a) = exp(s_j) / Z,  s_j = <a, bank_j> / T          (unnormalised density, Z fixed)
    h(j)     = P(j | a) / (P(j | a) + K / N)                 (posterior of "j is the positive"; noise 1/N)
    loss     = -(1/B) * sum_b [ log h(pos_b) + sum_k log(1 - h(neg_bk)) ]

    scores: (B, 1+K), the positive first, then the K negatives (`contrast_scores`). Computed in log space
    (log h = logsigmoid(log P - log(K/N))), so the official eps is not needed. Reduction: sum over the 1+K
    terms of a sample, mean over the batch. Returns a 0-dim tensor.
    """
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (B, 1+K) with K >= 1 negatives, got {tuple(scores.shape)}")
    negatives = scores.shape[1] - 1
    logit = scores - log_z - math.log(negatives / num_samples)  # log P - log(K * P_noise)
    return -(F.logsigmoid(logit[:, 0]).sum() + F.logsigmoid(-logit[:, 1:]).sum()) / scores.shape[0]


def log_partition(scores: Tensor, num_samples: int) -> Tensor:
    """log Z with Z = mean(exp(scores)) * N: the official estimate from the first batch's (B, 1+K) scores/T."""
    return torch.logsumexp(scores.flatten(), 0) - math.log(scores.numel()) + math.log(num_samples)


def momentum_update(bank: Tensor, index: Tensor, embedding: Tensor, momentum: float) -> Tensor:
    """A new bank whose rows `index` are normalise(momentum * old + (1 - momentum) * embedding); the others
    are unchanged. Out of place: the old bank may still be needed by autograd for this step's backward."""
    rows = momentum * bank[index] + (1.0 - momentum) * embedding.to(bank.dtype)
    return bank.index_copy(0, index, F.normalize(rows, dim=1))


def contrast_indices(index: Tensor, num_samples: int, negatives: int) -> Tensor:
    """(B, 1+K) bank rows: each sample's own row, then K negatives drawn uniformly (with replacement) from
    the other N-1 rows; when K >= N-1, all other rows in order (no randomness)."""
    index = index.view(-1, 1)
    if negatives >= num_samples - 1:
        others = torch.arange(num_samples - 1, device=index.device).expand(len(index), -1)
    else:
        others = torch.randint(0, num_samples - 1, (len(index), negatives), device=index.device)
    others = others + (others >= index).long()  # skip the positive: values >= own row shift up by one
    return torch.cat([index, others], dim=1)


class CRDLoss(nn.Module):
    """Embedding heads, the two memory banks and the NCE loss of CRD for one (student, teacher) feature pair.

    student_shape/teacher_shape: per-sample feature shapes (flattened to vectors); num_samples: N, the size
    of the training set the batch indices point into. dim: shared embedding size (128); temperature: T of
    the scores (0.07); momentum of the bank update (0.5); negatives: K per anchor (4096, or all N-1 other
    samples of a smaller data set). Paper weight of the term: 0.8.

    Returns the sum of the two sides' NCE losses (`crd_nce_loss`: sum over a sample's 1+K pairs, mean over
    the batch), a 0-dim tensor. Each call also moves the batch's rows of both banks (`momentum_update`).
    """

    def __init__(
        self,
        student_shape: tuple[int, ...],
        teacher_shape: tuple[int, ...],
        num_samples: int,
        dim: int = 128,
        temperature: float = 0.07,
        momentum: float = 0.5,
        negatives: int = 4096,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("negatives", negatives)):
            if value != int(value) or value < 1:
                raise ValueError(f"crd: {name} must be a positive integer, got {value!r}")
        if temperature <= 0 or not 0 <= momentum < 1:
            raise ValueError(
                f"crd: need temperature > 0 and 0 <= momentum < 1, got {temperature}, {momentum}"
            )
        if num_samples < 2:
            raise ValueError(
                f"crd: needs at least 2 training samples (a positive and a negative), got {num_samples}"
            )
        self.num_samples, self.dim, self.negatives = num_samples, int(dim), int(negatives)
        self.temperature, self.momentum = float(temperature), float(momentum)
        self.student_head = nn.Linear(math.prod(student_shape), self.dim)
        self.teacher_head = nn.Linear(math.prod(teacher_shape), self.dim)
        # official init: uniform in [-s, s], s = 1/sqrt(dim/3), so each row has norm ~1 in expectation
        stdv = 1.0 / math.sqrt(self.dim / 3)
        self.register_buffer("student_bank", torch.rand(num_samples, self.dim) * 2 * stdv - stdv)
        self.register_buffer("teacher_bank", torch.rand(num_samples, self.dim) * 2 * stdv - stdv)
        # log Z of the (student-anchor, teacher-anchor) sides; NaN until the first batch estimates it
        self.register_buffer("log_z", torch.full((2,), float("nan")))

    def embed(self, student_feature: Tensor, teacher_feature: Tensor) -> tuple[Tensor, Tensor]:
        """(B, ...) features -> two (B, dim) unit vectors; the teacher side never passes gradient back."""
        dtype = compute_dtype(student_feature, teacher_feature, self.student_head.weight)
        s = self.student_head(student_feature.flatten(1).to(dtype))
        t = self.teacher_head(teacher_feature.detach().flatten(1).to(dtype))
        return F.normalize(s, dim=1), F.normalize(t, dim=1)

    def forward(self, student_feature: Tensor, teacher_feature: Tensor, index: Tensor) -> Tensor:
        """Loss of one batch (`index`: (B,) rows of the batch's samples in the banks); then updates the banks."""
        s, t = self.embed(student_feature, teacher_feature)
        index = index.to(self.student_bank.device)
        contrast = contrast_indices(index, self.num_samples, self.negatives)
        # the student embedding against the teacher's memory, and the teacher's against the student's
        s_scores = contrast_scores(s, self.teacher_bank, contrast, self.temperature)  # (B, 1+K)
        t_scores = contrast_scores(t, self.student_bank, contrast, self.temperature)  # (B, 1+K)
        if torch.isnan(self.log_z).any():  # first batch: fix Z for the rest of training
            self.log_z = torch.stack(
                [log_partition(x.detach(), self.num_samples) for x in (s_scores, t_scores)]
            ).to(self.log_z.dtype)
        loss = crd_nce_loss(s_scores, log_z=self.log_z[0], num_samples=self.num_samples)
        loss = loss + crd_nce_loss(t_scores, log_z=self.log_z[1], num_samples=self.num_samples)
        with torch.no_grad():
            self.student_bank = momentum_update(self.student_bank, index, s, self.momentum)
            self.teacher_bank = momentum_update(self.teacher_bank, index, t, self.momentum)
        return loss


LOSSES.add(
    "crd",
    LossSpec(fn=CRDLoss, role="module"),
    "CRD (Tian et al., ICLR 2020): NCE between student/teacher embeddings and memory banks of the training set",
)
