"""The tokenizer-agnostic teacher signal: the teacher's top-k per answer token, named by bytes, not ids.

A student with another tokenizer cannot read teacher token ids, but it can read text. So this layout of
the teacher-signal store (`kdistill.lm.signal_store`, layout "bytes") keeps, per example (a generation row,
keyed by its record_id), one row per teacher token of the *answer text* (the prompt is left out: each side
renders the prompt with its own chat template, and only the answer is the same text on both sides):

    spans           int32   (N, 2)  byte offsets [start, end) of teacher token n in the answer's UTF-8
    token_ids       int32   (N,)    candidate-table id of token n itself (what the teacher said)
    token_logprobs  float32 (N,)    its log-probability under the teacher
    topk_ids        int32   (N, k)  candidate-table ids of the teacher's k most likely tokens at n; -1 absent
    topk_logprobs   float32 (N, k)  their log-probabilities (full softmax, T = 1); -inf where absent

and once per store the candidate table (`candidates.safetensors`): the bytes each candidate id stands for
(a local teacher's table is its vocabulary, id for id, through `vocab_map.token_bytes`; an endpoint's is
every distinct token it returned). Special tokens (eos, chat markers) have no bytes in the answer: they
are marked `special` and never map to a student token, so their mass counts as the tail.

The tail mass of a row is 1 - sum(exp(topk_logprobs)); it is not stored because it follows from the row.

Reading for a student: `ByteSignal(dir)` opens the store (or `ByteSignal([dir, ...])` the parts of a
sharded capture, whose candidate tables `TeacherSignal` checks are equal byte for byte); `student_ids(tokenizer)` maps every candidate to
the student token with the same bytes (-1 where there is none); `align_answer(...)` aligns the student's
tokens of the answer with the stored spans (`kdistill.lm.alignment`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from kdistill.lm.alignment import Chunk, Span, align_spans
from kdistill.lm.signal_store import BYTES, TeacherSignal, TeacherSignalError

CANDIDATES = "candidates.safetensors"


class ByteRows(NamedTuple):
    """One example's agnostic rows (see the module docstring)."""

    spans: Tensor
    token_ids: Tensor
    token_logprobs: Tensor
    topk_ids: Tensor
    topk_logprobs: Tensor


class CandidateTable:
    """Candidate id <-> the bytes it stands for; `special` entries (no text) never match a student token."""

    def __init__(self, entries: Sequence[bytes | None] = ()) -> None:
        self.entries: list[bytes] = []
        self.special: list[bool] = []
        self._index: dict[bytes, int] = {}
        for entry in entries:
            self._append(entry)

    def _append(self, entry: bytes | None) -> int:
        self.entries.append(b"" if entry is None else bytes(entry))
        self.special.append(entry is None)
        if entry is not None:
            self._index.setdefault(bytes(entry), len(self.entries) - 1)
        return len(self.entries) - 1

    def intern(self, entry: bytes) -> int:
        """The id of these bytes, added to the table the first time they are seen."""
        found = self._index.get(entry)
        return found if found is not None else self._append(entry)

    def __len__(self) -> int:
        return len(self.entries)

    def to_bytes(self) -> bytes:
        """The table as a safetensors file: bytes concatenated, offsets, special flags."""
        from safetensors.torch import save

        offsets = [0]
        for entry in self.entries:
            offsets.append(offsets[-1] + len(entry))
        data = b"".join(self.entries)
        return save(
            {
                "data": torch.frombuffer(bytearray(data), dtype=torch.uint8)
                if data
                else torch.zeros(0, dtype=torch.uint8),
                "offsets": torch.tensor(offsets, dtype=torch.int64),
                "special": torch.tensor(self.special, dtype=torch.bool),
            }
        )

    @classmethod
    def from_file(cls, path: str | Path) -> CandidateTable:
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        data = bytes(tensors["data"].tolist())
        offsets = tensors["offsets"].tolist()
        special = tensors["special"].tolist()
        if len(offsets) != len(special) + 1 or offsets[-1] != len(data):
            raise TeacherSignalError(f"{path}: offsets do not match the data (a damaged candidate table)")
        table = cls()
        for i, is_special in enumerate(special):
            table._append(None if is_special else data[offsets[i] : offsets[i + 1]])
        return table

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()[:16]


class ByteSignal:
    """A store of layout "bytes" opened for reading: `signal.rows(example_id) -> ByteRows`."""

    def __init__(self, store_dir: str | Path | Sequence[str | Path], *, verify: bool = True) -> None:
        self.store = TeacherSignal(store_dir, verify=verify)
        if self.store.layout is not BYTES:
            raise TeacherSignalError(
                f"{store_dir}: a teacher signal in token ids (layout {self.store.layout.name!r}), captured for "
                "one tokenizer; a student with another tokenizer needs the agnostic format: capture with "
                "`kdistill capture --cross-tokenizer`"
            )
        self.table = CandidateTable.from_file(self.store.attachment(CANDIDATES))

    @property
    def store_dir(self) -> Path:
        return self.store.store_dir

    @property
    def k(self) -> int:
        return self.store.k

    @property
    def key_inputs(self) -> dict[str, Any]:
        return self.store.key_inputs

    def __contains__(self, example_id: object) -> bool:
        return example_id in self.store

    def __len__(self) -> int:
        return len(self.store)

    def rows(self, example_id: str) -> ByteRows:
        return ByteRows(**self.store.fields(example_id))

    def student_ids(self, tokenizer: Any) -> Tensor:
        """(candidates,) int64: the student token with each candidate's bytes (lowest id), -1 where none."""
        from kdistill.lm.vocab_map import token_bytes

        by_bytes: dict[bytes, int] = {}
        for index, value in enumerate(token_bytes(tokenizer)):
            if value is not None and value not in by_bytes:
                by_bytes[value] = index
        return torch.tensor(
            [
                -1 if special else by_bytes.get(entry, -1)
                for entry, special in zip(self.table.entries, self.table.special, strict=True)
            ],
            dtype=torch.int64,
        )


@dataclass(frozen=True)
class AnswerAlignment:
    """Where one example's student rows meet the teacher's stored rows.

    For each aligned chunk: `student_rows` = the row of the student's input whose logits predict the
    chunk's first student token (answer start + index - 1), `teacher_rows` = the stored row of the chunk's
    first teacher token, `exact` = the chunk is 1:1 (one token each side, the same bytes).
    """

    student_rows: list[int]
    teacher_rows: list[int]
    exact: list[bool]
    kinds: dict[str, int]  # chunk kind -> count, over the kept chunks


def align_answer(
    student_spans: Sequence[Span], answer_start: int, kept: int, teacher_spans: Sequence[Span]
) -> AnswerAlignment:
    """Align the student's answer tokens (`student_spans`, the first `kept` of which fit in its input,
    starting at input position `answer_start`) with the teacher's stored spans.

    A chunk is kept when both sides have a token in it and both end on the same byte (the last chunk of a
    text one side covers further, e.g. where the teacher's capture was cut shorter, is dropped). Both
    sides' first tokens of a chunk predict the text that starts at the chunk's first byte, so their
    distributions are comparable there; the other tokens of a multi-token chunk have no counterpart.
    """
    chunks: list[Chunk] = align_spans(list(student_spans[:kept]), list(teacher_spans))
    student_rows, teacher_rows, exact = [], [], []
    kinds: dict[str, int] = {}
    for chunk in chunks:
        if not chunk.student or not chunk.teacher:
            continue
        if student_spans[chunk.student[-1]][1] != teacher_spans[chunk.teacher[-1]][1]:
            continue  # the leftover of one side: no common end
        row = answer_start + chunk.student[0] - 1
        if row < 0:
            continue  # the answer starts the input: nothing predicts its first token
        student_rows.append(row)
        teacher_rows.append(chunk.teacher[0])
        exact.append(chunk.kind == "1:1")
        kinds[chunk.kind] = kinds.get(chunk.kind, 0) + 1
    return AnswerAlignment(student_rows, teacher_rows, exact, kinds)


__all__ = [
    "CANDIDATES",
    "AnswerAlignment",
    "ByteRows",
    "ByteSignal",
    "CandidateTable",
    "align_answer",
]
