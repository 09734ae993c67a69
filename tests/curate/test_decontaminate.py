"""decontaminate: a shared 13-gram removes a row, a 12-gram does not, whatever the case or punctuation."""

from __future__ import annotations

import re

import pytest

from kdistill.curate import decontaminate

EVAL = (
    "Alice has seven red apples and gives three of them to Bob who already owns four green pears "
    "so how many pieces of fruit does Bob hold after the exchange with Alice today"
)
EVAL_WORDS = EVAL.split()
FILLER = "please think step by step before you answer the question below"


def row(record_id: str, completion: str, prompt: str = "solve this") -> dict:
    return {
        "record_id": record_id,
        "prompt_id": "p",
        "sample_index": 0,
        "prompt": prompt,
        "completion": completion,
    }


def window(start: int, length: int) -> str:
    return " ".join(EVAL_WORDS[start : start + length])


def ids(rows: list[dict]) -> list[str]:
    return [r["record_id"] for r in rows]


def test_a_shared_13_gram_removes_the_row_and_a_12_gram_does_not():
    rows = [
        row("13", f"{FILLER} {window(5, 13)} {FILLER}"),
        row("12", f"{FILLER} {window(5, 12)} {FILLER}"),
        row("two 12-grams apart", f"{window(0, 12)} {FILLER} {window(12, 12)}"),
    ]
    result = decontaminate(rows, [EVAL], n=13)
    assert ids(result.rows) == ["12", "two 12-grams apart"]
    assert ids(decontaminate(rows, [EVAL], n=12).rows) == []


def test_case_and_punctuation_do_not_hide_an_overlap():
    shouted = ", ".join(w.upper() for w in EVAL_WORDS[10:23]) + "?!"
    quoted = '"' + window(2, 13).replace(" ", " -- ") + '".'
    result = decontaminate([row("shouted", shouted), row("quoted", quoted), row("clean", FILLER)], [EVAL])
    assert ids(result.rows) == ["clean"]


def test_the_prompt_field_counts_too_and_fields_are_tested_separately():
    in_prompt = row("prompt", "the answer is 8", prompt=window(0, 20))
    # 7 words at the end of the prompt + 6 at the start of the completion: not a 13-gram of either field
    straddling = row("straddle", window(7, 6) + " " + FILLER, prompt=FILLER + " " + window(0, 7))
    result = decontaminate([in_prompt, straddling], [EVAL])
    assert ids(result.rows) == ["straddle"]
    assert ids(decontaminate([in_prompt], [EVAL], field="completion").rows) == ["prompt"]


def test_short_eval_texts_count_by_their_whole_word_sequence():
    short = "What is the capital of France?"  # 6 words < 13
    rows = [
        row("whole", "Q: what IS the capital of France. A: Paris"),
        row("part", "the capital of France is Paris"),
        row("reordered", "of France what is the capital"),
        row("short row", "is the capital"),
    ]
    result = decontaminate(rows, [short, EVAL])
    assert ids(result.rows) == ["part", "reordered", "short row"]
    [example] = result.examples
    assert (example.record_id, example.field, example.eval_index) == ("whole", "completion", 0)
    assert example.ngram == "what is the capital of france"


def test_empty_eval_texts_match_nothing():
    assert ids(decontaminate([row("a", FILLER)], ["", " ... "]).rows) == ["a"]


def test_counts_examples_and_which_eval_items_were_hit():
    evals = [EVAL, "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"]
    rows = [
        row("a", window(0, 13)),
        row("b", FILLER),
        row("c", "ONE two three four five six seven eight nine ten eleven twelve thirteen"),
        row(
            "d",
            window(20, 13),
            prompt="zero one two three four five six seven eight nine ten eleven twelve thirteen",
        ),
        row("e", window(1, 15)),
    ]
    result = decontaminate(rows, evals, max_examples=2)
    assert ids(result.rows) == ["b"]
    counts = result.counts
    assert (counts.name, counts.before, counts.after, counts.removed) == ("decontaminate", 5, 1, 4)
    assert counts.reasons == {"eval_overlap": 4}
    assert result.rows_per_eval_item == {0: 3, 1: 2}  # "d" overlaps both
    assert [(e.record_id, e.eval_index) for e in result.examples] == [("a", 0), ("c", 1)]
    assert (
        result.examples[1].ngram == "one two three four five six seven eight nine ten eleven twelve thirteen"
    )


@pytest.mark.parametrize(
    ("rows", "eval_texts", "kwargs", "message"),
    [
        ([row("a", "x")], EVAL, {}, "eval_texts must be a collection of strings, not one string"),
        ([row("a", "x")], [EVAL, 3], {}, "eval_texts[1] must be a string, got int"),
        ([row("a", "x")], [EVAL], {"n": 0}, "n must be a positive int (words per n-gram), got 0"),
        (
            [{"record_id": "a", "completion": "x"}],
            [EVAL],
            {},
            "row 0: field 'prompt' must be a string, got None",
        ),
        ([row("a", "x")], [EVAL], {"field": ()}, "field must name at least one row field"),
    ],
)
def test_bad_input_is_a_clear_error(rows, eval_texts, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        decontaminate(rows, eval_texts, **kwargs)
