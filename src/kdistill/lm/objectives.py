"""What the LM loop minimises: an `Objective` owns the student (and extra trainable parts) and scores a batch.

`SFTObjective`: the negative log-likelihood of the response tokens (learn the teacher's answers as text).
`TokenDistillObjective`: white-box distillation, the student learns the teacher's next-token distributions:

    loss per window = (kd_weight * sum_t div_T(student_t, teacher_t)          token divergence, chunked
                       + ce_weight * sum_t -log p_student(y_t)                 the answer as text (SFT)
                       + hidden_weight * sum_t sum_(s->t layers) h(P h_s, h_t)) hidden states, projected
                      / (response tokens of the whole window, all processes)

`div` is any divergence record of `kdistill.losses.token` (`DIVERGENCES`), in its dense form for an online
teacher (its logits) or its sparse form for a cached one (top-k log-probabilities from `kdistill capture`), computed by
`chunked_distill_loss` from the student's last hidden states and head weights, so the (tokens x vocab)
logits never exist whole. T is the distillation temperature (`temperature`); the on-policy sampling
temperature is a separate knob (`on_policy_temperature`).

Teacher signal: `CachedTeacher` joins the stored rows to a batch by record id (never by position) and
checks their lengths; `OnlineTeacher` runs the teacher under no_grad each step, optionally on another
device or in lower precision. Teacher and student must share a tokenizer (checked by the recipe with
`kdistill.lm.tokenizers.assert_same_tokenizer`; here the vocabulary sizes must match).

On-policy (GKD, Agarwal et al. 2024): with probability `on_policy_fraction` a step's sequences are the
student's own answers to the step's prompts (sampled at `on_policy_temperature`), scored by an online
teacher; the loss then covers the sampled tokens. The choice is a pure function of (seed, step), so a
resumed run makes the same choices.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.lm.config import LMDistillConfig
from kdistill.lm.models import backbone_and_head
from kdistill.lm.sft_data import IGNORE_INDEX, collate
from kdistill.lm.signal_store import TeacherSignal
from kdistill.losses.chunked import chunked_cross_entropy, chunked_distill_loss
from kdistill.losses.hidden import HIDDEN_LOSSES
from kdistill.losses.numerics import compute_dtype

__all__ = [
    "LOGGED_ONLY",
    "CachedTeacher",
    "Objective",
    "OnlineTeacher",
    "SFTObjective",
    "TeacherBackbone",
    "TokenDistillObjective",
    "backbone_and_head",
    "plain_head",
    "response_nll_sum",
]


LOGGED_ONLY = "logged/"


def response_nll_sum(logits: Tensor, labels: Tensor) -> Tensor:
    """Sum over response tokens of -log p(token | prefix), a scalar in float32 (or wider).

    logits (B, T, V) and labels (B, T), -100 where there is no loss; position t predicts token t + 1.
    All-masked gives 0.
    """
    shifted_logits = logits[:, :-1].flatten(0, 1)  # (B, T, V) -> (B*(T-1), V)
    shifted_labels = labels[:, 1:].flatten().to(logits.device)  # (B*(T-1),)
    return F.cross_entropy(
        shifted_logits.to(compute_dtype(logits)), shifted_labels, ignore_index=IGNORE_INDEX, reduction="sum"
    )


class Objective(nn.Module):
    """What `train_objective` trains: owns the student (and any extra trainable parts) and scores a batch.

    forward(batch) returns named loss *sums* over the batch's tokens, already weighted; the loop adds
    them, divides by the window's loss-token count and backpropagates. Names starting with `LOGGED_ONLY`
    ("logged/") are parts of another term, reported in the history but not added. Everything trainable must be a
    submodule so that DDP, the optimizer and the checkpoints see it; a teacher must not be one.
    `prepare_window` may replace a step's micro-batches before they are scored (on-policy sampling).
    """

    student: nn.Module

    def prepare_window(self, micro_batches: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
        return micro_batches


class SFTObjective(Objective):
    """Negative log-likelihood of the response tokens: learn the teacher's answers as text.

    For a transformers causal LM the loss is computed from the last hidden states and the head weights
    `chunk_size` tokens at a time (`chunked_cross_entropy`): the (batch, seq, vocab) logits and their
    gradient are never formed, which at a 150k vocabulary is most of a small model's training memory.
    Models whose logits are not plain hidden @ head (soft-capped, scaled: see `backbone_and_head`), other
    modules, or chunk_size=None take the full logits.
    """

    def __init__(self, student: nn.Module, *, chunk_size: int | None = 1024) -> None:
        super().__init__()
        self.student = student
        self.chunk_size = chunk_size if chunk_size is not None and plain_head(student) else None

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        if self.chunk_size is None:
            logits = self.student(input_ids=input_ids, attention_mask=attention_mask).logits
            return {"nll": response_nll_sum(logits, labels)}
        backbone, head = backbone_and_head(self.student)  # through a LoRA wrapper attached after __init__
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
        targets = labels[:, 1:].to(hidden.device)  # position t predicts token t + 1
        nll = chunked_cross_entropy(
            hidden, head.weight, head_bias=head.bias, labels=targets, chunk_size=self.chunk_size
        )
        return {"nll": nll}


def plain_head(model: nn.Module) -> bool:
    """Whether `model`'s logits are exactly backbone hidden states @ head weights (+ bias)."""
    try:
        backbone_and_head(model)
    except (ValueError, AttributeError):
        return False
    return True


class CachedTeacher:
    """A teacher signal captured once (`kdistill capture`): top-k log-probabilities per token."""

    def __init__(self, signal: TeacherSignal) -> None:
        self.signal = signal

    def topk(self, ids: Sequence[str], lengths: Sequence[int], width: int, device: torch.device) -> dict:
        rows = self.signal.batch(ids, lengths=lengths, pad_to=width)
        return {k: v.to(device) for k, v in rows.items()}


class TeacherBackbone(nn.Module):
    """The teacher's pass up to its last hidden states, as a module of its own that holds the whole model.

    Sharded training (`kdistill.lm.fsdp`) makes it the teacher's FSDP root: its forward all-gathers the
    parameters outside the decoder layers (embeddings, final norm, head), so the loss can read the whole
    head weight after it, until `OnlineTeacher.release`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, output_hidden_states: bool) -> Any:
        backbone, _ = backbone_and_head(self.model)
        return backbone(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states
        )


class OnlineTeacher:
    """A teacher model run under no_grad each step; `device`/`dtype` let it live apart from the student
    (then on a converted copy). The model is put in eval mode with gradients off."""

    def __init__(
        self, model: nn.Module, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ):
        current = next(model.parameters())
        if (dtype is not None and dtype != current.dtype) or (
            device is not None and torch.device(device) != current.device
        ):
            # a converted copy: the caller's model (evaluated elsewhere, say) keeps its precision and place
            model = copy.deepcopy(model).to(device=device, dtype=dtype)
        self.model = model.eval().requires_grad_(False)
        self.backbone, self.head = backbone_and_head(self.model)
        self.runner: nn.Module = TeacherBackbone(self.model)  # sharded in place by kdistill.lm.fsdp

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor, *, all_layers: bool) -> Any:
        return self.runner(input_ids.to(self.device), attention_mask.to(self.device), all_layers)

    def release(self) -> None:
        """Free a sharded teacher's gathered embeddings, norm and head once the loss has read them (an FSDP
        root keeps them after forward); a no-op for an unsharded teacher."""
        reshard = getattr(self.runner, "reshard", None)
        if reshard is not None:
            reshard()


class TokenDistillObjective(Objective):
    """The white-box objective for `kdistill.lm.train.train_objective`; owns the student and projections.

    `cfg` is the run config's `distill` section: its loss knobs (divergence, temperature, weights, chunk
    size, hidden states, on-policy sampling) are read here; which teacher it is (`signal`, `top_k`,
    `teacher_dtype`) is decided by the caller that builds `teacher`. `seed` decides which steps are
    on-policy.
    """

    def __init__(
        self,
        student: nn.Module,
        cfg: LMDistillConfig,
        *,
        teacher: CachedTeacher | OnlineTeacher,
        pad_token_id: int,
        eos_token_id: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.student = student
        self.cfg, self.seed = cfg, seed
        self.pad_token_id, self.eos_token_id = pad_token_id, eos_token_id
        self._teacher = (teacher,)  # a tuple: the teacher must not become a submodule (DDP, optimizer)
        online = isinstance(teacher, OnlineTeacher)
        if cfg.on_policy_fraction > 0 and not online:
            raise ValueError(
                "on-policy distillation needs an online teacher: a cached signal has no rows for "
                "the student's own samples"
            )
        if cfg.hidden is not None and not online:
            raise ValueError(
                "hidden-state distillation needs an online teacher (the cache holds top-k logits only)"
            )
        _, student_head = backbone_and_head(student)
        if online and teacher.head.weight.shape[0] != student_head.weight.shape[0]:
            raise ValueError(
                f"teacher vocabulary {teacher.head.weight.shape[0]} != student vocabulary "
                f"{student_head.weight.shape[0]}: an online teacher must share the student's tokenizer "
                "(another tokenizer: signal cached with distill.cross_tokenizer)"
            )
        self.projections = nn.ModuleDict()
        if cfg.hidden is not None:
            s_width = student.config.hidden_size
            t_width = teacher.model.config.hidden_size
            for s_layer in cfg.hidden.layer_map:
                like = next(student.parameters())
                proj = (
                    nn.Linear(s_width, t_width, bias=False, dtype=like.dtype, device=like.device)
                    if s_width != t_width
                    else nn.Identity()
                )
                self.projections[str(s_layer)] = proj

    @property
    def teacher(self) -> CachedTeacher | OnlineTeacher:
        return self._teacher[0]

    def extra_parameters(self) -> int:
        return sum(p.numel() for p in self.projections.parameters())

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        s = self.cfg
        input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        want_layers = s.hidden is not None
        backbone, head = backbone_and_head(self.student)
        out = backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=want_layers)
        # position t predicts token t + 1: the loss rows are 0 .. T-2, their targets 1 .. T-1
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        hidden = out.last_hidden_state[:, :-1]
        teacher_kwargs: dict[str, Any] = {}
        t_out = None
        if isinstance(self.teacher, OnlineTeacher):
            t_out = self.teacher.hidden_states(input_ids, attention_mask, all_layers=want_layers)
            teacher_kwargs = {
                "teacher_hidden": t_out.last_hidden_state[:, :-1].to(hidden.device),
                "teacher_head": self.teacher.head.weight.to(hidden.device),
                "teacher_head_bias": None
                if self.teacher.head.bias is None
                else self.teacher.head.bias.to(hidden.device),
            }
        else:
            lengths = attention_mask.sum(dim=1).tolist()
            rows = self.teacher.topk(batch["ids"], lengths, input_ids.shape[1], hidden.device)
            teacher_kwargs = {
                "teacher_ids": rows["topk_ids"][:, :-1].long(),
                "teacher_logprobs": rows["topk_logprobs"][:, :-1],
            }
            mask = mask & rows["valid"][:, :-1]
        # KD and CE both on: one fused gradient per chunk (one pair of head matmuls); the terms below sum to
        # kd_weight * divergence + ce_weight * nll_sum, the only combination the fused gradient supports
        fused = (
            {"kd_weight": s.kd_weight, "ce_weight": s.ce_weight}
            if s.kd_weight > 0 and s.ce_weight > 0
            else {}
        )
        result = chunked_distill_loss(
            hidden,
            head.weight,
            student_head_bias=head.bias,
            divergence=s.divergence,
            divergence_kwargs=dict(s.divergence_kwargs),
            labels=targets if s.ce_weight > 0 else None,
            mask=mask,
            temperature=s.temperature,
            scale_by_t2=s.scale_by_t2,
            num_tokens=1,  # a sum: the loop divides by the window's token count
            chunk_size=s.chunk_size,
            **fused,
            **teacher_kwargs,
        )
        terms = {f"kd/{s.divergence}": s.kd_weight * result.divergence}
        if s.ce_weight > 0:
            terms["ce"] = s.ce_weight * result.nll_sum
        if s.hidden is not None:
            hidden_loss = HIDDEN_LOSSES[s.hidden.loss]
            total = hidden.new_zeros((), dtype=torch.float32)
            for s_layer, t_layer in s.hidden.layer_map.items():
                projected = self.projections[str(s_layer)](out.hidden_states[s_layer][:, :-1])
                target = t_out.hidden_states[t_layer][:, :-1].to(projected.device)
                total = total + hidden_loss(projected, target, mask=mask, reduction="sum")
            terms[f"hidden/{s.hidden.loss}"] = s.hidden.weight * total
        if isinstance(self.teacher, OnlineTeacher):
            self.teacher.release()
        return terms

    # -- on-policy ------------------------------------------------------------------------------------

    def prepare_window(self, micro_batches: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
        s = self.cfg
        if s.on_policy_fraction == 0 or random.Random(f"{self.seed}:{step}").random() >= s.on_policy_fraction:
            return micro_batches
        return [self.sample_answers(b) for b in micro_batches]

    @torch.no_grad()
    def sample_answers(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch's prompts answered by the student itself; the loss covers the sampled tokens.

        Under FSDP this method is registered as a forward of the objective (the root), so its embeddings
        and head are gathered while the student generates."""
        prompts = []
        for ids, labels, keep in zip(
            batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True
        ):
            answer = (labels != IGNORE_INDEX).nonzero()
            end = int(answer[0]) if len(answer) else int(keep.sum())
            prompts.append(ids[:end].tolist())
        width = max(len(p) for p in prompts)
        device = next(self.student.parameters()).device
        # left padding: every prompt ends where generation starts
        input_ids = torch.tensor([[self.pad_token_id] * (width - len(p)) + p for p in prompts], device=device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        was_training = self.student.training
        self.student.eval()
        generated = self.student.generate(
            input_ids=input_ids,
            attention_mask=attention,
            do_sample=True,
            temperature=self.cfg.on_policy_temperature,
            top_k=0,
            max_new_tokens=self.cfg.on_policy_max_new_tokens,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
        )[:, width:]
        self.student.train(was_training)
        rows = []
        for prompt, new in zip(prompts, generated.tolist(), strict=True):
            if self.eos_token_id is not None and self.eos_token_id in new:
                new = new[: new.index(self.eos_token_id) + 1]  # keep the eos: the student learns to stop
            rows.append({"input_ids": prompt + new, "labels": [IGNORE_INDEX] * len(prompt) + new})
        out: dict[str, Any] = collate(rows, pad_token_id=self.pad_token_id)
        out["ids"] = list(batch["ids"])
        out["on_policy"] = True
        return out
