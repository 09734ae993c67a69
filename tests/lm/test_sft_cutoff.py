"""Answers cut off by the teacher's token limit (finish_reason "length") end without eos in training.

Otherwise the student learns to stop where the teacher was interrupted. A row the teacher finished
("stop"), and a row from elsewhere without a finish_reason, end with eos as always.
"""

from __future__ import annotations

import pytest

from kdistill.lm.sft_data import IGNORE_INDEX, collate, count_response_tokens, tokenize_rows

ANSWER = "the value of an object is its identity"


def _row(record_id: str, finish_reason: str | None) -> dict:
    row = {"record_id": record_id, "prompt": "What is an object?", "messages": None, "completion": ANSWER}
    if finish_reason is not None:
        row["finish_reason"] = finish_reason
    return row


def _answer_labels(example: dict) -> list[int]:
    return [label for label in example["labels"] if label != IGNORE_INDEX]


def test_a_cut_off_answer_ends_without_eos_and_a_finished_one_with_it(tokenizer):
    answer_ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    assert eos not in answer_ids  # so that "ends without eos" below says something
    rows = [_row("stop", "stop"), _row("cut", "length"), _row("elsewhere", None)]
    tokenized = tokenize_rows(tokenizer, rows, max_length=256)
    stop, cut, elsewhere = tokenized.examples

    assert _answer_labels(stop) == answer_ids + [eos]
    assert _answer_labels(elsewhere) == answer_ids + [eos]
    assert _answer_labels(cut) == answer_ids  # ends on the last answer token: no stop is taught
    assert cut["input_ids"][-1] == answer_ids[-1] and len(cut["input_ids"]) == len(stop["input_ids"]) - 1
    # the loss covers one token fewer for the cut-off row: the eos the teacher never said
    assert tokenized.num_response_tokens == 3 * len(answer_ids) + 2
    assert tokenized.num_truncated == 0

    # padded into one batch, no position of the cut-off row is trained to predict eos
    batch = collate([stop, cut], pad_token_id=tokenizer.pad_token_id or 0)
    assert int((batch["labels"][1] == eos).sum()) == 0
    assert int((batch["labels"][0] == eos).sum()) == 1
    assert count_response_tokens(batch["labels"]) == 2 * len(answer_ids) + 1


@pytest.mark.parametrize("finish_reason", ["stop", "length"])
def test_generation_rows_carry_the_finish_reason_that_decides(tokenizer, tmp_path, finish_reason):
    """End to end: `kdistill generate --allow-length` rows, read back, tokenized as a recipe does."""
    from tests.fixtures.openai_server import Fault, ScriptedServer

    from kdistill.generate.run import GenerationConfig, generate
    from kdistill.generate.store import load_generations

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "q", "prompt": "p0"}\n')
    with ScriptedServer() as server:
        if finish_reason == "length":
            server.fault_all = Fault.length()
        config = GenerationConfig.model_validate(
            {
                "prompts": prompts,
                "out": tmp_path / "gens",
                "teacher": {"base_url": server.base_url, "model": "m", "api_key_env": None},
                "allow_length": True,
            }
        )
        assert generate(config).committed == 1
    rows = [dict(r) for r in load_generations(tmp_path / "gens")]
    assert [r["finish_reason"] for r in rows] == [finish_reason]
    (example,) = tokenize_rows(tokenizer, rows, max_length=256).examples
    answer_ids = tokenizer(rows[0]["completion"], add_special_tokens=False)["input_ids"]
    ends = [tokenizer.eos_token_id] if finish_reason == "stop" else []
    assert _answer_labels(example) == answer_ids + ends


def test_bits_per_byte_scores_every_token_of_a_cut_off_answer_and_no_eos_of_a_finished_one(
    tokenizer, tiny_model
):
    """The eos after a finished answer is not scored (it stands for no byte); a cut-off answer has none, so
    all of its tokens are scored: the last answer token must not be masked as if it were the eos."""
    from kdistill.lm.evaluate import bits_per_byte

    answer_ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    for reason in ("stop", "length"):
        out = bits_per_byte(tiny_model, tokenizer, [_row(reason, reason)], max_length=256)
        assert out["tokens"] == len(answer_ids), reason
        assert out["bytes"] == len(ANSWER.encode("utf-8"))
    # and the same text gives the same bits either way: the same tokens are scored
    stop = bits_per_byte(tiny_model, tokenizer, [_row("s", "stop")], max_length=256)
    cut = bits_per_byte(tiny_model, tokenizer, [_row("c", "length")], max_length=256)
    assert cut["bits"] == pytest.approx(stop["bits"], rel=1e-5)
