"""The tokenizer-agnostic signal: a local teacher's capture in bytes, read back for a student with another
tokenizer; resumed captures store the same bytes; the table maps candidates by bytes."""

from __future__ import annotations

import pytest
import torch

from kdistill.generate.store import load_generations
from kdistill.lm.byte_signal import ByteSignal, CandidateTable, align_answer
from kdistill.lm.capture import answer_examples, capture_bytes
from kdistill.lm.signal_store import TeacherSignal, TeacherSignalError
from kdistill.lm.vocab_map import token_bytes

K = 5


def _capture(teacher, tokenizer, rows, out, **kw):
    return capture_bytes(
        teacher, tokenizer, rows, out, k=K, key_inputs={"teacher": "tiny"}, max_length=64, batch_size=4, **kw
    )


def test_rows_are_the_teachers_answer_distributions(teacher, tokenizer, gens_dir, tmp_path):
    rows = [dict(r) for r in load_generations(gens_dir)]
    result = _capture(teacher, tokenizer, rows, tmp_path / "sig")
    signal = ByteSignal(result.store_dir)
    assert len(signal) == len(rows) and signal.k == K
    table = signal.table
    vocab_bytes = token_bytes(tokenizer)
    for row, example in zip(rows, answer_examples(tokenizer, rows, max_length=64), strict=True):
        stored = signal.rows(row["record_id"])
        answer = row["completion"].encode()
        # the spans tile the answer's bytes (all of them, or the head that fits in max_length) and spell them
        end = int(stored.spans[-1, 1])
        assert stored.spans[0, 0] == 0 and (end == len(answer) or len(example["input_ids"]) == 64)
        assert torch.equal(stored.spans[1:, 0], stored.spans[:-1, 1])
        assert b"".join(table.entries[int(t)] for t in stored.token_ids) == answer[:end]
        # independent computation: the teacher's log-softmax at the rows predicting the answer tokens
        ids = torch.tensor([example["input_ids"]])
        with torch.no_grad():
            logprobs = torch.log_softmax(teacher(input_ids=ids).logits[0].float(), dim=-1)
        start = example["answer_start"]
        n = len(stored.spans)
        expected = logprobs[start - 1 : start - 1 + n]
        values, top = expected.topk(K, dim=-1)
        torch.testing.assert_close(stored.topk_logprobs, values, rtol=1e-4, atol=1e-4)
        assert torch.equal(stored.topk_ids.long(), top)
        chosen = ids[0, start : start + n]
        torch.testing.assert_close(
            stored.token_logprobs, expected.gather(-1, chosen[:, None])[:, 0], rtol=1e-4, atol=1e-4
        )
        # candidate ids are teacher ids: the table holds each id's bytes
        for t in stored.topk_ids[0].tolist():
            assert table.entries[t] == (vocab_bytes[t] or b"") and table.special[t] == (
                vocab_bytes[t] is None
            )


def test_a_killed_capture_resumes_to_the_same_bytes(teacher, tokenizer, gens_dir, tmp_path):
    rows = [dict(r) for r in load_generations(gens_dir)]
    whole = _capture(teacher, tokenizer, rows, tmp_path / "whole", shard_examples=4)
    calls = []

    def dying(done, total):
        calls.append(done)
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _capture(teacher, tokenizer, rows, tmp_path / "resumed", shard_examples=4, progress=dying)
    partial = TeacherSignal(tmp_path / "resumed")
    assert 0 < len(partial) < len(rows) and not partial.complete
    resumed = _capture(teacher, tokenizer, rows, tmp_path / "resumed", shard_examples=4)
    assert resumed.already == len(partial) and resumed.computed == len(rows) - len(partial)
    a, b = ByteSignal(whole.store_dir), ByteSignal(resumed.store_dir)
    assert a.store.key == b.store.key
    for row in rows:
        for x, y in zip(a.rows(row["record_id"]), b.rows(row["record_id"]), strict=True):
            assert torch.equal(x, y)


def test_candidate_table_round_trip_and_interning(tmp_path):
    table = CandidateTable([b"a", None, "é".encode(), b""])
    assert table.intern(b"a") == 0 and table.intern(b"zz") == 4 and table.intern(b"zz") == 4
    path = tmp_path / "t.safetensors"
    path.write_bytes(table.to_bytes())
    back = CandidateTable.from_file(path)
    assert back.entries == table.entries and back.special == [False, True, False, False, False]


def test_student_ids_map_candidates_by_bytes(teacher, tokenizer, gens_dir, tmp_path):
    from tests.fixtures.tiny_lm import train_bpe

    rows = [dict(r) for r in load_generations(gens_dir)]
    signal = ByteSignal(_capture(teacher, tokenizer, rows, tmp_path / "sig").store_dir)
    student = train_bpe(300, byte_level=False)
    mapped = signal.student_ids(student)
    student_bytes = token_bytes(student)
    assert mapped.shape == (len(signal.table),)
    hits = 0
    for cand, sid in enumerate(mapped.tolist()):
        if sid >= 0:
            hits += 1
            assert student_bytes[sid] == signal.table.entries[cand] and not signal.table.special[cand]
        elif not signal.table.special[cand]:
            assert signal.table.entries[cand] not in student_bytes
    assert hits > 50  # single bytes and common words exist in both


def test_student_alignment_on_the_stored_spans(teacher, tokenizer, gens_dir, tmp_path):
    from tests.fixtures.tiny_lm import train_bpe

    from kdistill.lm.alignment import token_byte_spans

    rows = [dict(r) for r in load_generations(gens_dir)]
    signal = ByteSignal(_capture(teacher, tokenizer, rows, tmp_path / "sig").store_dir)
    student = train_bpe(300, byte_level=False)
    row = rows[-1]
    _, spans = token_byte_spans(student, row["completion"])
    teacher_spans = [tuple(s) for s in signal.rows(row["record_id"]).spans.tolist()]
    aligned = align_answer(spans, 10, len(spans), teacher_spans)
    assert aligned.student_rows[0] == 9 and aligned.teacher_rows[0] == 0
    assert sum(aligned.kinds.values()) == len(aligned.student_rows) > 0
    for srow, trow, exact in zip(aligned.student_rows, aligned.teacher_rows, aligned.exact, strict=True):
        s_start = spans[srow - 9][0]
        assert (
            abs(s_start - teacher_spans[trow][0]) <= 1
        )  # both predict the text from the same byte (a "▁" may sit outside)
        if exact:
            assert spans[srow - 9][1] == teacher_spans[trow][1]


def test_each_layout_is_read_by_its_own_reader(teacher, tokenizer, gens_dir, tmp_path):
    from kdistill.lm.signal_store import SignalRows, TeacherSignalWriter

    writer = TeacherSignalWriter(tmp_path / "ids", key="k", key_inputs={}, k=2)
    writer.open()
    writer.add(
        "a",
        SignalRows(
            torch.tensor([[0, 1]] * 3, dtype=torch.int32), torch.zeros(3, 2), torch.ones(3, dtype=torch.bool)
        ),
    )
    writer.close(complete=True)
    with pytest.raises(TeacherSignalError, match="--cross-tokenizer"):
        ByteSignal(tmp_path / "ids")
    rows = [dict(r) for r in load_generations(gens_dir)]
    agnostic = TeacherSignal(_capture(teacher, tokenizer, rows, tmp_path / "sig").store_dir)
    with pytest.raises(TeacherSignalError, match="ByteSignal"):
        agnostic.get(rows[0]["record_id"])
