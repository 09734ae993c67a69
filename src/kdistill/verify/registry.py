"""The verifiers a config can name, each with its options as a strict pydantic model.

A `VerifierSpec` says what a verifier needs from a prompt file (`columns`) and builds the callable that
judges one answer: `build(config)(answer_text, row) -> Verdict`, where `row` is the prompt's row,
`{"prompt": <prompt text>, <column>: <value>, ...}`. `version` is stored with every verdict: bump it when
a verifier's decision logic changes, so that old verdicts are recognisably stale.

    spec, config = verifier_from_config({"name": "answer_match", "mode": "numeric"})
    check = spec.build(config)
    check("... so the answer is \\\\boxed{42}", {"prompt": "6 x 7?", "answer": "42"}).ok  # True
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdistill.registry import Registry
from kdistill.schema import ConfigError, Strict, format_validation_errors
from kdistill.verify.answer_match import Mode, answer_match, compile_pattern
from kdistill.verify.json_schema import check_json, validator_for_schema
from kdistill.verify.judge import SCALE_MAX, judge, judge_client
from kdistill.verify.python_tests import python_tests
from kdistill.verify.verdict import Verdict

Check = Callable[[str, dict[str, Any]], Verdict]


@dataclass(frozen=True)
class VerifierSpec:
    name: str
    version: int
    summary: str
    config_model: type[BaseModel]
    columns: Callable[[Any], tuple[str, ...]]
    build: Callable[[Any], Check]


VERIFIERS: Registry[VerifierSpec] = Registry("verifier")


def _register(spec: VerifierSpec) -> VerifierSpec:
    return VERIFIERS.add(spec.name, spec, spec.summary)


def verifier_from_config(data: dict[str, Any], *, source: str = "verifier") -> tuple[VerifierSpec, BaseModel]:
    """The spec and validated options of `{"name": ..., **options}`; ConfigError naming the bad field."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping with a 'name' and its options, got {type(data).__name__}"
        )
    name = data.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"{source}: name: required, one of {', '.join(VERIFIERS.names())}")
    if name not in VERIFIERS:
        raise ConfigError(f"{source}: name: {VERIFIERS.unknown_message(name)}")
    spec = VERIFIERS.get(name)
    try:
        config = spec.config_model.model_validate({k: v for k, v in data.items() if k != "name"})
    except ValidationError as err:
        raise ConfigError(format_validation_errors(err, f"{source} {name}")) from None
    return spec, config


def column(row: dict[str, Any], name: str, verifier: str) -> Any:
    """`row[name]`, or an error that names the verifier, the column and the columns the row has."""
    if name not in row:
        raise ValueError(
            f"{verifier}: the prompt row has no column {name!r} (it has: {', '.join(sorted(row))})"
        )
    return row[name]


# -- answer_match


class AnswerMatchConfig(Strict):
    mode: Mode = Field("auto", description="auto | exact | normalized | numeric | set | list")
    pattern: str | None = Field(
        None,
        description="regex with one group that captures the answer (null = \\boxed{}, 'Answer:', number)",
    )
    rel_tol: float = Field(1e-6, ge=0, allow_inf_nan=False, description="numeric: relative tolerance")
    abs_tol: float = Field(1e-9, ge=0, allow_inf_nan=False, description="numeric: absolute tolerance")
    reference_column: str = Field("answer", description="the prompt-file column with the reference answer")

    @field_validator("pattern")
    @classmethod
    def _one_group(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            compile_pattern(pattern)
        return pattern


def _build_answer_match(config: AnswerMatchConfig) -> Check:
    def check(answer: str, row: dict[str, Any]) -> Verdict:
        reference = column(row, config.reference_column, "answer_match")
        return answer_match(
            answer,
            reference,
            mode=config.mode,
            pattern=config.pattern,
            rel_tol=config.rel_tol,
            abs_tol=config.abs_tol,
        )

    return check


_register(
    VerifierSpec(
        name="answer_match",
        version=1,
        summary="the final answer (\\boxed{}, 'Answer:', last number) equals the reference answer",
        config_model=AnswerMatchConfig,
        columns=lambda c: (c.reference_column,),
        build=_build_answer_match,
    )
)


# -- python_tests


class PythonTestsConfig(Strict):
    timeout_s: float = Field(10.0, gt=0, allow_inf_nan=False, description="wall-clock limit of one run")
    memory_mb: int = Field(512, ge=16, description="address-space limit of the code's process")
    cpu_s: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="CPU limit (null = timeout + 1 s)"
    )
    output_bytes: int = Field(65536, ge=1, description="most bytes of stdout (and of stderr) it may print")
    tests_column: str = Field("tests", description="the prompt-file column with the tests (Python source)")


def _build_python_tests(config: PythonTestsConfig) -> Check:
    def check(answer: str, row: dict[str, Any]) -> Verdict:
        tests = column(row, config.tests_column, "python_tests")
        if isinstance(tests, list) and all(isinstance(t, str) for t in tests):
            tests = "\n".join(tests)  # a list of assert statements
        if not isinstance(tests, str):
            raise ValueError(
                f"python_tests: column {config.tests_column!r} must be Python source or a list of lines"
            )
        return python_tests(
            answer,
            tests,
            timeout_s=config.timeout_s,
            memory_mb=config.memory_mb,
            cpu_s=config.cpu_s,
            output_bytes=config.output_bytes,
        )

    return check


_register(
    VerifierSpec(
        name="python_tests",
        version=1,
        summary="the answer's Python code passes the prompt's tests in a sandboxed process",
        config_model=PythonTestsConfig,
        columns=lambda c: (c.tests_column,),
        build=_build_python_tests,
    )
)


# -- json_schema


class JsonSchemaConfig(Strict):
    model_config = ConfigDict(populate_by_name=True)

    schema_: dict[str, Any] | None = Field(
        None, alias="schema", description="the JSON Schema every answer must satisfy (or schema_column)"
    )
    schema_column: str | None = Field(None, description="a prompt-file column with each prompt's own schema")

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            validator_for_schema(schema)
        return schema

    @model_validator(mode="after")
    def _one_source(self) -> JsonSchemaConfig:
        if (self.schema_ is None) == (self.schema_column is None):
            raise ValueError("give exactly one of schema and schema_column")
        return self


@lru_cache(maxsize=256)
def _validator_of_json(schema_json: str) -> Any:
    return validator_for_schema(json.loads(schema_json))


def _build_json_schema(config: JsonSchemaConfig) -> Check:
    fixed = validator_for_schema(config.schema_) if config.schema_ is not None else None

    def check(answer: str, row: dict[str, Any]) -> Verdict:
        if fixed is not None:
            return check_json(answer, fixed)
        schema = column(row, config.schema_column, "json_schema")
        if isinstance(schema, dict):
            schema = json.dumps(schema, sort_keys=True)
        if not isinstance(schema, str):
            raise ValueError(
                f"json_schema: column {config.schema_column!r} must hold a schema object or its JSON"
            )
        return check_json(answer, _validator_of_json(schema))

    return check


_register(
    VerifierSpec(
        name="json_schema",
        version=1,
        summary="the answer is JSON that a JSON Schema accepts (jsonschema, formats checked)",
        config_model=JsonSchemaConfig,
        columns=lambda c: (c.schema_column,) if c.schema_column else (),
        build=_build_json_schema,
    )
)


# -- judge


class JudgeConfig(Strict):
    base_url: str = Field(description="the judge's OpenAI-compatible base URL, up to and including /v1")
    model: str = Field(description="the judge model's name on that server")
    rubric: str = Field(description="what a good answer does: the judge grades against it")
    threshold: float = Field(
        7.0, ge=0, le=SCALE_MAX, description=f"lowest passing score on the 0-{SCALE_MAX:g} scale"
    )
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the judge's API key")
    reference_column: str | None = Field(None, description="a prompt-file column with a reference answer")
    max_retries: int = Field(3, ge=0, description="retries of connection errors, 408/409/429 and 5xx")
    timeout_s: float = Field(60.0, gt=0, allow_inf_nan=False, description="timeout of one request")


def _build_judge(config: JudgeConfig) -> Check:
    client = judge_client(
        config.base_url,
        api_key_env=config.api_key_env,
        max_retries=config.max_retries,
        timeout_s=config.timeout_s,
    )

    def check(answer: str, row: dict[str, Any]) -> Verdict:
        question = column(row, "prompt", "judge")
        if not isinstance(question, str):
            raise ValueError("judge: the prompt must be text")
        reference = column(row, config.reference_column, "judge") if config.reference_column else None
        return judge(
            answer,
            question=question,
            rubric=config.rubric,
            threshold=config.threshold,
            base_url=config.base_url,
            model=config.model,
            api_key_env=config.api_key_env,
            reference=None if reference is None else str(reference),
            client=client,
        )

    return check


_register(
    VerifierSpec(
        name="judge",
        version=1,
        summary="a judge model (OpenAI-compatible) scores the answer against a rubric, 0-10",
        config_model=JudgeConfig,
        columns=lambda c: ("prompt", c.reference_column) if c.reference_column else ("prompt",),
        build=_build_judge,
    )
)
