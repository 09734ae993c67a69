"""json_schema: which text is parsed, valid and invalid answers, and a bad schema as the user's error."""

from __future__ import annotations

import pytest

from kdistill.verify import json_schema
from kdistill.verify.json_schema import extract_json_text

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}},
        "email": {"type": "string", "format": "email"},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('{"a": 1}', '{"a": 1}'),
        ('  \n{"a": 1}\n ', '{"a": 1}'),
        ('Sure:\n```json\n{"a": 1}\n```\nDone.', '{"a": 1}'),
        ('```json\n{"draft": 1}\n```\nbetter:\n```json\n{"a": 2}\n```', '{"a": 2}'),  # the last json block
        ('```\n{"a": 3}\n```', '{"a": 3}'),  # an untagged block
        ('```json\n{"a": 4}\n```\n```python\nprint(1)\n```', '{"a": 4}'),
        ('<think>{"draft": true}</think>{"a": 5}', '{"a": 5}'),
    ],
)
def test_which_text_is_parsed(answer, expected):
    assert extract_json_text(answer) == expected


def test_valid_answer_matches():
    verdict = json_schema('```json\n{"name": "Ada", "age": 36, "tags": ["math"]}\n```', PERSON)
    assert (verdict.ok, verdict.reason) == (True, "match")
    assert verdict.extracted == '{"name": "Ada", "age": 36, "tags": ["math"]}'


@pytest.mark.parametrize(
    ("answer", "where", "what"),
    [
        ('{"name": "Ada"}', "$", "'age' is a required property"),
        ('{"name": "Ada", "age": -1}', "$.age", "less than the minimum of 0"),
        ('{"name": "Ada", "age": 3, "tags": ["a", 7]}', "$.tags[1]", "7 is not of type 'string'"),
        ('{"name": "Ada", "age": 3, "extra": 1}', "$", "Additional properties are not allowed"),
        (
            '{"name": "Ada", "age": 3, "email": "not-an-email"}',
            "$.email",
            "is not a 'email'",
        ),  # formats checked
        ("[1, 2]", "$", "is not of type 'object'"),
    ],
)
def test_schema_violation_names_the_path_and_the_problem(answer, where, what):
    verdict = json_schema(answer, PERSON)
    assert (verdict.ok, verdict.reason) == (False, "schema_violation")
    assert verdict.detail.startswith(f"{where}: ") and what in verdict.detail


@pytest.mark.parametrize(
    "answer",
    ['{"name": "Ada", "age": 3', "name: Ada", "", '{"name": "Ada", "age": NaN}', '{"age": Infinity}'],
)
def test_invalid_json(answer):
    verdict = json_schema(answer, PERSON)
    assert (verdict.ok, verdict.reason) == (False, "invalid_json")


def test_bad_schema_is_a_config_error_not_a_verdict():
    with pytest.raises(ValueError, match="invalid JSON Schema at properties/age/minimum"):
        json_schema("{}", {"properties": {"age": {"minimum": "zero"}}})
    with pytest.raises(ValueError, match="must be an object"):
        json_schema("{}", ["type", "object"])


def test_the_schema_names_its_draft():
    # the array form of "items" is tuple validation in draft 7 and not a valid schema in 2020-12
    tuple_items = {"items": [{"type": "integer"}]}
    with pytest.raises(ValueError, match="invalid JSON Schema"):
        json_schema("[1]", tuple_items)  # no $schema: Draft 2020-12
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", **tuple_items}
    assert json_schema('[1, "anything after the first"]', draft7).ok
    assert json_schema('["x"]', draft7).reason == "schema_violation"
