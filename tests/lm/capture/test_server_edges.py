"""Endpoint logprobs at the edge of the happy path: the stored width k, and a tokenizer that matches too little."""

from __future__ import annotations

import pytest
import torch
from tests.lm.capture.helpers import generation_row, write_config, write_generations
from typer.testing import CliRunner

from kdistill.cli.app import app as cli_app
from kdistill.lm.capture import TokenMap, signal_from_generations
from kdistill.lm.signal_store import TeacherSignal

UNMAPPABLE = "@@ no such token @@"
ANSWERS = ["the value of an object is its identity", "names refer to objects and contents"]


def _mappable_ids(tokenizer) -> list[int]:
    """Ids whose decoded text maps back to them alone: what an endpoint can name unambiguously."""
    token_map = TokenMap(tokenizer)
    return [i for i in range(3, len(tokenizer)) if token_map.id_of(tokenizer.decode([i])) == i]


def _entries(tokenizer, answer: str, *, top: int, chosen_in_top: bool = True, unmatched: int = 0) -> list:
    """An endpoint's logprobs of `answer` with `top` alternatives per token: the chosen token first among
    them (as a server's top_logprobs usually has it), or not among them at all; the first `unmatched`
    tokens are named by a text no token has (they cannot match our tokenization)."""
    pool = _mappable_ids(tokenizer)
    entries = []
    for j, token_id in enumerate(tokenizer(answer, add_special_tokens=False)["input_ids"]):
        others = [i for i in pool[j * 7 :] if i != token_id][: top if not chosen_in_top else top - 1]
        alternatives = ([token_id] if chosen_in_top else []) + others
        chosen = -0.2 if chosen_in_top else -4.0
        entries.append(
            {
                "token": UNMAPPABLE if j < unmatched else tokenizer.decode([token_id]),
                "logprob": chosen,
                "top": [
                    {"token": tokenizer.decode([t]), "logprob": chosen if t == token_id else -1.0 - n}
                    for n, t in enumerate(alternatives)
                ],
            }
        )
    return entries


def test_k_is_the_width_rows_use_not_one_more_than_top_logprobs(tmp_path, tokenizer):
    rows = [generation_row(i, a, logprobs=_entries(tokenizer, a, top=5)) for i, a in enumerate(ANSWERS)]
    result = signal_from_generations(write_generations(tmp_path / "gens", 0, rows), tokenizer, max_length=64)
    assert result.k == 5 and TeacherSignal(result.store_dir).k == 5  # was 1 + 5: a column never filled

    # a token sampled outside its top 5 needs the sixth column
    outside = ANSWERS[0]
    rows.append(generation_row(2, outside, logprobs=_entries(tokenizer, outside, top=5, chosen_in_top=False)))
    wide = signal_from_generations(write_generations(tmp_path / "gens6", 0, rows), tokenizer, max_length=64)
    assert wide.k == 6
    signal = TeacherSignal(wide.store_dir)
    row = signal["rec-002"]
    first = int(row.valid.nonzero()[0])
    assert int((row.topk_ids[first] >= 0).sum()) == 6  # every column filled: the 5 + the chosen token


def test_the_sparse_loss_reads_the_narrower_width_as_the_wider_one(tmp_path, tokenizer):
    """An extra column that holds nothing (-1, -inf) changes no loss: the narrow store loses nothing."""
    from kdistill.losses.token_sparse import sparse_forward_kl

    rows = [generation_row(i, a, logprobs=_entries(tokenizer, a, top=5)) for i, a in enumerate(ANSWERS)]
    result = signal_from_generations(write_generations(tmp_path / "gens", 0, rows), tokenizer, max_length=64)
    signal = TeacherSignal(result.store_dir)
    row = signal["rec-000"]
    ids, logprobs, valid = row.topk_ids.long(), row.topk_logprobs, row.valid
    torch.manual_seed(0)
    student = torch.randn(len(ids), len(tokenizer))
    padded_ids = torch.cat([ids, torch.full((len(ids), 1), -1)], dim=1)
    padded_lp = torch.cat([logprobs, torch.full((len(ids), 1), -torch.inf)], dim=1)
    narrow = sparse_forward_kl(student, ids, logprobs, mask=valid)
    wide = sparse_forward_kl(student, padded_ids, padded_lp, mask=valid)
    assert torch.isfinite(narrow) and narrow.item() == pytest.approx(wide.item(), rel=1e-6)


# ---------------------------------------------------------------- a tokenizer that matches too little


def _mismatched_gens(tmp_path, tokenizer, unmatched: int):
    """Generations whose endpoint tokens disagree with the tokenizer on `unmatched` of them; returns
    (directory, endpoint tokens, mismatched tokens) counted from the entries themselves."""
    rows, total = [], 0
    for i, answer in enumerate(ANSWERS):
        entries = _entries(tokenizer, answer, top=3, unmatched=unmatched if i == 0 else 0)
        total += len(entries)
        rows.append(generation_row(i, answer, logprobs=entries))
    return write_generations(tmp_path / "gens", 0, rows), total, unmatched


def _capture(tmp_path, model_dir, gens, *flags):
    cfg = write_config(
        tmp_path / "capture.yaml",
        teacher={"model": str(model_dir)},
        data={"generations": str(gens)},
        source="endpoint",
        max_length=64,
        out=str(tmp_path / "sig"),
    )
    return CliRunner().invoke(cli_app, ["capture", str(cfg), *flags])


def test_a_mismatch_above_the_limit_is_refused_naming_what_was_measured(tmp_path, model_dir, tokenizer):
    gens, total, unmatched = _mismatched_gens(tmp_path, tokenizer, unmatched=2)
    share = unmatched / total
    assert 0.05 < share < 0.5  # above the default limit, far from all
    result = _capture(tmp_path, model_dir, gens)
    assert result.exit_code == 2, result.output
    assert (
        f"{unmatched} of {total} endpoint tokens ({share:.1%}) do not match tokenizer {model_dir}; "
        "above the 5% limit (max_token_mismatch, kdistill capture --max-token-mismatch)"
    ) in " ".join(result.stderr.split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "sig").exists()  # refused before anything was written

    # the limit is the user's: at or above the measured share the capture goes on, with the note
    at_limit = _capture(tmp_path, model_dir, gens, "--max-token-mismatch", str(share))
    assert at_limit.exit_code == 0, at_limit.output
    note = f"{unmatched} of {total} endpoint tokens ({share:.1%}) do not match this tokenizer"
    assert note in " ".join(at_limit.stdout.split())
    assert TeacherSignal(tmp_path / "sig").complete

    below = _capture(tmp_path, model_dir, gens, f"max_token_mismatch={share * 0.99}")  # the config field
    assert below.exit_code == 2 and "limit" in below.stderr


def test_a_mismatch_below_the_default_limit_is_a_note(tmp_path, model_dir, tokenizer):
    answer = " ".join(ANSWERS * 3)  # long enough that one token is under 5%
    entries = _entries(tokenizer, answer, top=3, unmatched=1)
    assert 1 / len(entries) < 0.05
    gens = write_generations(tmp_path / "gens", 0, [generation_row(0, answer, logprobs=entries)])
    result = _capture(tmp_path, model_dir, gens)
    assert result.exit_code == 0, result.output
    assert f"1 of {len(entries)} endpoint tokens" in result.stdout
