"""A `task: lm` run with a `verify:` section end to end on a tiny model: verdicts, the teacher's pass@k,
curated data arms (verified rationale, unfiltered, multitask) trained for the same steps, the students'
verified accuracy on held-out problems, the report's tables, and a rerun that verifies nothing again."""

import json
from math import comb

import pytest
from tests.fixtures.tiny_lm import tiny_llama, train_tokenizer

from kdistill.config import parse_config
from kdistill.generate.store import GenerationStore
from kdistill.lm.recipe import run_lm, split_rows
from kdistill.verify.store import JOURNAL

PROMPTS, SAMPLES, HELD_OUT = 12, 4, 4


def _right(p: int, s: int) -> bool:
    return s < p % (SAMPLES + 1)  # prompt p: p % 5 right answers of 4 (4 for p % 5 == 4)


def _row(p: int, s: int) -> dict:
    a, b = p + 1, 2 * p + 3
    value = a + b if _right(p, s) else a + b + 1 + s
    return {
        "record_id": f"r{p}-{s}",
        "prompt_id": f"q{p}",
        "sample_index": s,
        "prompt": f"What is {a} + {b}?",
        "messages": None,
        "completion": f"Attempt {s}: {a} plus {b} gives {value}, counting up from {a}.\nAnswer: {value}",
        "finish_reason": "stop",
        "teacher": "{}",
        "sampling": "{}",
        "prompt_tokens": None,
        "completion_tokens": None,
        "logprobs": None,
        "created": "2026-12-02T00:00:00.000Z",
    }


@pytest.fixture(scope="module")
def reasoning_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reasoning")
    tok = train_tokenizer(512)
    model = tiny_llama(len(tok), hidden=32, layers=4)
    model.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    rows = [_row(p, s) for p in range(PROMPTS) for s in range(SAMPLES)]
    store = GenerationStore(root / "gens")
    store.open()
    store.append_rows(rows)
    store.close()
    problems = root / "problems.jsonl"
    problems.write_text(
        "".join(
            json.dumps({"id": f"q{p}", "prompt": f"What is {p + 1} + {2 * p + 3}?", "answer": 3 * p + 4})
            + "\n"
            for p in range(PROMPTS)
        )
    )
    return root, rows, problems


def _config(root, problems, **verify):
    return parse_config(
        {
            "task": "lm",
            "name": "tiny-reasoning",
            "threads": 1,
            "teacher": {"model": str(root / "teacher")},
            "prompts": {"file": str(problems), "generations": str(root / "gens"), "held_out": HELD_OUT},
            "generation": {"max_new_tokens": 12, "batch_size": 4},
            "student": {"keep_layers": 2, "calibration_texts": 4},
            "train": {"epochs": 1, "micro_batch_size": 4, "grad_accum": 1, "lr": 2e-3, "max_length": 64},
            "evaluation": {"batch_size": 4, "max_new_tokens": 12},
            "verify": {
                "prompts": str(problems),
                "verifiers": [{"name": "answer_match", "mode": "numeric"}],
                "dedup": {"enabled": False},
                "train_on": "rationale",
                "compare_with": ["unfiltered", "multitask"],
                **verify,
            },
        }
    )


def test_a_verified_reasoning_run_trains_three_students_on_their_data_and_reports_pass_at_k(
    tmp_path, reasoning_setup
):
    root, rows, problems = reasoning_setup
    cfg = _config(root, problems)
    with pytest.raises(RuntimeError, match="stopped early"):  # killed during the first student's training
        run_lm(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache", stop_after=1)
    result = run_lm(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    train, held = split_rows([dict(r) for r in rows], HELD_OUT, cfg.prompts.split_seed)

    def pass_at(part, k):  # the closed form over the crafted counts
        prompts = sorted({r["prompt_id"] for r in part})
        counts = [sum(_right(int(p[1:]), s) for s in range(SAMPLES)) for p in prompts]
        return sum(1 - comb(SAMPLES - c, k) / comb(SAMPLES, k) for c in counts) / len(counts)

    reasoning = metrics["reasoning"]
    for name, part in (("train", train), ("held_out", held)):
        for k in (1, 2, 4):
            assert reasoning["teacher"][name][f"pass@{k}"] == pytest.approx(pass_at(part, k))
    right_train = sum(_right(int(r["prompt_id"][1:]), r["sample_index"]) for r in train)
    arms = {a["name"]: a for a in reasoning["arms"]}
    assert arms["verified"]["rows"] == right_train  # every right answer, none of the wrong ones
    assert arms["unfiltered"]["rows"] == len(train)
    assert arms["multitask"]["rows"] == 2 * right_train  # an answer task and a rationale task per answer
    # held-out questions are not training questions here, so decontamination removes nothing
    assert all(
        f["removed"] == 0 for a in reasoning["arms"] for f in a["filters"] if f["name"] == "decontaminate"
    )

    models = {m["role"]: m for m in metrics["models"]}
    assert set(models) == {"teacher", "before", "data-unfiltered", "data-multitask", "distilled"}
    for m in models.values():
        v = m["verified"]
        assert v["problems"] == HELD_OUT and 0 <= v["correct"] <= HELD_OUT
        assert v["accuracy"] == pytest.approx(v["correct"] / HELD_OUT) and m["accuracy"] == v["accuracy"]
    assert (result.run_dir / "jobs" / "data-unfiltered" / "done.json").exists()
    steps = {
        json.loads((result.run_dir / "jobs" / j / "done.json").read_text())["steps"]
        for j in ("sft", "data-unfiltered", "data-multitask")
    }
    assert len(steps) == 1  # the same steps for every student
    html = (result.run_dir / "report.html").read_text()
    assert "The teacher's answers, verified" in html and "pass@4" in html and "held-out solved" in html

    # the resumed run verified nothing again: every verdict was stored once, by the first attempt
    assert reasoning["verification"]["computed"] == 0 and reasoning["verification"]["reused"] == len(rows)
    assert len((result.run_dir / "verdicts" / JOURNAL).read_bytes().splitlines()) == len(rows)


def test_train_on_answer_needs_answer_match():
    from kdistill.config import ConfigError

    with pytest.raises(ConfigError, match="answer_match"):
        parse_config(
            {
                "task": "lm",
                "verify": {"verifiers": [{"name": "json_schema", "schema": {}}], "train_on": "multitask"},
            }
        )
    with pytest.raises(ConfigError, match="white-box signals on verified answers are not supported yet"):
        parse_config(
            {
                "task": "lm",
                "distill": {"signal": "cached"},
                "verify": {"verifiers": [{"name": "answer_match"}]},
            }
        )
    with pytest.raises(ConfigError, match="generation.samples > 1 needs"):
        parse_config({"task": "lm", "generation": {"samples": 4}})
