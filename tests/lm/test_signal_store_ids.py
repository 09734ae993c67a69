"""The teacher-signal writer refuses a row that lists a token id twice, naming the example, row and entries."""

from __future__ import annotations

import pytest
import torch

from kdistill.lm.signal_store import BYTES, SignalRows, TeacherSignal, TeacherSignalWriter


def _rows(ids: list[list[int]]) -> SignalRows:
    topk_ids = torch.tensor(ids, dtype=torch.int32)
    logprobs = torch.where(topk_ids >= 0, -1.5, float("-inf"))
    return SignalRows(topk_ids, logprobs, torch.ones(len(ids), dtype=torch.bool))


def test_a_repeated_id_is_refused_and_the_example_can_be_added_again_fixed(tmp_path) -> None:
    good = _rows([[3, 1, -1, -1], [0, 2, 5, 4]])  # repeated padding (-1) is not a repeated id
    with TeacherSignalWriter(tmp_path / "sig", key="k", key_inputs={}, k=4) as writer:
        with pytest.raises(ValueError) as err:
            writer.add("rec-7", _rows([[3, 1, -1, -1], [0, 2, 5, 4], [9, 8, 7, 6], [5, 6, 5, -1]]))
        assert str(err.value) == (
            "example 'rec-7': topk_ids row 3 lists token id 5 more than once (entries 0, 2); "
            "the ids of a row must be distinct"
        )
        assert writer.buffered == 0 and "rec-7" not in writer.done_ids
        writer.add("rec-7", good)
    stored = TeacherSignal(tmp_path / "sig")["rec-7"]
    for got, expected in zip(stored, good, strict=True):
        assert torch.equal(got, expected)


def test_the_byte_layout_is_checked_too(tmp_path) -> None:
    rows = {
        "spans": torch.tensor([[0, 1], [1, 3]], dtype=torch.int32),
        "token_ids": torch.tensor([4, 2], dtype=torch.int32),
        "token_logprobs": torch.tensor([-0.1, -0.2]),
        "topk_ids": torch.tensor([[4, 0], [2, 2]], dtype=torch.int32),
        "topk_logprobs": torch.tensor([[-0.1, -3.0], [-0.2, -0.2]]),
    }
    with TeacherSignalWriter(tmp_path / "bytes", key="k", key_inputs={}, k=2, layout=BYTES) as writer:
        with pytest.raises(
            ValueError, match=r"^example 'b': topk_ids row 1 lists token id 2 more than once \("
        ):
            writer.add("b", rows)
