"""The seeded problem families: deterministic streams, distinct prompts, right answers, prompt files."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys

import pytest

from kdistill.generate.problems import (
    FAMILIES,
    INSTRUCTION,
    MAX_REPEATS_IN_A_ROW,
    Problem,
    make_problems,
    write_problems_jsonl,
)
from kdistill.generate.prompts import load_prompts
from kdistill.registry import UnknownNameError

ALL = FAMILIES.names()
N = 60  # problems per family in the checks below (mul_small has 64 distinct ones)


# Each family's answer recomputed from the prompt's own text, so a wrong formula, a swapped operand or a
# prompt that shows other numbers than the ones the answer used fails here.
def _ints(match: re.Match[str]) -> list[int]:
    return [int(g) for g in match.groups() if g is not None and g.isdigit()]


ARITHMETIC = re.compile(r"^What is (\d+) ([+\-×]) (\d+)\? ")
WORD_ADD = re.compile(
    r"^(\w+) has (\d+) (\w+) and (?:buys|finds|gets) (\d+) more\. How many \3 does \1 have now\? "
)
WORD_TWO_STEP = re.compile(
    r"^(\w+) has (\d+) (\w+)\. \1 (?:buys|finds|gets) (\d+) more and then gives (\d+) to a friend\. "
    r"How many \3 does \1 have now\? "
)
COMPARE = re.compile(r"^Which is larger, (\d+) or (\d+)\? ")


def recompute(family: str, prompt: str) -> int:
    if family in ("add_small", "add_2digit", "add_2digit_1digit", "sub_small", "mul_small", "arith_small"):
        match = ARITHMETIC.match(prompt)
        assert match, prompt
        a, op, b = int(match[1]), match[2], int(match[3])
        return {"+": a + b, "-": a - b, "×": a * b}[op]
    if family == "word_add":
        match = WORD_ADD.match(prompt)
        assert match, prompt
        return int(match[2]) + int(match[4])
    if family == "word_two_step":
        match = WORD_TWO_STEP.match(prompt)
        assert match, prompt
        return int(match[2]) + int(match[4]) - int(match[5])
    if family == "compare":
        match = COMPARE.match(prompt)
        assert match, prompt
        assert match[1] != match[2], prompt
        return max(int(match[1]), int(match[2]))
    raise AssertionError(f"no independent check for family {family!r}: add one to recompute()")


# the operand ranges each family's summary promises, read back from the prompt
RANGES = {
    "add_small": (ARITHMETIC, (1, 9)),
    "add_2digit": (ARITHMETIC, (10, 99)),
    "mul_small": (ARITHMETIC, (2, 9)),
    "word_add": (WORD_ADD, (1, 9)),
    "compare": (COMPARE, (10, 99)),
}


@pytest.mark.parametrize("family", ALL)
def test_answers_are_recomputed_from_the_prompt_text(family):
    problems = make_problems(family, N, seed=3)
    for p in problems:
        assert isinstance(p.answer, int) and not isinstance(p.answer, bool)
        assert p.answer == recompute(family, p.prompt), p
        assert p.family == family
        assert p.prompt.endswith(" " + INSTRUCTION)


@pytest.mark.parametrize("family", sorted(RANGES))
def test_operands_stay_in_the_family_range(family):
    pattern, (low, high) = RANGES[family]
    operands = [n for p in make_problems(family, N, seed=1) for n in _ints(pattern.match(p.prompt))]
    assert low <= min(operands) and max(operands) <= high


def test_add_2digit_1digit_adds_a_digit_to_a_two_digit_number():
    for p in make_problems("add_2digit_1digit", N, seed=4):
        a, _, b = ARITHMETIC.match(p.prompt).groups()
        assert 10 <= int(a) <= 99 and 1 <= int(b) <= 9


def test_sub_small_stays_in_its_range():
    for p in make_problems("sub_small", N, seed=4):
        a, _, b = ARITHMETIC.match(p.prompt).groups()
        assert 1 <= int(b) <= 9 and int(b) < int(a) <= 18


def test_arith_small_is_the_union_of_the_three_small_families():
    """Every problem of the three families, and nothing else, each operation about a third of the time."""
    union = {
        p.prompt
        for family, size in (("add_small", 81), ("sub_small", 117), ("mul_small", 64))
        for p in make_problems(family, size, seed=0)  # each family drawn until it is exhausted
    }
    mixed = make_problems("arith_small", len(union), seed=0)
    assert {p.prompt for p in mixed} == union
    ops = [ARITHMETIC.match(p.prompt)[2] for p in make_problems("arith_small", 90, seed=1)]
    assert all(ops.count(op) >= 15 for op in "+-×"), ops


def test_subtraction_and_two_step_answers_are_never_negative():
    for family in ("sub_small", "word_two_step"):
        assert min(p.answer for p in make_problems(family, N, seed=2)) >= 0


def test_the_instruction_holds_no_digit_that_the_verifier_could_take_for_an_answer():
    assert not re.search(r"\d", INSTRUCTION)
    assert "Answer: <number>" in INSTRUCTION


@pytest.mark.parametrize("family", ALL)
def test_same_seed_same_problems_in_a_fresh_process(family):
    """String seeds are hashed with sha512, not Python's per-process salted hash: check across processes."""
    code = (
        "import json; from kdistill.generate.problems import make_problems; "
        f"print(json.dumps([[p.id, p.prompt, p.answer] for p in make_problems({family!r}, 20, 7)]))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        timeout=60,
    )
    here = [[p.id, p.prompt, p.answer] for p in make_problems(family, 20, seed=7)]
    assert json.loads(other.stdout) == here
    assert make_problems(family, 20, seed=7) == make_problems(family, 20, seed=7)


@pytest.mark.parametrize("family", ALL)
def test_distinct_seeds_give_different_problems(family):
    first = [p.prompt for p in make_problems(family, 20, seed=0)]
    second = [p.prompt for p in make_problems(family, 20, seed=1)]
    # not just reordered: most prompts of one seed are absent from the other's first 20
    assert len(set(first) - set(second)) >= 10


@pytest.mark.parametrize("family", ALL)
def test_ids_and_prompts_are_unique_and_numbered(family):
    problems = make_problems(family, N, seed=5)
    assert [p.id for p in problems] == [f"{family}-5-{i}" for i in range(N)]
    assert len({p.prompt for p in problems}) == N


@pytest.mark.parametrize("family", ["add_small", "word_two_step"])
def test_start_continues_the_stream(family):
    """A held-out set (start=k) is the continuation of the training set: same ids, no shared prompt."""
    whole = make_problems(family, 50, seed=9)
    train, held_out = make_problems(family, 30, seed=9), make_problems(family, 20, seed=9, start=30)
    assert train + held_out == whole
    assert not {p.prompt for p in train} & {p.prompt for p in held_out}


def test_a_family_is_drawn_until_exhausted_then_fails_with_the_count():
    every = make_problems("add_small", 81, seed=0)  # 9 x 9 ordered pairs: the whole family
    pairs = {tuple(int(x) for x in ARITHMETIC.match(p.prompt).group(1, 3)) for p in every}
    assert pairs == {(a, b) for a in range(1, 10) for b in range(1, 10)}
    with pytest.raises(ValueError, match=r"'add_small' gave only 81 distinct problems .*start \+ n = 82"):
        make_problems("add_small", 2, seed=0, start=80)
    assert MAX_REPEATS_IN_A_ROW >= 1000


def test_unknown_family_names_the_known_ones():
    with pytest.raises(UnknownNameError) as err:
        make_problems("add_smal", 3, seed=0)
    message = str(err.value)
    assert "unknown problem family 'add_smal'" in message
    assert "did you mean 'add_small'?" in message
    assert all(name in message for name in ALL)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"n": -1}, r"n and start must be >= 0, got n=-1"),
        ({"start": -2}, r"start=-2"),
        ({"n": 2.0}, r"n must be an int, got 2\.0"),
        ({"seed": "0"}, r"seed must be an int, got '0'"),
        ({"n": True}, r"n must be an int, got True"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, expected):
    call = {"family": "add_small", "n": 3, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=expected):
        make_problems(**call)


def test_zero_problems_is_an_empty_list():
    assert make_problems("compare", 0, seed=0) == []


def test_a_family_function_draws_one_problem_from_the_rng():
    problem = FAMILIES.get("word_add")(random.Random(0))
    assert isinstance(problem, Problem) and problem.id == "" and problem.family == "word_add"
    assert problem.answer == recompute("word_add", problem.prompt)


def test_jsonl_round_trips_through_load_prompts(tmp_path):
    problems = [p for family in ALL for p in make_problems(family, 4, seed=11)]
    path = write_problems_jsonl(problems, tmp_path / "problems.jsonl")
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [set(line) for line in lines] == [{"id", "prompt", "answer"}] * len(problems)

    plain = load_prompts(path)
    assert [(p.id, p.prompt) for p in plain] == [(p.id, p.prompt) for p in problems]
    with_answers = load_prompts(path, columns=("answer",))
    assert [p.extra["answer"] for p in with_answers] == [p.answer for p in problems]
    assert "×" in path.read_text(encoding="utf-8")  # written as UTF-8 text, not \u escapes


def test_write_replaces_atomically_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("old\n")
    write_problems_jsonl(make_problems("add_2digit", 3, seed=0), path)
    assert len(path.read_text().splitlines()) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["problems.jsonl"]


def test_writing_no_problems_is_an_error_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("old\n")
    with pytest.raises(ValueError, match="no problems to write"):
        write_problems_jsonl([], path)
    assert path.read_text() == "old\n"


def test_every_family_has_a_summary_and_an_independent_check():
    assert set(ALL) >= {
        "add_small",
        "add_2digit",
        "sub_small",
        "mul_small",
        "word_add",
        "word_two_step",
        "compare",
    }
    for family in ALL:
        assert FAMILIES.summary(family)
        recompute(family, make_problems(family, 1, seed=0)[0].prompt)  # raises for a family without a check


def test_the_shipped_reasoning_problems_are_the_generators_output():
    """src/kdistill/recipes/reasoning_problems.jsonl (the smollm2-reasoning recipe's problems) is
    make_problems("arith_small", 128, seed 0), written by write_problems_jsonl: regenerate it, never edit it."""
    import json as _json

    from kdistill.generate.problems import make_problems
    from kdistill.runs.locations import resolve_prompts

    shipped = [_json.loads(line) for line in resolve_prompts("reasoning_problems").read_text().splitlines()]
    want = [
        {"id": p.id, "prompt": p.prompt, "answer": p.answer} for p in make_problems("arith_small", 128, 0)
    ]
    assert shipped == want
