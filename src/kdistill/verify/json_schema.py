"""Is the teacher's answer JSON that a JSON Schema accepts? Validated by `jsonschema`, the reference
implementation, never a hand-written subset.

The JSON is the last fenced block tagged `json` in the answer's final text (after `</think>`), else the last
untagged fenced block, else the whole final text, stripped. `NaN` and `Infinity`, which Python's json module
accepts but JSON does not, are invalid. The schema's own `$schema` picks the draft (Draft 2020-12 when it
names none), and `format` is checked (`"format": "email"` rejects "not-an-email" where the format checker
knows the format), because a verifier that ignores formats lets malformed data train the student.

A schema that is not itself valid is the user's configuration error: `ValueError`, not a failed verdict.
Reasons: `match`, `invalid_json`, `schema_violation` (detail: the JSON path and message of the most relevant
error, as `jsonschema.exceptions.best_match` ranks them).
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import exceptions, validators

from kdistill.verify.answer_text import final_text, last_block
from kdistill.verify.verdict import Verdict

JSON_TAGS = frozenset({"json", "jsonc", "json5"})


def validator_for_schema(schema: dict[str, Any]) -> Any:
    """A validator of `schema` (its draft, formats checked); ValueError naming the problem if the schema is
    not a valid schema."""
    if not isinstance(schema, dict):
        raise ValueError(f"a JSON Schema must be an object (a dict), got {type(schema).__name__}")
    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ValueError(f"invalid JSON Schema at {where}: {err.message}") from None
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def extract_json_text(answer: str) -> str:
    """The text that should be JSON (see the module docstring)."""
    text = final_text(answer)
    block = last_block(text, JSON_TAGS)
    return (block if block is not None else text).strip()


def json_schema(answer: str, schema: dict[str, Any]) -> Verdict:
    """`match` when the answer's JSON is valid under `schema`; `invalid_json`; `schema_violation`."""
    return check_json(answer, validator_for_schema(schema))


def check_json(answer: str, validator: Any) -> Verdict:
    """`json_schema` with a validator built once (`validator_for_schema`), for many answers."""
    text = extract_json_text(answer)
    if not text:
        return Verdict(False, "invalid_json", None, "the answer is empty")
    try:
        instance = json.loads(text, parse_constant=_reject_constant)
    except ValueError as err:
        return Verdict(False, "invalid_json", text, f"not JSON: {err}")
    error = exceptions.best_match(validator.iter_errors(instance))
    if error is not None:
        return Verdict(False, "schema_violation", text, f"{error.json_path}: {error.message}")
    return Verdict(True, "match", text, "valid under the schema")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
