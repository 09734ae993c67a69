"""The local Hugging Face teacher on a tiny model built offline: same rows, batching-invariant, logprobs."""

import json

import pytest
from tests.generate.helpers import write_jsonl

from kdistill.generate.config import GenerationConfig
from kdistill.generate.run import GenerationError, generate
from kdistill.generate.store import load_generations

CHAT = [{"role": "system", "content": "answer briefly"}, {"role": "user", "content": "What is a list?"}]
PROMPTS = [
    {"id": "a", "prompt": "The for statement"},
    {"id": "b", "messages": CHAT},
    {"id": "c", "prompt": "x"},
    {"id": "d", "prompt": "Exceptions are raised when a longer prompt than the others needs padding"},
    {"id": "e", "prompt": "The for statement"},  # a duplicate text under another id
]


def _config(model_dir, prompts, out, **overrides) -> GenerationConfig:
    teacher = {"kind": "hf_local", "model": str(model_dir), "batch_size": 4}
    teacher.update(overrides.pop("teacher", {}))
    data = {
        "prompts": prompts,
        "out": out,
        "teacher": teacher,
        "sampling": {"max_tokens": 6, "temperature": 0, "top_logprobs": 3},
        "allow_length": True,
    }
    data.update(overrides)
    return GenerationConfig.model_validate(data)


@pytest.mark.slow
def test_hf_teacher_rows_have_the_same_format(tiny_lm_dir, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    summary = generate(_config(tiny_lm_dir, prompts, tmp_path / "out"))
    assert (summary.committed, summary.missing, summary.rejected) == (5, 0, 0)
    ds = load_generations(tmp_path / "out")
    assert ds.column_names == [
        "record_id",
        "prompt_id",
        "sample_index",
        "prompt",
        "messages",
        "completion",
        "finish_reason",
        "teacher",
        "sampling",
        "prompt_tokens",
        "completion_tokens",
        "logprobs",
        "created",
    ]
    assert ds["prompt_id"] == ["a", "b", "c", "d", "e"]
    assert ds[1]["messages"] == CHAT and ds[1]["prompt"] is None
    teacher = json.loads(ds[0]["teacher"])
    assert teacher == {
        "kind": "hf_local",
        "model": str(tiny_lm_dir),
        "gguf_file": None,
        "revision": None,
        "dtype": "float32",
        "api": "chat",  # the tokenizer has a chat template, so auto = chat
    }
    assert ds[0]["completion"] == ds[4]["completion"]  # same text, greedy: same answer, separate records
    assert ds[0]["record_id"] != ds[4]["record_id"]
    for row in ds:
        assert row["finish_reason"] in ("stop", "length")
        assert isinstance(row["completion"], str) and row["prompt_tokens"] > 0
        entries = json.loads(row["logprobs"])
        assert len(entries) == row["completion_tokens"] <= 6
        for e in entries:
            top = e["top"]
            assert len(top) == 3 and [t["logprob"] for t in top] == sorted(
                (t["logprob"] for t in top), reverse=True
            )
            # greedy decoding picks the most likely token of the raw distribution
            assert (e["token"], e["logprob"]) == (top[0]["token"], top[0]["logprob"]) and e["logprob"] <= 0
        if row["finish_reason"] == "length":
            assert row["completion_tokens"] == 6


@pytest.mark.slow
def test_left_padded_batches_give_the_same_answers_as_one_at_a_time(tiny_lm_dir, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    generate(
        _config(tiny_lm_dir, prompts, tmp_path / "batched", sampling={"max_tokens": 12, "temperature": 0})
    )
    generate(
        _config(
            tiny_lm_dir,
            prompts,
            tmp_path / "single",
            teacher={"batch_size": 1},
            concurrency=1,
            sampling={"max_tokens": 12, "temperature": 0},
        )
    )
    batched = load_generations(tmp_path / "batched")
    single = load_generations(tmp_path / "single")
    assert batched["completion"] == single["completion"]
    assert batched["record_id"] == single["record_id"]  # batch size is not part of a record's identity


@pytest.mark.slow
def test_truncated_answers_are_rejects_unless_allowed_and_completions_api_takes_raw_text(
    tiny_lm_dir, tmp_path
):
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "The for statement"}, {"prompt": "x"}])
    allowed = generate(_config(tiny_lm_dir, plain, tmp_path / "a", teacher={"api": "completions"}))
    ds = load_generations(tmp_path / "a")
    truncated = ds["finish_reason"].count("length")
    assert allowed.committed == 2 and truncated >= 1  # a random tiny model rarely says EOS in 6 tokens
    assert json.loads(ds[1]["teacher"])["api"] == "completions"
    assert ds[1]["prompt_tokens"] == 1  # "x" as is, no chat template around it

    strict = generate(
        _config(tiny_lm_dir, plain, tmp_path / "s", teacher={"api": "completions"}, allow_length=False)
    )
    assert strict.reject_reasons == {"length": truncated} and strict.committed == 2 - truncated
    rejects = [json.loads(x) for x in (tmp_path / "s" / "rejects.jsonl").read_text().splitlines()]
    assert all(r["reason"] == "length" and r["finish_reason"] == "length" for r in rejects)

    chats = write_jsonl(tmp_path / "chat.jsonl", PROMPTS)
    with pytest.raises(
        GenerationError, match=r"chat.jsonl: line 2: a chat prompt .* teacher.api is 'completions'"
    ):
        generate(_config(tiny_lm_dir, chats, tmp_path / "c", teacher={"api": "completions"}))


def test_a_teacher_named_by_its_gguf_file_answers_as_its_folder_does(tiny_lm_dir, tmp_path):
    """`kdistill generate` reads teacher references as every other command does (a GGUF file here)."""
    from tests.fixtures.tiny_gguf import write_tiny_gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (tmp_path / "gguf").mkdir()
    gguf = write_tiny_gguf(
        tmp_path / "gguf" / "teacher.F32.gguf",
        AutoModelForCausalLM.from_pretrained(tiny_lm_dir),
        AutoTokenizer.from_pretrained(tiny_lm_dir),
    )
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS[2:4])
    generate(_config(tiny_lm_dir, prompts, tmp_path / "by-folder"))
    generate(_config(gguf, prompts, tmp_path / "by-gguf"))
    assert (
        load_generations(tmp_path / "by-gguf")["completion"]
        == load_generations(tmp_path / "by-folder")["completion"]
    )
    teacher = json.loads(load_generations(tmp_path / "by-gguf")[0]["teacher"])
    assert (teacher["model"], teacher["gguf_file"]) == (str(gguf.parent), "teacher.F32.gguf")
    with pytest.raises(GenerationError, match=r"^teacher\.model 'pkg:no_such_kdistill_pkg': package"):
        generate(_config("pkg:no_such_kdistill_pkg", prompts, tmp_path / "none"))
