"""Endpoint `top_logprobs` (the generation store's `logprobs` column) -> teacher signal, joined to SFT examples."""

from __future__ import annotations

import pytest
import torch
from tests.lm.capture.helpers import generation_row, write_generations

from kdistill.generate.store import load_generations
from kdistill.lm.capture import TokenMap, signal_from_generations
from kdistill.lm.sft_data import IGNORE_INDEX, tokenize_rows
from kdistill.lm.signal_store import TeacherSignal

UNMAPPABLE = "@@ no such token @@"


def _entries(tokenizer, completion: str, *, split_at: int | None = None) -> list[dict]:
    """Endpoint logprobs for `completion` as our tokenizer splits it; token `split_at` sent as two pieces.

    Each entry: the chosen token (log-probability -0.1 - 0.01 j), its alternatives: itself again, the
    next id by its raw vocabulary name (-2.5), the id after by its decoded text (-2.7), and a text no
    token has (-3.0).
    """
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    entries = []
    for j, token_id in enumerate(ids):
        piece = tokenizer.decode([token_id])
        chosen = -0.1 - 0.01 * j
        alt1, alt2 = _alts(tokenizer, token_id)
        top = [
            {"token": piece, "logprob": chosen},
            {"token": tokenizer.convert_ids_to_tokens(alt1), "logprob": -2.5},
            {"token": tokenizer.decode([alt2]), "logprob": -2.7},
            {"token": UNMAPPABLE, "logprob": -3.0},
        ]
        if j == split_at:
            entries += [
                {"token": piece[:1], "logprob": chosen, "top": []},
                {"token": piece[1:], "logprob": chosen, "top": []},
            ]
        else:
            entries.append({"token": piece, "logprob": chosen, "top": top})
    return entries


def _alts(tokenizer, token_id: int) -> tuple[int, int]:
    """Two alternatives of `token_id`: other tokens whose text is plain ASCII (so it maps back uniquely)."""
    pool = [
        i
        for i in range(3, len(tokenizer))
        if tokenizer.decode([i]).strip().isascii() and tokenizer.decode([i]).strip()
    ]
    start = (token_id * 7) % len(pool)
    picked = [i for i in pool[start:] + pool[:start] if i != token_id][:2]
    return picked[0], picked[1]


@pytest.fixture
def endpoint_gens(tmp_path, tokenizer):
    answers = [
        "the value of an object is its identity",
        "names refer to objects and contents",
        "type while identity names the object",
    ]
    rows = [generation_row(i, a, logprobs=_entries(tokenizer, a), chat=i == 1) for i, a in enumerate(answers)]
    split = "identity and contents of an object"
    split_at = next(
        j for j, t in enumerate(tokenizer(split)["input_ids"]) if len(tokenizer.decode([t]).strip()) >= 3
    )
    rows.append(generation_row(3, split, logprobs=_entries(tokenizer, split, split_at=split_at)))
    rows.append(generation_row(4, "an answer without logprobs"))
    return write_generations(tmp_path / "gens", 0, rows), split_at


def test_endpoint_logprobs_become_rows_aligned_with_the_sft_examples(endpoint_gens, tokenizer, tmp_path):
    gens, split_at = endpoint_gens
    token_map = TokenMap(tokenizer)
    assert token_map.id_of(UNMAPPABLE) is None
    result = signal_from_generations(gens, tokenizer, tmp_path / "sig", max_length=64)
    stats = result.endpoint
    # the width rows use: chosen (also its own first alternative) + the 2 alternatives that map to an id
    assert result.k == 3
    assert result.examples == 4 and stats.rows_without_logprobs == 1 and stats.skipped_ids == ["rec-004"]
    assert stats.mismatched_tokens == 2  # the two pieces of the split token
    assert stats.dropped_alternatives == sum(len(tokenizer(a)["input_ids"]) for a in _answers(gens)[:3]) + (
        len(tokenizer(_answers(gens)[3])["input_ids"]) - 1
    )

    # the same rows tokenized as SFT examples join the signal by record id
    sft = {
        e["record_id"]: e for e in tokenize_rows(tokenizer, load_generations(gens), max_length=64).examples
    }
    signal = TeacherSignal(result.store_dir)
    assert sorted(signal.ids()) == ["rec-000", "rec-001", "rec-002", "rec-003"]
    batch = signal.batch(signal.ids(), lengths=[len(sft[i]["input_ids"]) for i in signal.ids()])
    for n, example_id in enumerate(signal.ids()):
        example = sft[example_id]
        prompt_len = example["labels"].count(IGNORE_INDEX)
        answer = example["input_ids"][prompt_len:-1]  # without the eos
        ids, logprobs, valid = batch["topk_ids"][n], batch["topk_logprobs"][n], batch["valid"][n]
        expected_valid = torch.zeros_like(valid)
        for j, token_id in enumerate(answer):
            row = prompt_len + j - 1  # the logits at row predict answer token j
            if example_id == "rec-003" and j == split_at:
                continue  # the endpoint split this token differently: no signal here
            expected_valid[row] = True
            assert ids[row].tolist() == [token_id, *_alts(tokenizer, token_id)]  # no column left unused
            assert logprobs[row].tolist() == pytest.approx([-0.1 - 0.01 * j, -2.5, -2.7])
        assert torch.equal(valid, expected_valid)  # prompt rows, the eos row and padding stay invalid


def _answers(gens):
    return [r["completion"] for r in load_generations(gens)]


def test_k_keeps_the_highest_entries_and_is_part_of_the_key(endpoint_gens, tokenizer, tmp_path):
    gens, _ = endpoint_gens
    two = signal_from_generations(gens, tokenizer, tmp_path / "two", max_length=64, k=2)
    wide = signal_from_generations(gens, tokenizer, tmp_path / "wide", max_length=64)
    assert two.key != wide.key
    a, b = TeacherSignal(two.store_dir), TeacherSignal(wide.store_dir)
    assert torch.equal(a["rec-000"].topk_ids, b["rec-000"].topk_ids[:, :2])
    again = signal_from_generations(gens, tokenizer, tmp_path / "two", max_length=64, k=2)
    assert again.key == two.key and again.computed == 0 and again.already == 4


def test_an_endpoint_whose_tokens_match_nothing_is_an_error(tmp_path, tokenizer):
    entries = [{"token": UNMAPPABLE, "logprob": -0.5, "top": []}] * 3
    gens = write_generations(tmp_path / "gens", 0, [generation_row(0, "object identity", logprobs=entries)])
    with pytest.raises(ValueError, match="--cross-tokenizer"):
        signal_from_generations(gens, tokenizer, tmp_path / "sig", max_length=64)
    assert not (tmp_path / "sig").exists()  # nothing written

    gens = write_generations(tmp_path / "plain", 0, [generation_row(0, "object identity")])
    with pytest.raises(ValueError, match="no row has logprobs"):
        signal_from_generations(gens, tokenizer, tmp_path / "sig", max_length=64)


def test_malformed_logprobs_name_the_row(tmp_path, tokenizer):
    entries = [{"token": "the", "top": []}]  # no logprob
    gens = write_generations(tmp_path / "gens", 0, [generation_row(0, "the", logprobs=entries)])
    with pytest.raises(ValueError, match="row 'rec-000': logprobs are not in the row format"):
        signal_from_generations(gens, tokenizer, tmp_path / "sig", max_length=64)
