"""The Verdict record and the answer text verifiers look at (reasoning stripped, fenced blocks)."""

from __future__ import annotations

import json

import pytest

from kdistill.verify import Verdict
from kdistill.verify.answer_text import fenced_blocks, final_text, last_block
from kdistill.verify.verdict import DETAIL_CHARS


def test_verdict_round_trips_through_json():
    verdict = Verdict(False, "mismatch", "41", "expected 42")
    assert Verdict.from_dict(json.loads(json.dumps(verdict.to_dict()))) == verdict
    assert verdict.to_dict() == {
        "ok": False,
        "reason": "mismatch",
        "extracted": "41",
        "detail": "expected 42",
    }


def test_detail_is_one_short_line():
    verdict = Verdict(False, "tests_failed", None, "line one\nline two " + "x" * 10_000)
    assert len(verdict.detail) == DETAIL_CHARS and verdict.detail.endswith("…")
    assert verdict.detail.startswith("line one line two x")


@pytest.mark.parametrize("reason", ["Mismatch", "no answer", "", "2fast"])
def test_reason_must_be_a_snake_case_code(reason):
    with pytest.raises(ValueError, match="snake_case"):
        Verdict(False, reason)


@pytest.mark.parametrize(
    ("answer", "final"),
    [
        ("plain", "plain"),
        ("<think>a</think>b", "b"),
        ("<think>a</think>b<think>c</think>d", "d"),  # after the last close
        ("<think>never closed", ""),
    ],
)
def test_final_text(answer, final):
    assert final_text(answer) == final


def test_fenced_blocks_and_the_last_one_of_a_language():
    text = "```Python title\nA\n```\ntext\n~~~\nB\n~~~\n````json\nC\n```\n````\n"
    assert fenced_blocks(text) == [("python", "A\n"), ("", "B\n"), ("json", "C\n```\n")]
    assert last_block(text, frozenset({"python"})) == "A\n"
    assert last_block(text, frozenset({"rust"})) == "B\n"  # no rust: the last untagged block
    assert last_block("no fences", frozenset({"python"})) is None
