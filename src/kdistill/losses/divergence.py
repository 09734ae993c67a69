"""A token divergence is one record; its dense, sparse and chunked forms are derived from it.

A token divergence compares, per token, the teacher's and the student's next-token distributions over C
categories. It is defined once, as a `Divergence`:

    per_token(**params) -> f       f(log_p_s, log_p_t): (..., C), (..., C) -> (...), the divergence per token
                                   from the two sides' log-probabilities; the factory checks the parameters
    closed_form(**params) -> g     optional, for the chunked loss: g(log_p_s, log_p_t, with_weight) -> (f's
                                   value, w = dDiv / dlog p_s (..., C) or None), computed without autograd
    in_place_forward_kl            the divergence is KL(p_t || p_s) itself (chunked: its cheapest kernel)

and everything else follows from the record:
    dense    record.dense(student_logits, teacher_logits, *, <params>, mask, temperature, scale_by_t2,
             reduction, num_tokens): f on the full softmaxes (C = V)
    sparse   record.sparse(student_logits, teacher_ids, teacher_logprobs, *, ...the same): f on the k + 1
             categories of a top-k teacher (C = k + 1, `kdistill.losses.topk`); a divergence of two
             categorical distributions applies to those as it is, so nothing else is needed
    chunked  `chunked_distill_loss(divergence=name)`: a top-k teacher by autograd of f on the (chunk, k + 1)
             buckets; a dense one by the in-place forward-KL kernel, else by closed_form, else by autograd of
             `dense` on the chunk's logits (the same value and gradients, more memory)
    by name  `register` adds the record to DIVERGENCES and its two forms to the views TOKEN_DIVERGENCES
             (name -> dense) and SPARSE_TOKEN_DIVERGENCES (name -> sparse): what `distill.divergence` in a
             config selects and `kdistill methods` lists.

The built-in divergences are defined in `kdistill.losses.token` (its docstring: shapes, temperature,
reductions, numerics); adding one there is one record and its tests.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from torch import Tensor

from kdistill.losses.masking import Reduction, check_mask, check_reduction, reduce_tokens
from kdistill.losses.numerics import compute_dtype, log_softmax_rows
from kdistill.losses.topk import bucketed_log_probs, check_sparse_inputs
from kdistill.registry import Registry

PerToken = Callable[[Tensor, Tensor], Tensor]
"""(log_p_s, log_p_t) (..., C) -> the divergence per token (...)."""

ClosedForm = Callable[[Tensor, Tensor, bool], tuple[Tensor, Tensor | None]]
"""(log_p_s, log_p_t, with_weight) -> (the divergence per token (...), w = dDiv/dlog p_s (..., C) or None).

w treats the p_s,v as free variables; the caller applies the softmax chain rule dDiv/dz_v = (w_v - p_s,v *
sum_u w_u) / T, so a term c * p_s,v of w may be left out. It runs on a chunk's own buffers without autograd:
it may overwrite neither input, and should keep few (chunk, V) temporaries alive."""


def check_temperature(temperature: float) -> None:
    """Raise ValueError unless the distillation temperature is > 0."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


@dataclass(frozen=True)
class Divergence:
    """One token divergence: its name, its per-token definition and (optionally) its closed-form gradient.

    name:        the registry name (`distill.divergence` in a config).
    summary:     one line for `kdistill methods`.
    doc:         its formula, parameters and paper: the docstring of its dense and sparse functions.
    per_token:   (**params) -> PerToken; raises ValueError for a bad parameter value. Its keyword
                 parameters and defaults are the divergence's own (e.g. beta=0.5).
    closed_form: (**params) -> ClosedForm for the chunked loss with a dense teacher; None = autograd there.
    in_place_forward_kl: True only for KL(p_t || p_s) itself, whose gradient w.r.t. the logits is
                 (p_s - p_t) / T: the chunked loss then forms value and gradient in place on the raw logits.
    """

    name: str
    summary: str
    doc: str
    per_token: Callable[..., PerToken]
    closed_form: Callable[..., ClosedForm] | None = None
    in_place_forward_kl: bool = False

    @cached_property
    def parameters(self) -> dict[str, Any]:
        """The divergence's own keyword parameters and their defaults, e.g. {"beta": 0.5}."""
        return {n: p.default for n, p in inspect.signature(self.per_token).parameters.items()}

    def bind(self, **params: Any) -> PerToken:
        """The per-token function for these parameters; an unknown name is a TypeError, a bad value a
        ValueError (checked here, before any tensor is touched)."""
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            known = ", ".join(self.parameters) or "none"
            raise TypeError(f"divergence {self.name!r} has no parameter {unknown}; its parameters: {known}")
        return self.per_token(**params)

    @cached_property
    def dense(self) -> Callable[..., Tensor]:
        """The dense form: f(student_logits, teacher_logits, *, <params>, mask, temperature, ...)."""

        def dense(
            student_logits: Tensor,
            teacher_logits: Tensor,
            *,
            mask: Tensor | None = None,
            temperature: float = 1.0,
            scale_by_t2: bool = False,
            reduction: Reduction = "mean",
            num_tokens: int | Tensor | None = None,
            **params: Any,
        ) -> Tensor:
            per_token = self.bind(**params)
            check_temperature(temperature)
            check_reduction(reduction, num_tokens)
            if student_logits.shape != teacher_logits.shape:
                raise ValueError(
                    f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                    f"{tuple(teacher_logits.shape)} differ in shape"
                )
            if student_logits.ndim < 2:
                raise ValueError(
                    f"logits must be (..., V) with at least one position dim, got {tuple(student_logits.shape)}"
                )
            check_mask(mask, student_logits.shape[:-1], "student_logits", student_logits.shape)
            dtype = compute_dtype(student_logits, teacher_logits)
            log_p_s = log_softmax_rows(student_logits, mask, temperature, dtype)  # (..., V)
            log_p_t = log_softmax_rows(teacher_logits, mask, temperature, dtype)  # (..., V)
            values = per_token(log_p_s, log_p_t)  # (...)
            if scale_by_t2:
                values = values * temperature**2
            return reduce_tokens(values, mask, reduction, num_tokens)

        return self._named(dense, self.name, ("student_logits", "teacher_logits"), _DENSE_DOC)

    @cached_property
    def sparse(self) -> Callable[..., Tensor]:
        """The sparse form: f(student_logits, teacher_ids, teacher_logprobs, *, <params>, mask, ...)."""

        def sparse(
            student_logits: Tensor,
            teacher_ids: Tensor,
            teacher_logprobs: Tensor,
            *,
            mask: Tensor | None = None,
            temperature: float = 1.0,
            scale_by_t2: bool = False,
            reduction: Reduction = "mean",
            num_tokens: int | Tensor | None = None,
            **params: Any,
        ) -> Tensor:
            per_token = self.bind(**params)
            check_temperature(temperature)
            check_reduction(reduction, num_tokens)
            check_sparse_inputs(student_logits, teacher_ids, teacher_logprobs)
            check_mask(mask, student_logits.shape[:-1], "student_logits", student_logits.shape)
            log_p_s, log_p_t = bucketed_log_probs(
                student_logits, teacher_ids, teacher_logprobs, mask, temperature
            )
            values = per_token(log_p_s, log_p_t)  # (...)
            if scale_by_t2:
                values = values * temperature**2
            return reduce_tokens(values, mask, reduction, num_tokens)

        positional = ("student_logits", "teacher_ids", "teacher_logprobs")
        return self._named(sparse, f"sparse_{self.name}", positional, _SPARSE_DOC)

    def _named(
        self, fn: Callable[..., Tensor], name: str, positional: tuple[str, ...], shapes_doc: str
    ) -> Callable[..., Tensor]:
        """fn with this divergence's name, docstring and signature (its own parameters spelled out), so that
        help() shows what a hand-written function would."""
        fn.__name__ = fn.__qualname__ = name
        fn.__doc__ = f"{inspect.cleandoc(self.doc)}\n\n{shapes_doc}"
        keyword = inspect.Parameter.KEYWORD_ONLY
        head = [
            inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="Tensor")
            for n in positional
        ]
        own = [inspect.Parameter(n, keyword, default=d) for n, d in self.parameters.items()]
        common = [p for p in inspect.signature(fn).parameters.values() if p.kind == keyword]
        fn.__signature__ = inspect.Signature([*head, *own, *common], return_annotation="Tensor")
        return fn


_DENSE_DOC = """\
student_logits, teacher_logits: (..., V), same shape; mask: (...) bool, True = counts. teacher_logits is
not detached (pass a no_grad tensor unless gradients should reach the teacher). T = temperature softens both
sides. Reduction units: the divergence is summed over the vocabulary per token, then reduced over unmasked
tokens as `reduction` says (default: mean over unmasked tokens, or over `num_tokens`; see
`kdistill.losses.masking`). Times T^2 if scale_by_t2."""

_SPARSE_DOC = """\
Against a top-k teacher, over the k + 1 categories (its k tokens + the tail; `kdistill.losses.topk`).
student_logits: (..., V); teacher_ids, teacher_logprobs: (..., k), id -1 = padding; mask: (...) bool,
True = counts. Reduction units: summed over the k + 1 categories per token, then reduced over unmasked
tokens as `reduction` says (default: mean over unmasked tokens). Times T^2 if scale_by_t2."""


DIVERGENCES: Registry[Divergence] = Registry("divergence")
"""Every token divergence by name: the one registry (fill it with `register`)."""

TOKEN_DIVERGENCES: Registry[Callable[..., Tensor]] = Registry("divergence")
"""View of DIVERGENCES: name -> its dense form. Filled by `register`, never directly."""

SPARSE_TOKEN_DIVERGENCES: Registry[Callable[..., Tensor]] = Registry("sparse divergence")
"""View of DIVERGENCES: name -> its sparse (top-k + tail) form. Filled by `register`, never directly."""


def register(divergence: Divergence) -> Divergence:
    """Make a divergence selectable by name: the record in DIVERGENCES, its dense and sparse forms in the
    views. A name already taken raises (nothing is added then)."""
    DIVERGENCES.add(divergence.name, divergence, divergence.summary)
    TOKEN_DIVERGENCES.add(divergence.name, divergence.dense, divergence.summary)
    SPARSE_TOKEN_DIVERGENCES.add(
        divergence.name, divergence.sparse, f"{divergence.summary}; on top-k + tail buckets"
    )
    return divergence
