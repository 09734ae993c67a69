"""Seeded families of small arithmetic problems with integer answers, for the reasoning recipe.

The recipe needs problems whose answers a program can check (`kdistill.verify.answer_match`) and that a
tiny teacher solves sometimes but not always: then sampling several answers and keeping the verified
ones gives the student better data than the teacher's greedy answer alone. Each family draws one problem
from a `random.Random`; `make_problems` numbers a deterministic stream of distinct problems, so the same
(family, seed) always gives the same file, and `start` continues the stream: a training set
(`start=0, n=1000`) and a held-out set (`start=1000`) of one seed never share a prompt.

Every prompt ends with `INSTRUCTION`, which asks for one line of work and a final `Answer: <number>` line.
Longer requests for reasoning ("think step by step") made SmolLM2-135M-Instruct ramble and lose the sum
(benchmarks/reasoning_families.py measures the families).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from kdistill.io import atomic_write_text
from kdistill.registry import Registry

INSTRUCTION = 'Show your work in one line, then write the final line as "Answer: <number>".'

#: consecutive repeats of already-drawn prompts before a family counts as exhausted (a family of 81
#: problems misses its last unseen one 10,000 times in a row with probability (80/81)^10000 < 1e-50)
MAX_REPEATS_IN_A_ROW = 10_000

NAMES = ("Tom", "Anna", "Ben", "Maria", "Sam", "Lily", "Omar", "Mia")
ITEMS = ("apples", "pencils", "marbles", "stickers", "books", "cookies", "shells", "cards")
GAINS = ("buys", "finds", "gets")


@dataclass(frozen=True)
class Problem:
    """One problem: the full prompt (question + `INSTRUCTION`) and its integer answer.

    A family function returns it with `id=""`; `make_problems` gives it its id `family-seed-index`.
    """

    id: str
    prompt: str
    answer: int
    family: str


Family = Callable[[random.Random], Problem]  # what FAMILIES holds
Draw = Callable[[random.Random], tuple[str, int]]  # what a family's code writes: (question, answer)
FAMILIES: Registry[Family] = Registry("problem family")


def register_family(name: str, summary: str) -> Callable[[Draw], Draw]:
    """Register `draw(rng) -> (question, answer)` as the family `name`, whose entry in `FAMILIES` returns
    whole `Problem`s; `draw` itself is returned unchanged, so one family can reuse another's."""

    def deco(draw: Draw) -> Draw:
        def problem(rng: random.Random) -> Problem:
            question, answer = draw(rng)
            return Problem(id="", prompt=f"{question} {INSTRUCTION}", answer=answer, family=name)

        problem.__name__ = problem.__qualname__ = draw.__name__
        FAMILIES.add(name, problem, summary)
        return draw

    return deco


# ------------------------------------------------------------------------------------------ families


@register_family("add_small", "a + b with a, b in 1-9")
def add_small(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return f"What is {a} + {b}?", a + b


@register_family("add_2digit", "a + b with a, b in 10-99")
def add_2digit(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {a} + {b}?", a + b


@register_family(
    "sub_small", "a - b with b in 1-9 and b < a <= 18 (the inverse of add_small; never negative)"
)
def sub_small(rng: random.Random) -> tuple[str, int]:
    b = rng.randint(1, 9)
    a = rng.randint(b + 1, 18)
    return f"What is {a} - {b}?", a - b


@register_family("mul_small", "a × b with a, b in 2-9")
def mul_small(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return f"What is {a} × {b}?", a * b


@register_family("add_2digit_1digit", "a + b with a in 10-99 and b in 1-9")
def add_2digit_1digit(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(10, 99), rng.randint(1, 9)
    return f"What is {a} + {b}?", a + b


@register_family("arith_small", "add_small, sub_small or mul_small, each a third of the time")
def arith_small(rng: random.Random) -> tuple[str, int]:
    return rng.choice((add_small, sub_small, mul_small))(rng)


@register_family("word_add", "a one-sentence story: someone has a things and gains b more (a, b in 1-9)")
def word_add(rng: random.Random) -> tuple[str, int]:
    name, items, gain = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(GAINS)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return f"{name} has {a} {items} and {gain} {b} more. How many {items} does {name} have now?", a + b


@register_family(
    "word_two_step", "a story with two steps: has a, gains b, gives away c (a, b in 2-9, c < a + b)"
)
def word_two_step(rng: random.Random) -> tuple[str, int]:
    name, items, gain = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(GAINS)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    c = rng.randint(1, a + b - 1)
    question = (
        f"{name} has {a} {items}. {name} {gain} {b} more and then gives {c} to a friend. "
        f"How many {items} does {name} have now?"
    )
    return question, a + b - c


@register_family("compare", "the larger of two different numbers in 10-99")
def compare(rng: random.Random) -> tuple[str, int]:
    a, b = rng.sample(range(10, 100), 2)
    return f"Which is larger, {a} or {b}?", max(a, b)


# ------------------------------------------------------------------------------------------ problem sets


def make_problems(family: str, n: int, seed: int, *, start: int = 0) -> list[Problem]:
    """Problems `start .. start+n-1` of the stream of distinct problems of `family` under `seed`.

    The stream is a function of (family, seed) only, so `make_problems(f, n, s, start=k)` equals
    `make_problems(f, k + n, s)[k:]`, and no prompt appears twice in a stream. Raises `ValueError` when
    the family has fewer than `start + n` distinct problems.
    """
    draw = FAMILIES.get(family)  # UnknownNameError lists the known families
    for name, value in (("n", n), ("seed", seed), ("start", start)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n}, start={start}")
    # a string seed is hashed with sha512 by random.seed: stable across runs and Python processes
    rng = random.Random(f"{family}:{seed}")
    seen: set[str] = set()
    problems: list[Problem] = []
    repeats = 0
    while len(seen) < start + n:
        problem = draw(rng)
        if problem.prompt in seen:
            repeats += 1
            if repeats >= MAX_REPEATS_IN_A_ROW:
                raise ValueError(
                    f"problem family {family!r} gave only {len(seen)} distinct problems (then "
                    f"{MAX_REPEATS_IN_A_ROW} repeats in a row), fewer than start + n = {start + n}; "
                    "ask for fewer or use a larger family"
                )
            continue
        repeats = 0
        index = len(seen)
        seen.add(problem.prompt)
        if index >= start:
            problems.append(replace(problem, id=f"{family}-{seed}-{index}"))
    return problems


def write_problems_jsonl(problems: Iterable[Problem], path: str | os.PathLike[str]) -> Path:
    """Write `{"id", "prompt", "answer"}` lines (a prompt file for `kdistill generate` whose `answer`
    column the verifiers read), all or nothing: a reader never sees half a file."""
    lines = [
        json.dumps({"id": p.id, "prompt": p.prompt, "answer": p.answer}, ensure_ascii=False) + "\n"
        for p in problems
    ]
    if not lines:
        raise ValueError("no problems to write: a prompt file needs at least one")
    return atomic_write_text(path, "".join(lines))
