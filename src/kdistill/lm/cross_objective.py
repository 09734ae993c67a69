"""White-box distillation across tokenizers: the student learns a cached teacher signal named by bytes.

The teacher's signal (`kdistill.lm.byte_signal`, captured once by `kdistill capture --cross-tokenizer` or a
`task: lm` run) holds, per teacher token of each answer, its byte span and top-k candidates as bytes. The
student tokenizes the same answer text with its own tokenizer; `align_answer` cuts the text into chunks where
both tokenisations share a boundary, and per chunk the student's row that predicts the chunk's first token
meets the teacher's row of its first token: both are distributions over "the text from this byte on".

    loss per window = (kd_weight * sum_chunks cross(student_row, teacher_topk)   `chunked_cross_tokenizer_loss`
                       + ce_weight * sum_t -log p_student(y_t))                   the answer in the student's tokens
                      / (response tokens of the window)

`cross` is ULD (every chunk) or hybrid (1:1 chunks: the configured divergence on the candidates whose bytes
are a student token, ULD on the rest; other chunks: ULD). The teacher's candidates map to student ids once
(`ByteSignal.student_ids`). Logits come chunk by chunk from the hidden states, as in the other objectives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.lm.byte_signal import AnswerAlignment, ByteSignal, align_answer
from kdistill.lm.config import CrossTokenizerConfig, LMDistillConfig
from kdistill.lm.models import backbone_and_head
from kdistill.lm.objectives import LOGGED_ONLY, Objective
from kdistill.lm.sft_data import IGNORE_INDEX
from kdistill.losses.cross_chunked import fused_cross_tokenizer_loss


def cross_alignments(examples: Sequence[Mapping[str, Any]], signal: ByteSignal) -> dict[str, AnswerAlignment]:
    """Per example (from `capture.answer_examples` with the student's tokenizer) its alignment with the
    teacher's stored spans; an example the signal lacks is an error naming it."""
    out = {}
    for e in examples:
        rid = str(e["record_id"])
        if rid not in signal:
            raise KeyError(
                f"example {rid!r} has no teacher signal in {signal.store_dir} ({len(signal)} examples stored)"
            )
        teacher_spans = [tuple(span) for span in signal.rows(rid).spans.tolist()]
        out[rid] = align_answer(e["spans"], e["answer_start"], len(e["spans"]), teacher_spans)
    return out


def alignment_summary(alignments: Mapping[str, AnswerAlignment]) -> dict[str, Any]:
    """How the chunks split by kind over all examples (1:1 share: where hybrid's exact part applies)."""
    kinds: dict[str, int] = {}
    for a in alignments.values():
        for kind, n in a.kinds.items():
            kinds[kind] = kinds.get(kind, 0) + n
    total = sum(kinds.values())
    return {
        "chunks": total,
        "kinds": dict(sorted(kinds.items())),
        "exact_share": kinds.get("1:1", 0) / max(total, 1),
    }


class CrossTokenizerObjective(Objective):
    """`distill.cross_tokenizer`: the student learns a teacher with another tokenizer from a byte signal."""

    def __init__(
        self,
        student: nn.Module,
        cfg: LMDistillConfig,
        cross: CrossTokenizerConfig,
        *,
        signal: ByteSignal,
        alignments: Mapping[str, AnswerAlignment],
        student_tokenizer: Any,
    ) -> None:
        super().__init__()
        self.student = student
        self.cfg, self.cross = cfg, cross
        self._signal = (signal,)  # not a submodule
        self.alignments = dict(alignments)
        self.candidate_to_student = signal.student_ids(student_tokenizer)  # (candidates,) int64, -1 none
        _, head = backbone_and_head(student)
        if len(self.candidate_to_student) and int(self.candidate_to_student.max()) >= head.weight.shape[0]:
            raise ValueError("the student's tokenizer has ids beyond its output head: resize the model first")

    @property
    def signal(self) -> ByteSignal:
        return self._signal[0]

    def teacher_rows(
        self, ids: Sequence[str], device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(batch index, student row, teacher candidates as student ids, their log-probs, exact) per chunk."""
        batch_index, rows, mapped, logprobs, exact = [], [], [], [], []
        for b, rid in enumerate(ids):
            a = self.alignments[rid]
            if not a.student_rows:
                continue
            stored = self.signal.rows(rid)
            teacher_rows = torch.tensor(a.teacher_rows, dtype=torch.long)
            candidates = stored.topk_ids[teacher_rows].long()  # (n, k) table ids, -1 absent
            as_student = self.candidate_to_student[candidates.clamp_min(0)]
            mapped.append(torch.where(candidates >= 0, as_student, torch.full_like(as_student, -1)))
            logprobs.append(stored.topk_logprobs[teacher_rows].float())
            rows.append(torch.tensor(a.student_rows, dtype=torch.long))
            batch_index.append(torch.full((len(a.student_rows),), b, dtype=torch.long))
            exact.append(torch.tensor(a.exact, dtype=torch.bool))
        if not rows:
            k = self.signal.k
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return (
                empty,
                empty,
                torch.zeros(0, k, dtype=torch.long, device=device),
                torch.zeros(0, k, device=device),
                torch.zeros(0, dtype=torch.bool, device=device),
            )
        return tuple(torch.cat(t).to(device) for t in (batch_index, rows, mapped, logprobs, exact))  # type: ignore[return-value]

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        d, c = self.cfg, self.cross
        input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        backbone, head = backbone_and_head(self.student)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        batch_index, rows, mapped, logprobs, exact = self.teacher_rows(batch["ids"], hidden.device)
        # the rows the SFT term covers (position t predicts token t + 1); every aligned chunk's row is one
        targets = labels[:, 1:].to(hidden.device)
        answer = targets != IGNORE_INDEX  # (B, T-1)
        position = torch.full(answer.shape, -1, dtype=torch.long, device=hidden.device)
        position[answer] = torch.arange(int(answer.sum()), device=hidden.device)
        cross_rows = position[batch_index, rows]
        if bool((cross_rows < 0).any()):
            raise ValueError("an aligned chunk's row is not an answer row (a bug in the alignment)")
        result = fused_cross_tokenizer_loss(
            hidden[:, :-1][answer],
            head.weight,
            head.bias,
            labels=targets[answer],
            cross_rows=cross_rows,
            teacher_student_ids=mapped,
            teacher_logprobs=logprobs,
            exact=exact,
            loss=c.loss,
            divergence=d.divergence,
            divergence_kwargs=dict(d.divergence_kwargs),
            student_temperature=c.student_temperature,
            teacher_temperature=c.teacher_temperature,
            matched_weight=c.matched_weight,
            unmatched_weight=c.unmatched_weight,
            kd_weight=d.kd_weight,
            ce_weight=d.ce_weight,
            chunk_size=d.chunk_size,
        )
        # one differentiable term (its gradient is formed in one pass); the parts are logged beside it
        terms = {f"kd/{c.loss}+ce" if d.ce_weight else f"kd/{c.loss}": result.total}
        parts = {"ce": result.ce, "matched": result.matched, "unmatched": result.unmatched}
        terms |= {f"{LOGGED_ONLY}{name}": value for name, value in parts.items()}
        return terms


__all__ = ["CrossTokenizerObjective", "alignment_summary", "cross_alignments"]
