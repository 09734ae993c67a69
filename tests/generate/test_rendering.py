"""How the teacher's prompt was rendered is recorded with every row; `render_with` renders it here.

A signal distilled from an endpoint is conditioned on the prompt the teacher saw: the server's own chat
template (unknown), the plain text, or a chat template we apply (`teacher.render_with`, sent through
/completions) whose hash the rows keep.
"""

import hashlib
import json

import pytest
from tests.fixtures.openai_server import answer_text
from tests.generate.helpers import write_jsonl

from kdistill.generate.config import GenerationConfig, load_generation_config
from kdistill.generate.prompts import Prompt
from kdistill.generate.records import record_id
from kdistill.generate.run import GenerationError, generate
from kdistill.generate.store import load_generations
from kdistill.generate.teachers.openai_endpoint import parse_body
from kdistill.schema import ConfigError

FAST_RETRY = {"base_delay_s": 0.01, "max_delay_s": 0.05, "max_attempts": 2}
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]


def _config(server, prompts, out, **teacher) -> GenerationConfig:
    data = {
        "prompts": prompts,
        "out": out,
        "teacher": {"base_url": server.base_url, "model": "m", "api_key_env": None, **teacher},
        "retry": FAST_RETRY,
        "sampling": {"top_logprobs": 2, "seed": 3},
    }
    return GenerationConfig.model_validate(data)


@pytest.fixture(scope="module")
def template_dir(tmp_path_factory):
    """A tokenizer with the tiny chat template, saved like a model directory (no model needed)."""
    from tests.fixtures.tiny_lm import train_tokenizer

    path = tmp_path_factory.mktemp("render") / "tok"
    train_tokenizer().save_pretrained(path)
    return path


def _teacher(row) -> dict:
    return json.loads(row["teacher"])


def test_default_rendering_is_recorded_and_record_ids_do_not_change(server, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "plain"}])
    generate(_config(server, prompts, tmp_path / "chat"))
    generate(_config(server, prompts, tmp_path / "cmpl", api="completions"))
    chat, cmpl = load_generations(tmp_path / "chat")[0], load_generations(tmp_path / "cmpl")[0]
    assert _teacher(chat)["rendering"] == {"api": "chat"}
    assert _teacher(cmpl)["rendering"] == {"api": "completions", "kind": "plain"}
    # the record id hashes the identity as before the rendering was recorded: old rows are still found
    sampling = json.loads(chat["sampling"])
    for row in (chat, cmpl):
        identity = {key: v for key, v in _teacher(row).items() if key != "rendering"}
        assert row["record_id"] == record_id(Prompt(id="a", prompt="plain"), identity, sampling, 0)
    assert server.count() == 2
    generate(_config(server, prompts, tmp_path / "chat"))  # a rerun finds the row: nothing sent
    assert server.count() == 2


def test_render_with_sends_the_rendered_chat_through_completions(server, template_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(template_dir)
    prompts = write_jsonl(
        tmp_path / "p.jsonl", [{"id": "a", "prompt": "plain"}, {"id": "b", "messages": CHAT}]
    )
    summary = generate(_config(server, prompts, tmp_path / "out", render_with=str(template_dir)))
    assert summary.committed == 2

    rendered = {
        "a": tokenizer.apply_chat_template(
            [{"role": "user", "content": "plain"}], tokenize=False, add_generation_prompt=True
        ),
        "b": tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True),
    }
    assert rendered["b"].endswith("<|bos|>assistant:") and "system: be brief" in rendered["b"]
    sent = sorted((r.path, r.body["prompt"]) for r in server.requests)
    assert sent == sorted(("/v1/completions", text) for text in rendered.values())
    assert all("messages" not in r.body for r in server.requests)

    sha = hashlib.sha256(tokenizer.chat_template.encode()).hexdigest()[:16]
    rows = {r["prompt_id"]: r for r in load_generations(tmp_path / "out")}
    for prompt_id, row in rows.items():
        assert row["completion"] == answer_text(rendered[prompt_id], 3, 0)  # the answer to the rendered text
        assert _teacher(row)["api"] == "completions"
        assert _teacher(row)["rendering"] == {
            "api": "completions",
            "kind": "chat_template",
            "template_sha256": sha,
        }
    assert rows["b"]["messages"] == CHAT  # the row keeps the prompt as given, the student renders it alike

    # the template is part of the record id: the server's own rendering is another record
    generate(_config(server, prompts, tmp_path / "chat"))
    chat_ids = set(load_generations(tmp_path / "chat")["record_id"])
    assert chat_ids.isdisjoint(r["record_id"] for r in rows.values())


def test_render_with_needs_the_completions_api_and_a_chat_template(server, tmp_path):
    from tests.fixtures.tiny_lm import train_tokenizer

    base = {"prompts": "p.jsonl", "out": "o", "teacher": {"model": "m", "render_with": "t"}}
    assert load_generation_config(None, base).teacher.render_with == "t"  # api auto: fine
    with pytest.raises(
        ConfigError, match=r"generation.teacher: render_with sends the rendered text through the completions"
    ):
        load_generation_config(None, {**base, "teacher": {"model": "m", "api": "chat", "render_with": "t"}})

    plain = tmp_path / "plain-tok"
    train_tokenizer(chat_template=False).save_pretrained(plain)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}])
    with pytest.raises(
        GenerationError, match=r"teacher.render_with '.*plain-tok': the tokenizer has no chat template"
    ):
        generate(_config(server, prompts, tmp_path / "out", render_with=str(plain)))
    with pytest.raises(GenerationError, match=r"teacher.render_with '.*missing': no such directory"):
        generate(_config(server, prompts, tmp_path / "out", render_with=str(tmp_path / "missing")))
    assert server.count() == 0


def test_token_bytes_are_kept_in_both_logprob_forms():
    """Chat logprobs and llama.cpp's /completions (the same "content" form) keep `bytes`; absent stays absent."""
    piece = {
        "token": "\ufffd",
        "logprob": -0.5,
        "bytes": [0xC3],
        "top_logprobs": [{"token": "a", "logprob": -1.0}],
    }
    for chat in (True, False):
        text = {"message": {"role": "assistant", "content": "x"}} if chat else {"text": "x"}
        body = {"choices": [{"index": 0, "finish_reason": "stop", **text, "logprobs": {"content": [piece]}}]}
        (choice,) = parse_body(json.dumps(body).encode(), chat=chat).choices
        assert choice.problem is None
        assert choice.logprobs == [
            {"token": "\ufffd", "logprob": -0.5, "bytes": [0xC3], "top": [{"token": "a", "logprob": -1.0}]}
        ]
    bad = {**piece, "bytes": [256]}
    body = {"choices": [{"index": 0, "finish_reason": "stop", "text": "x", "logprobs": {"content": [bad]}}]}
    assert parse_body(json.dumps(body).encode(), chat=False).choices[0].problem == "unparsable_logprobs"
