"""An endpoint's logprobs -> the tokenizer-agnostic signal by bytes: against the loopback server (through
`kdistill generate`), and on hand-made rows for the edge cases (mismatch, specials, malformed, resume)."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from tests.fixtures.openai_server import ScriptedServer, alternatives, answer_text, answer_tokens
from tests.generate.helpers import write_jsonl
from tests.lm.capture.helpers import generation_row, write_generations

from kdistill.generate.config import GenerationConfig
from kdistill.generate.run import generate
from kdistill.generate.store import load_generations
from kdistill.lm.byte_signal import ByteSignal
from kdistill.lm.endpoint_bytes import (
    EndpointToken,
    byte_rows,
    candidate_table,
    read_entries,
    rendering_of_rows,
    signal_bytes_from_generations,
)
from kdistill.lm.signal_store import read_manifest

TOP = 4  # top_logprobs asked of the server
SEED = 5
PROMPTS = ["plain words", "café au lait", "日本"]  # the last two: a character cut over two tokens


def _generate(server, tmp_path, name="gens", prompts=PROMPTS, **teacher):
    config = GenerationConfig.model_validate(
        {
            "prompts": write_jsonl(
                tmp_path / f"{name}.jsonl", [{"id": str(i), "prompt": p} for i, p in enumerate(prompts)]
            ),
            "out": tmp_path / name,
            "teacher": {"base_url": server.base_url, "model": "m", "api_key_env": None, **teacher},
            "sampling": {"top_logprobs": TOP, "seed": SEED},
            "retry": {"base_delay_s": 0.01, "max_attempts": 2},
        }
    )
    assert generate(config).committed == len(prompts)
    return tmp_path / name


@pytest.fixture(scope="module")
def loopback_gens(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("endpoint-bytes")
    with ScriptedServer() as server:
        return _generate(server, tmp)


def _expected(text: str) -> list[tuple[bytes, list[tuple[bytes, float]]]]:
    """What the scripted server said for an answer, from its own definition: tokens and ranked alternatives."""
    out = []
    for i, token in enumerate(answer_tokens(text)):
        lp = -0.1 * (i + 1)
        out.append((token, [(alt, lp - a) for a, alt in enumerate(alternatives(token, TOP))]))
    return out


def test_loopback_answers_become_rows_that_tile_and_spell_them(loopback_gens, tmp_path):
    result = signal_bytes_from_generations(loopback_gens, tmp_path / "sig")
    assert (
        result.examples == len(PROMPTS) and result.k == TOP
    )  # the chosen token is its own first alternative
    assert result.endpoint.mismatched_tokens == 0 and result.endpoint.notes == []
    signal = ByteSignal(result.store_dir)
    table = signal.table
    assert table.entries == sorted(table.entries) and not any(table.special)
    assert signal.key_inputs["rendering"] == {"api": "chat"}
    for row in load_generations(loopback_gens):
        answer = row["completion"].encode()
        assert row["completion"] == answer_text(PROMPTS[int(row["prompt_id"])], SEED, 0)
        stored = signal.rows(row["record_id"])
        # the spans tile the answer and the candidates of the chosen tokens spell it
        assert stored.spans[0, 0] == 0 and stored.spans[-1, 1] == len(answer)
        assert torch.equal(stored.spans[1:, 0], stored.spans[:-1, 1])
        assert b"".join(table.entries[int(t)] for t in stored.token_ids) == answer
        # every alternative comes back by its bytes, with its log-probability, in the server's order
        expected = _expected(row["completion"])
        assert len(stored.spans) == len(expected)
        for n, (token, ranked) in enumerate(expected):
            assert table.entries[int(stored.token_ids[n])] == token
            assert stored.token_logprobs[n] == torch.tensor(ranked[0][1], dtype=torch.float32)
            assert [table.entries[int(i)] for i in stored.topk_ids[n]] == [alt for alt, _ in ranked]
            assert torch.equal(
                stored.topk_logprobs[n], torch.tensor([v for _, v in ranked], dtype=torch.float32)
            )


@pytest.mark.parametrize("prompt", ["café au lait", "日本"])
def test_a_character_cut_over_two_tokens_gets_a_span_boundary_inside_it(loopback_gens, tmp_path, prompt):
    result = signal_bytes_from_generations(loopback_gens, tmp_path / "sig")
    signal = ByteSignal(result.store_dir)
    row = next(r for r in load_generations(loopback_gens) if r["prompt"] == prompt)
    stored = signal.rows(row["record_id"])
    answer = row["completion"].encode()
    char = next(c for c in row["completion"] if ord(c) > 127).encode()
    at = answer.index(char)
    ends = stored.spans[:, 1].tolist()
    n = ends.index(at + 1)  # one token ends after the character's first byte, the next starts there
    assert stored.spans[n + 1, 0] == at + 1 and stored.spans[n + 1, 1] >= at + len(char)
    first, second = (signal.table.entries[int(stored.token_ids[i])] for i in (n, n + 1))
    assert first.endswith(char[:1]) and second.startswith(char[1:])
    with pytest.raises(UnicodeDecodeError):
        first.decode()  # a piece of a character: only its bytes name it
    stored_text = json.loads(row["logprobs"])[n]["token"]
    assert stored_text.endswith("\ufffd")  # ... while the server's text of it is a replacement character


def test_render_with_through_llamacpp_style_completions_is_the_signals_rendering(tmp_path):
    from tests.fixtures.tiny_lm import train_tokenizer

    tokenizer = train_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tok")
    with ScriptedServer(completion_logprobs="content") as server:
        gens = _generate(server, tmp_path, prompts=PROMPTS[1:], render_with=str(tmp_path / "tok"))
        other = _generate(server, tmp_path, name="chat", prompts=PROMPTS[1:])
    sha = hashlib.sha256(tokenizer.chat_template.encode()).hexdigest()[:16]
    rendering = {"api": "completions", "kind": "chat_template", "template_sha256": sha}
    assert rendering_of_rows(gens) == rendering
    result = signal_bytes_from_generations(gens, tmp_path / "sig")
    assert ByteSignal(result.store_dir).key_inputs["rendering"] == rendering
    for row in load_generations(gens):  # the bytes came through the completions API too
        stored = ByteSignal(result.store_dir).rows(row["record_id"])
        assert stored.spans[-1, 1] == len(row["completion"].encode()) and len(stored.spans) == len(
            answer_tokens(row["completion"])
        )
    assert signal_bytes_from_generations(other, tmp_path / "sig2").key != result.key


# ---------------------------------------------------------------- hand-made rows


def _entry(token: str, logprob: float, top=(), *, data: bytes | None = None) -> dict:
    entry = {"token": token, "logprob": logprob, "top": [dict(t) for t in top]}
    if data is not None:
        entry["bytes"] = list(data)
    return entry


def _alt(token: str, logprob: float, data: bytes | None = None) -> dict:
    return {"token": token, "logprob": logprob, **({} if data is None else {"bytes": list(data)})}


def test_byte_rows_rank_deduplicate_and_pad_by_hand():
    tokens = read_entries(
        [
            _entry("H", -0.5, [_alt("H", -0.7), _alt("J", -1.0), _alt("J", -0.9), _alt("x", -math.inf)]),
            # no bytes sent: the UTF-8 of the text; an alternative without text is special
            _entry("é", -0.25, [_alt("", -2.0), _alt("\ufffd", -3.0, b"\xc3")]),
            _entry("", -0.1),  # an end-of-text token: no bytes, no row
        ],
        "rec-x",
    )
    assert [t.data for t in tokens] == [b"H", "é".encode(), b""]
    table, ids = candidate_table(tokens)
    # the one special entry, then every byte string seen (x too, though its -inf keeps it out of the rows)
    assert table.special == [True] + [False] * 5
    assert table.entries == [b"", b"H", b"J", b"x", b"\xc3", b"\xc3\xa9"]
    rows = byte_rows(tokens, ids, k=3)
    assert rows.spans.tolist() == [[0, 1], [1, 3]]
    assert rows.token_ids.tolist() == [1, 5] and rows.token_logprobs.tolist() == [-0.5, -0.25]
    # H: itself at its highest (-0.5), J at its highest (-0.9); -inf dropped; padded with -1 / -inf
    assert rows.topk_ids.tolist() == [[1, 2, -1], [5, 0, 4]]
    assert rows.topk_logprobs[0, :2].tolist() == pytest.approx([-0.5, -0.9])
    assert rows.topk_logprobs[0, 2] == -math.inf
    assert rows.topk_logprobs[1].tolist() == pytest.approx([-0.25, -2.0, -3.0])
    assert byte_rows(tokens, ids, k=1).topk_ids.tolist() == [[1], [5]]


def _rows(*answers_and_entries, chat_teacher: dict | None = None) -> list[dict]:
    rows = []
    for i, (answer, entries) in enumerate(answers_and_entries):
        row = generation_row(i, answer, logprobs=entries)
        if chat_teacher is not None:
            row["teacher"] = json.dumps(chat_teacher)
        rows.append(row)
    return rows


def _spelled(answer: str, cut: int | None = None) -> list[dict]:
    """Entries of `answer` one word each (the first `cut` of them only, when given)."""
    words = answer.split(" ")
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    return [_entry(p, -0.1 * (i + 1), [_alt(" the", -2.0)]) for i, p in enumerate(pieces[:cut])]


def test_mismatched_unusable_and_missing_rows_are_skipped_and_counted(tmp_path):
    rows = _rows(
        ("value of an object", _spelled("value of an object")),
        (
            "names refer to objects",
            _spelled("names refer to objects")[:2] + [_entry(" TO", -0.3)] + _spelled("x y z w")[3:],
        ),
        ("stripped answer", [_entry(" stripped", -0.1)]),  # a server that added a space: nothing agrees
        ("short", _spelled("short") + [_entry("", -0.05)]),  # a final token without bytes
        ("no logprobs", None),
    )
    gens = write_generations(tmp_path / "gens", 0, rows)
    result = signal_bytes_from_generations(gens, tmp_path / "sig")
    stats = result.endpoint
    assert (stats.rows_without_logprobs, stats.skipped_ids) == (1, ["rec-004"])
    assert (
        stats.unusable_rows == 1
        and stats.mismatched_rows == 2
        and stats.mismatched_ids == ["rec-001", "rec-002"]
    )
    assert stats.mismatched_tokens == 3 and stats.special_tokens == 1  # " TO", " w", " stripped"; end of text
    assert stats.notes and "rec-001" in stats.notes[0]
    signal = ByteSignal(result.store_dir)
    assert sorted(signal.store.ids()) == ["rec-000", "rec-001", "rec-003"] and result.examples == 3
    kept = signal.rows("rec-001")  # the prefix that spells the answer: "names refer"
    assert kept.spans.tolist() == [[0, 5], [5, 11]]
    assert len(signal.rows("rec-003").spans) == 1  # "short"; the end-of-text token has no row
    assert result.k == 2 and result.tokens == 4 + 2 + 1

    with pytest.raises(ValueError, match="no row has usable logprobs"):
        signal_bytes_from_generations(
            write_generations(tmp_path / "none", 0, rows[2:3] + rows[4:]), tmp_path / "s2"
        )


@pytest.mark.parametrize(
    "entries, problem",
    [
        ([{"token": "the", "top": []}], "'logprob'"),
        ([_entry("the", -0.1, data=b"the") | {"bytes": [116, 104, 300]}], "ints 0..255"),
        ([_entry("the", -0.1, [{"token": 3, "logprob": -1.0}])], "not a string"),
        ({"token": "the"}, "TypeError"),
    ],
)
def test_malformed_logprobs_name_the_row(tmp_path, entries, problem):
    rows = _rows(("the", _spelled("the")), ("the", entries))
    gens = write_generations(tmp_path / "gens", 0, rows)
    with pytest.raises(ValueError, match=rf"row 'rec-001': logprobs are not in the row format .*{problem}"):
        signal_bytes_from_generations(gens, tmp_path / "sig")
    assert not (tmp_path / "sig").exists()


class _Stop(Exception):
    pass


def test_a_killed_conversion_resumes_to_the_same_rows(tmp_path):
    answers = [" ".join(["object", "value", "identity"][: 1 + i % 3]) + f" {i}" for i in range(7)]
    gens = write_generations(tmp_path / "gens", 0, _rows(*[(a, _spelled(a)) for a in answers]))
    whole = signal_bytes_from_generations(gens, tmp_path / "whole", shard_examples=2)

    def stop_after_first_shard(done: int, total: int) -> None:
        if read_manifest(tmp_path / "cut")["shards"]:
            raise _Stop

    with pytest.raises(_Stop):
        signal_bytes_from_generations(
            gens, tmp_path / "cut", shard_examples=2, progress=stop_after_first_shard
        )
    partial = ByteSignal(tmp_path / "cut")
    assert len(partial) == 2 and not partial.store.complete
    resumed = signal_bytes_from_generations(gens, tmp_path / "cut", shard_examples=2)
    assert resumed.key == whole.key and (resumed.already, resumed.computed) == (2, 5)
    a, b = ByteSignal(tmp_path / "whole"), ByteSignal(tmp_path / "cut")
    assert b.store.complete and sorted(a.store.ids()) == sorted(b.store.ids()) and len(b) == 7
    assert (tmp_path / "whole" / "candidates.safetensors").read_bytes() == (
        tmp_path / "cut" / "candidates.safetensors"
    ).read_bytes()
    for example_id in a.store.ids():
        for x, y in zip(a.rows(example_id), b.rows(example_id), strict=True):
            assert torch.equal(x, y)
    again = signal_bytes_from_generations(gens, tmp_path / "cut", shard_examples=2)
    assert (again.already, again.computed) == (7, 0)


def test_the_key_follows_k_and_the_logprobs(tmp_path):
    answers = ["object value", "identity of names"]
    base_rows = _rows(*[(a, _spelled(a)) for a in answers])

    def key(rows, name, **kw):
        return signal_bytes_from_generations(
            write_generations(tmp_path / name, 0, rows), tmp_path / f"s-{name}", **kw
        ).key

    base = key(base_rows, "base")
    assert key(base_rows, "again") == base
    assert key(base_rows, "k1", k=1) != base
    changed = [dict(r) for r in base_rows]
    changed[1]["logprobs"] = json.dumps(
        _spelled(answers[1])[:1] + [_entry(" of", -0.9), _entry(" names", -0.3)]
    )
    assert key(changed, "lp") != base


def test_rendering_of_rows_is_shared_or_refused(tmp_path):
    old = write_generations(tmp_path / "old", 0, _rows(("a", None), ("b", None)))
    assert rendering_of_rows(old) is None  # rows from before the rendering was recorded
    chat = {"kind": "openai", "rendering": {"api": "chat"}}
    rows = _rows(("a", None), ("b", None), chat_teacher=chat)
    assert rendering_of_rows(write_generations(tmp_path / "chat", 0, rows)) == {"api": "chat"}
    rows[1]["teacher"] = json.dumps({"kind": "openai", "rendering": {"api": "completions", "kind": "plain"}})
    with pytest.raises(ValueError, match=r"rows 'rec-000' and 'rec-001' were rendered differently"):
        rendering_of_rows(write_generations(tmp_path / "mixed", 0, rows))


def test_endpoint_token_is_what_read_entries_gives():
    (token,) = read_entries(json.dumps([_entry("\ufffd", -0.2, [_alt("a", -1.0)], data=b"\xe6")]), "r")
    assert token == EndpointToken(b"\xe6", -0.2, ((b"a", -1.0),))
    assert read_entries(None, "r") is None and read_entries("[]", "r") is None
