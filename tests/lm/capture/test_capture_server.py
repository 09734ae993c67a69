"""Scoring existing answers through a server (`kdistill.lm.capture_server`) against the loopback server's
echo contract (tests/fixtures/openai_server.py): rows equal what the server said, resume, retries, errors."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from tests.fixtures.openai_server import Fault, ScriptedServer, echo_logprobs
from tests.lm.capture.helpers import generation_row, write_config, write_generations

from kdistill.generate.store import load_generations
from kdistill.generate.teachers.retry import RetryPolicy
from kdistill.lm.byte_signal import ByteSignal
from kdistill.lm.capture import TokenMap
from kdistill.lm.capture_server import (
    ScoringServer,
    ServerScoringError,
    answer_entries,
    capture_from_server,
    prompt_text,
    scoring_request,
)
from kdistill.lm.sft_data import IGNORE_INDEX, encode_completion, tokenize_row
from kdistill.lm.signal_store import TeacherSignal

K = 3
FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02)


def _our_split(tokenizer):
    """The server cuts text as our tokenizer does (a teacher with the student's tokenizer)."""

    def split(text: str) -> list[str]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]

    return split


def _words(text: str) -> list[str]:
    """A server whose tokens are words, runs of punctuation and of white space (its own tokenizer)."""
    return re.findall(r" ?\w+| ?[^\w\s]+|\s+", text)


def _capture(gens, tokenizer, tmp_path, server, name="sig", **kwargs):
    return capture_from_server(
        gens,
        tokenizer,
        tmp_path / name,
        server=ScoringServer(base_url=server.base_url, model="m", concurrency=kwargs.pop("concurrency", 4)),
        max_length=256,
        k=K,
        scores_dir=tmp_path / f"{name}.scores",
        retry=FAST,
        **kwargs,
    )


def _said(text: str, start: int, split) -> list[tuple[str, float, dict[str, float]]]:
    """What the contract says about the tokens of `text` from character `start` on."""
    tokens = split(text)
    lp = echo_logprobs(tokens, K)
    return [
        (t, lp["token_logprobs"][n], lp["top_logprobs"][n])
        for n, t in enumerate(tokens)
        if lp["text_offset"][n] >= start
    ]


def test_scored_answers_become_the_contracts_rows_aligned_with_the_sft_examples(
    gens_dir, tokenizer, tmp_path
):
    split = _our_split(tokenizer)
    with ScriptedServer(echo_tokenize=split) as server:
        result = _capture(gens_dir, tokenizer, tmp_path, server)
        bodies = [r.body for r in server.requests]
    assert all(b["echo"] is True and b["logprobs"] == K and b["max_tokens"] == 0 for b in bodies)
    signal = TeacherSignal(result.store_dir)
    token_map = TokenMap(tokenizer)
    rows = list(load_generations(gens_dir))
    assert len(signal) == len(rows) == result.examples and result.endpoint.mismatched_tokens == 0
    for row in rows:
        example, _, _ = tokenize_row(tokenizer, row, max_length=256)
        prompt = prompt_text(tokenizer, row)
        said = _said(prompt + row["completion"], len(prompt), split)
        answer_ids = encode_completion(tokenizer, row["completion"])[:-1]  # the eos is not scored
        assert [token_map.id_of(t) for t, _, _ in said] == answer_ids
        ids, logprobs, valid = signal[row["record_id"]]
        assert len(valid) == len(example["input_ids"])
        start = sum(1 for label in example["labels"] if label == IGNORE_INDEX)
        expected_valid = torch.zeros(len(valid), dtype=torch.bool)
        expected_valid[start - 1 : start - 1 + len(answer_ids)] = True
        assert torch.equal(valid, expected_valid)  # the answer's rows only (not the prompt's, not eos's)
        for j, (_, lp, top) in enumerate(said):
            entries = {answer_ids[j]: lp}
            for text, value in sorted(top.items(), key=lambda kv: -kv[1]):
                mapped = token_map.id_of(text)
                if mapped is not None and mapped not in entries:
                    entries[mapped] = value
            ranked = sorted(entries.items(), key=lambda kv: (-kv[1], kv[0]))[:K]
            row_ = start - 1 + j
            got = [(int(i), float(v)) for i, v in zip(ids[row_], logprobs[row_], strict=True) if int(i) >= 0]
            assert got == [(i, pytest.approx(v)) for i, v in ranked]


def test_cross_tokenizer_rows_are_the_servers_tokens_by_bytes(tmp_path, tokenizer):
    answers = ["the café is open", "names refer to objects"]
    gens = write_generations(tmp_path / "gens", 0, [generation_row(i, a) for i, a in enumerate(answers)])
    with ScriptedServer(echo_tokenize=_words) as server:
        result = _capture(gens, tokenizer, tmp_path, server, cross_tokenizer=True)
    signal = ByteSignal(result.store_dir)
    table = signal.table
    assert (
        signal.key_inputs["rendering"]["kind"] == "chat_template" and result.endpoint.mismatched_tokens == 0
    )
    for row in load_generations(gens):
        prompt = prompt_text(tokenizer, row)
        said = _said(prompt + row["completion"], len(prompt), _words)
        stored = signal.rows(row["record_id"])
        assert [table.entries[int(t)] for t in stored.token_ids] == [t.encode() for t, _, _ in said]
        assert b"".join(table.entries[int(t)] for t in stored.token_ids) == row["completion"].encode()
        for n, (_, lp, top) in enumerate(said):
            best: dict[bytes, float] = {}
            for text, value in top.items():
                best[text.encode()] = max(value, best.get(text.encode(), -math.inf))
            ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:K]
            assert float(stored.token_logprobs[n]) == pytest.approx(lp)
            assert [table.entries[int(i)] for i in stored.topk_ids[n]] == [b for b, _ in ranked]
            assert stored.topk_logprobs[n].tolist() == pytest.approx([v for _, v in ranked])


def test_a_capture_killed_mid_scoring_resumes_to_the_same_store_asking_once_per_row(
    gens_dir, tokenizer, tmp_path
):
    split = _our_split(tokenizer)
    with ScriptedServer(echo_tokenize=split) as server:
        whole = _capture(gens_dir, tokenizer, tmp_path, server, name="whole")
        server.clear()

        def killer(done: int, total: int) -> None:
            if done >= 4:
                raise KeyboardInterrupt  # as Ctrl-C would, after a group was committed

        with pytest.raises(KeyboardInterrupt):
            _capture(gens_dir, tokenizer, tmp_path, server, name="cut", concurrency=2, progress=killer)
        assert not (tmp_path / "cut" / "manifest.json").exists()  # killed before the conversion
        scored = len(list(load_generations(tmp_path / "cut.scores")))
        assert scored == 4
        seen: list[tuple[int, int]] = []
        resumed = _capture(
            gens_dir,
            tokenizer,
            tmp_path,
            server,
            name="cut",
            concurrency=2,
            progress=lambda d, t: seen.append((d, t)),
        )
        prompts = [r.key for r in server.requests]
    assert seen[0] == (4, 14) and seen[-1] == (14, 14)
    assert len(prompts) == len(set(prompts)) == 14  # every row asked for exactly once over both runs
    a, b = TeacherSignal(whole.store_dir), TeacherSignal(resumed.store_dir)
    assert a.key == b.key and a.ids() == b.ids()
    for record_id in a.ids():
        for x, y in zip(a[record_id], b[record_id], strict=True):
            assert torch.equal(x, y)


def test_server_errors_are_retried_and_a_row_whose_retries_run_out_is_named(gens_dir, tokenizer, tmp_path):
    rows = list(load_generations(gens_dir))
    texts = [prompt_text(tokenizer, r) + r["completion"] for r in rows]
    with ScriptedServer(echo_tokenize=_our_split(tokenizer)) as server:
        server.script(texts[0], [Fault.status(503), Fault.drop()])
        server.script(texts[1], [Fault.status(429, retry_after=0)])
        result = _capture(gens_dir, tokenizer, tmp_path, server)
        assert server.count(texts[0]) == 3 and server.count(texts[1]) == 2
        assert len(TeacherSignal(result.store_dir)) == len(rows)

        server.script(texts[2], [Fault.status(400)])  # not retried
        with pytest.raises(
            ServerScoringError, match=rf"row '{rows[2]['record_id']}': http_400 after 1 attempts"
        ):
            _capture(gens_dir, tokenizer, tmp_path, server, name="again")
        server.script(texts[3], [Fault.malformed()])
        with pytest.raises(ServerScoringError, match="breaks the contract"):
            _capture(gens_dir, tokenizer, tmp_path, server, name="third")


def test_answer_entries_keep_the_answers_tokens_and_the_bytes_of_a_partial_character():
    text = "ab cd ef"
    body = {
        "choices": [
            {
                "text": text + " gen0",
                "logprobs": {
                    "tokens": ["ab", " cd", " e", "bytes:\\xc3", " gen0"],
                    "token_logprobs": [None, -1.0, -2.0, -3.0, -4.0],
                    "top_logprobs": [
                        None,
                        {" cd": -1.0},
                        {" e": -2.0, " x": -2.5},
                        {"bytes:\\xc3": -3.0},
                        {},
                    ],
                    "text_offset": [0, 2, 5, 7, 8],
                },
            }
        ]
    }
    entries = answer_entries(body, start=3, end=len(text))  # " cd" starts before the answer "cd ef"
    assert [e["token"] for e in entries] == [" e", "\ufffd"]
    assert entries[0]["top"] == [{"token": " e", "logprob": -2.0}, {"token": " x", "logprob": -2.5}]
    assert entries[1]["bytes"] == [0xC3] and entries[1]["top"][0]["bytes"] == [0xC3]
    with pytest.raises(ValueError, match="no prompt log-probs"):
        answer_entries({"choices": [{"text": text, "logprobs": None}]}, start=0, end=len(text))
    assert scoring_request("x", model="m", k=2)["echo"] is True


def test_llama_cpp_python_echo_is_read_one_entry_earlier_with_offsets_from_the_tokens():
    """llama-cpp-python's echo puts at token i the distribution of token i+1 (plus token i itself under
    it), and its offsets skip special tokens' text: the same answer in the standard form and in that form
    gives the same entries."""
    dists = [None, None, {" b": -0.1, " x": -2.0}, {" c": -0.5, " y": -1.0}, {" d": -0.2}]  # of each token
    tokens = ["<s>", "a", " b", " c", " d"]
    standard = {
        "tokens": tokens,
        "token_logprobs": [None, None, -0.1, -0.5, -0.2],
        "top_logprobs": dists,
        "text_offset": [0, 3, 4, 6, 8],
    }
    llama = {  # entry i: the distribution of token i+1, with token i's string added under it
        "tokens": ["", *tokens[1:]],  # a special token is spelled "", and its text is not counted
        "token_logprobs": [None, None, -9.0, -8.0, -7.0],
        "top_logprobs": [
            None,
            {**dists[2], "a": -6.0},
            {**dists[3], " b": -9.0},
            {**dists[4], " c": -8.0},
            {},
        ],
        "text_offset": [0, 0, 1, 3, 5],
    }

    def body(logprobs):
        return {"choices": [{"text": "<s>a b c d", "logprobs": logprobs}]}

    want = answer_entries(body(standard), start=6, end=10)  # " c", " d"
    got = answer_entries(body(llama), start=6, end=10, dialect="llama-cpp-python")
    assert [e["token"] for e in got] == [" c", " d"] and got[0]["logprob"] == -0.5
    assert [g["top"][: len(w["top"])] for g, w in zip(got, want, strict=True)] == [w["top"] for w in want]
    assert [e["token"] for e in answer_entries(body(llama), start=0, end=10, dialect="llama-cpp-python")] == [
        " b",
        " c",
        " d",
    ]  # "a": the first echoed entry holds nothing
    llama["top_logprobs"][2] = {" z": -0.1}  # " c" not among the candidates of its position
    assert answer_entries(body(llama), start=6, end=8, dialect="llama-cpp-python")[0]["logprob"] == -math.inf
    # read as the contract says, the offsets put " c" outside the answer and the distributions are off
    assert [e["token"] for e in answer_entries(body(llama), start=6, end=10)] == []
    # a text that starts with BOS: the server drops it from the tokens but not from the logits, which pairs
    # each token with its own distribution again; only the offsets need fixing
    aligned = {**standard, "tokens": ["", *tokens[1:]], "text_offset": [0, 0, 1, 3, 5]}
    assert (
        answer_entries(body(aligned), start=6, end=10, dialect="llama-cpp-python", starts_with_bos=True)
        == want
    )


# ---------------------------------------------------------------- config and CLI


def test_base_url_flag_scores_through_the_server(tmp_path, model_dir, gens_dir, tokenizer):
    from tests.lm.capture.cli_main import cli_app
    from typer.testing import CliRunner

    cfg = write_config(
        tmp_path / "c.yaml",
        teacher={"model": str(model_dir)},
        data={"generations": str(gens_dir)},
        top_k=K,
        max_length=256,
        out=str(tmp_path / "sig"),
        server={"scores_dir": str(tmp_path / "scores")},
    )
    with ScriptedServer(echo_tokenize=_our_split(tokenizer)) as server:
        result = CliRunner().invoke(cli_app(), ["capture", str(cfg), "--base-url", server.base_url, "--json"])
        assert result.exit_code == 0, result.output
        assert {r.body["model"] for r in server.requests} == {str(model_dir)}  # server.model defaults to it
    summary = json.loads(result.stdout)
    assert summary["examples"] == 14 and summary["computed_tokens"] > 0
    assert TeacherSignal(tmp_path / "sig").key_inputs["source"] == "endpoint"


@pytest.mark.parametrize(
    ("capture", "expected"),
    [
        ({"source": "server", "data": {"generations": "g"}}, "server.base_url: required with source server"),
        (
            {"source": "server", "server": {"base_url": "http://h/v1"}, "data": {"texts": "t"}},
            "set data.generations",
        ),
        (
            {
                "source": "server",
                "server": {"base_url": "http://h/v1", "max_tokens": 2},
                "data": {"generations": "g"},
            },
            "capture.server.max_tokens",
        ),
        (
            {
                "source": "server",
                "server": {"base_url": "http://h/v1"},
                "data": {"generations": "g"},
                "shard": "0/2",
            },
            "shard: splits the teacher's work; source server runs no model",
        ),
    ],
)
def test_a_bad_server_config_names_the_field(tmp_path, capture, expected):
    from tests.lm.capture.cli_main import cli_app
    from typer.testing import CliRunner

    cfg = write_config(tmp_path / "bad.yaml", teacher={"model": "m"}, **capture)
    result = CliRunner().invoke(cli_app(), ["capture", str(cfg)])
    assert result.exit_code == 2 and expected in result.stderr, result.output
