"""The verifier registry: names, config errors that name the field, the columns each needs, and built
callables that decide exactly as the plain functions do."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel
from tests.fixtures.openai_server import Fault, ScriptedServer

from kdistill.schema import ConfigError
from kdistill.verify import VERIFIERS, answer_match, json_schema, judge, python_tests, verifier_from_config


def test_names_listed():
    assert VERIFIERS.names() == ["answer_match", "json_schema", "judge", "python_tests"]
    for name in VERIFIERS:
        spec = VERIFIERS.get(name)
        assert spec.name == name and isinstance(spec.version, int) and spec.version >= 1
        assert VERIFIERS.summary(name) == spec.summary != ""
        assert issubclass(spec.config_model, BaseModel)
        assert spec.config_model.model_config.get("extra") == "forbid"


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="unknown verifier 'answer_mtch'; did you mean 'answer_match'"):
        verifier_from_config({"name": "answer_mtch"})


@pytest.mark.parametrize("data", [{}, {"name": 3}, {"mode": "numeric"}])
def test_missing_name_lists_the_names(data):
    with pytest.raises(
        ConfigError, match="name: required, one of answer_match, json_schema, judge, python_tests"
    ):
        verifier_from_config(data)


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"name": "answer_match", "mode": "fuzzy"}, "mode", "Input should be"),
        ({"name": "answer_match", "rel_tol": -1}, "rel_tol", "greater than or equal to 0"),
        ({"name": "answer_match", "pattern": "(a)(b)"}, "pattern", "exactly one group"),
        ({"name": "answer_match", "tolerance": 0.1}, "tolerance", "unknown key"),
        ({"name": "python_tests", "timeout_s": 0}, "timeout_s", "greater than 0"),
        ({"name": "python_tests", "memory_mb": "lots"}, "memory_mb", "valid integer"),
        ({"name": "json_schema", "schema": {"type": "objekt"}}, "schema", "invalid JSON Schema"),
        ({"name": "json_schema"}, "(top level)", "exactly one of schema and schema_column"),
        ({"name": "judge", "base_url": "http://x/v1", "model": "m"}, "rubric", "required field missing"),
        (
            {"name": "judge", "base_url": "u", "model": "m", "rubric": "r", "threshold": 11},
            "threshold",
            "less than",
        ),
    ],
)
def test_bad_option_names_the_field(data, field, message):
    with pytest.raises(ConfigError) as caught:
        verifier_from_config(data)
    line = str(caught.value).splitlines()[0]
    assert line.startswith(f"verifier {data['name']}: {field}: ") and message in line


def test_columns():
    def columns(data):
        spec, config = verifier_from_config(data)
        return spec.columns(config)

    assert columns({"name": "answer_match"}) == ("answer",)
    assert columns({"name": "answer_match", "reference_column": "solution"}) == ("solution",)
    assert columns({"name": "python_tests"}) == ("tests",)
    assert columns({"name": "json_schema", "schema": {"type": "object"}}) == ()
    assert columns({"name": "json_schema", "schema_column": "schema"}) == ("schema",)
    judge_config = {"name": "judge", "base_url": "http://x/v1", "model": "m", "rubric": "r"}
    assert columns(judge_config) == ("prompt",)
    assert columns({**judge_config, "reference_column": "gold"}) == ("prompt", "gold")


def build(data):
    spec, config = verifier_from_config(data)
    return spec.build(config)


ANSWER_CASES = [
    ("so \\boxed{42}", "42"),
    ("Answer: 41", 42),
    ("\\boxed{2, 1}", [1, 2]),
    ("no number", "7"),
    ("Answer: 0.3333", "1/3"),
]


OPTIONS = [{}, {"mode": "normalized"}, {"rel_tol": 1e-3}, {"pattern": r"Answer: (\S+)"}]


@pytest.mark.parametrize(
    ("answer", "reference", "options"),
    [
        (answer, reference, options)
        for answer, reference in ANSWER_CASES
        for options in OPTIONS
        if not (options.get("mode") == "normalized" and isinstance(reference, list))  # one value only
    ],
)
def test_answer_match_built_equals_plain(answer, reference, options):
    check = build({"name": "answer_match", "reference_column": "gold", **options})
    assert check(answer, {"prompt": "q", "gold": reference}) == answer_match(answer, reference, **options)


def test_python_tests_built_equals_plain():
    check = build({"name": "python_tests", "timeout_s": 5, "memory_mb": 256})
    code = "```python\ndef sq(x):\n    return x * x\n```"
    for tests in ["assert sq(3) == 9", "assert sq(3) == 6"]:
        built = check(code, {"prompt": "q", "tests": tests})
        plain = python_tests(code, tests, timeout_s=5, memory_mb=256)
        assert (built.ok, built.reason, built.extracted) == (plain.ok, plain.reason, plain.extracted)
        assert built.detail == plain.detail
    lines = check(code, {"prompt": "q", "tests": ["assert sq(2) == 4", "assert sq(0) == 0"]})
    assert lines.reason == "tests_passed"  # a list of statements is joined into one test program


def test_json_schema_built_equals_plain_with_a_fixed_or_a_per_row_schema():
    schema = {"type": "object", "required": ["a"]}
    fixed = build({"name": "json_schema", "schema": schema})
    per_row = build({"name": "json_schema", "schema_column": "schema"})
    for answer in ['{"a": 1}', '{"b": 1}', "not json"]:
        plain = json_schema(answer, schema)
        assert fixed(answer, {"prompt": "q"}) == plain
        assert per_row(answer, {"prompt": "q", "schema": schema}) == plain
        assert per_row(answer, {"prompt": "q", "schema": json.dumps(schema)}) == plain


def test_judge_built_equals_plain(monkeypatch):
    monkeypatch.setenv("KDISTILL_JUDGE_TEST_KEY", "k")
    with ScriptedServer() as server:
        options = {"base_url": server.base_url, "model": "m", "rubric": "be right", "threshold": 5.0}
        check = build(
            {"name": "judge", "api_key_env": "KDISTILL_JUDGE_TEST_KEY", **options, "reference_column": "gold"}
        )
        for text in ["Score: 6", "Score: 4", "no score"]:
            body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
            server.fault_all = Fault.status(200, body=json.dumps(body))
            built = check("an answer", {"prompt": "a question", "gold": "ref"})
            plain = judge(
                "an answer",
                question="a question",
                reference="ref",
                api_key_env="KDISTILL_JUDGE_TEST_KEY",
                **options,
            )
            assert built == plain
        sent = [r.body["messages"] for r in server.requests]
        assert sent[0] == sent[1]  # built and plain asked the same thing


def test_missing_column_names_it_and_the_row_columns():
    check = build({"name": "answer_match", "reference_column": "gold"})
    with pytest.raises(
        ValueError, match="answer_match: the prompt row has no column 'gold' \\(it has: answer, prompt\\)"
    ):
        check("Answer: 1", {"prompt": "q", "answer": 1})
