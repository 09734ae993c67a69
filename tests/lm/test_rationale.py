"""What a student learns from a verified answer: rationale, answer only, or both as two tagged tasks."""

import pytest

from kdistill.lm.rationale import inference_rows, training_rows

ROWS = [
    {
        "record_id": "a",
        "prompt": "What is 2 + 3?",
        "messages": None,
        "completion": "2 and 3 make 5.\nAnswer: 5",
        "extracted": "5",
    },
    {
        "record_id": "b",
        "prompt": None,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "What is 4 + 4?"},
        ],
        "completion": "Four and four: eight.\nAnswer: 8",
        "extracted": "8",
    },
]


def test_rationale_keeps_the_answers_and_answer_keeps_the_final_answer_only():
    assert training_rows(ROWS, "rationale") == ROWS
    short = training_rows(ROWS, "answer")
    assert [r["completion"] for r in short] == ["Answer: 5", "Answer: 8"]
    assert [r["prompt"] for r in short[:1]] == ["What is 2 + 3?"] and short[1]["messages"] == ROWS[1][
        "messages"
    ]


def test_multitask_gives_two_tagged_rows_per_answer_and_asks_the_answer_task_at_inference():
    rows = training_rows(ROWS, "multitask")
    assert [r["record_id"] for r in rows] == ["a#answer", "a#rationale", "b#answer", "b#rationale"]
    assert rows[0]["prompt"] == "[answer] What is 2 + 3?" and rows[0]["completion"] == "Answer: 5"
    assert (
        rows[1]["prompt"] == "[rationale] What is 2 + 3?" and rows[1]["completion"] == ROWS[0]["completion"]
    )
    # a chat: the tag goes on the last user message, the system message is untouched
    assert rows[2]["messages"][0] == ROWS[1]["messages"][0]
    assert rows[3]["messages"][1]["content"] == "[rationale] What is 4 + 4?"
    assert ROWS[1]["messages"][1]["content"] == "What is 4 + 4?"  # the input rows are not changed
    asked = inference_rows(ROWS, "multitask")
    assert asked[0]["prompt"] == "[answer] What is 2 + 3?" and asked[1]["messages"][1]["content"].startswith(
        "[answer] "
    )
    assert inference_rows(ROWS, "rationale") == ROWS


def test_answer_forms_need_the_extracted_answer():
    with pytest.raises(ValueError, match=r"needs the verified final answer.*1 rows have none, e.g. a"):
        training_rows([{**ROWS[0], "extracted": None}, ROWS[1]], "answer")
    with pytest.raises(ValueError, match="train_on must be one of"):
        training_rows(ROWS, "both")
