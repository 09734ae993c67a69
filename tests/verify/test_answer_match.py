"""answer_match: extraction defaults and patterns, every mode with its edges, and the choice of `auto`."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdistill.verify import answer_match, extract_answer
from kdistill.verify.answer_match import choose_mode, normalize, numbers_equal, parse_number, split_items

# -- extraction


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("first \\boxed{1}, then \\boxed{2}.", "2"),  # the last box
        ("so \\boxed{\\frac{1}{2}} it is", "\\frac{1}{2}"),  # braces balanced, not cut at the first }
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed{7} and a cut-off \\boxed{8", "7"),  # an unclosed box is skipped
        ("\\fbox{x}", "x"),
        ("The answer is 42.", "42."),
        ("Answer: Paris\nso we are done", "Paris"),
        ("answer: 3\n...\nFinal answer: 4", "4"),  # the last answer line
        ("the answer isn't obvious; we find 12 apples", "12"),  # "answer is" must be a word
        ("there are 3 cats and 1,234 dogs", "1,234"),  # the last number, thousands kept
        ("pages 3-5", "5"),  # a hyphen is not a minus
        ("it drops to -7 degrees", "-7"),
        ("so 3/4 of them", "3/4"),
        ("Answer: 5 but \\boxed{6}", "6"),  # a box beats an answer line wherever it is
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_answer_defaults(answer, expected):
    assert extract_answer(answer) == expected


def test_extraction_reads_only_the_text_after_the_reasoning():
    assert extract_answer("<think>maybe \\boxed{3}</think>The answer is 4") == "4"
    assert extract_answer("<think>so it is 41 ... or 42") is None  # never stopped thinking: no answer
    verdict = answer_match("<think>42</think>I could not decide.", 42)
    assert (verdict.ok, verdict.reason) == (False, "no_answer")


def test_custom_pattern_takes_the_group_of_the_last_match():
    answer = "#### 12\nrecheck\n#### 13"
    assert extract_answer(answer, r"####\s*(\S+)") == "13"
    assert answer_match(answer, 13, pattern=r"####\s*(\S+)").ok
    assert extract_answer("Result = 9", r"####\s*(\S+)") is None
    verdict = answer_match("Result = 9", 9, pattern=r"####\s*(\S+)")
    assert verdict.reason == "no_answer" and "####" in verdict.detail


@pytest.mark.parametrize(("pattern", "message"), [("(a)(b)", "exactly one group"), ("([", "not a valid")])
def test_bad_pattern_is_a_clear_error(pattern, message):
    with pytest.raises(ValueError, match=message):
        extract_answer("a b", pattern)


# -- modes


def test_exact_compares_the_text_as_written():
    assert answer_match("Answer: 42", 42, mode="exact").ok
    assert answer_match("Answer: 42.0", 42, mode="exact").reason == "mismatch"
    assert answer_match("Answer: Paris", "paris", mode="exact").reason == "mismatch"


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("Answer: **Paris**.", "paris"),
        ("Answer: $x^2$", "x^2"),
        ("\\boxed{\\text{ New   York }}", "new york"),
        ("\\boxed{\\mathrm{H_2O}}", "h_2o"),
        ("\\boxed{30^\\circ}", "30"),
        ("\\boxed{\\left(a\\right)}", "(a)"),
    ],
)
def test_normalized_ignores_case_space_and_latex_noise(answer, reference):
    verdict = answer_match(answer, reference, mode="normalized")
    assert verdict.ok, verdict.detail


def test_normalized_still_tells_different_answers_apart():
    assert not answer_match("Answer: Paris", "Rome", mode="normalized").ok
    assert not answer_match("Answer: x^2", "x^3", mode="normalized").ok


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("Answer: 1,234", 1234),
        ("\\boxed{1{,}234}", "1234"),
        ("Answer: 3/4", 0.75),
        ("\\boxed{\\frac{3}{4}}", "0.75"),
        ("\\boxed{-\\dfrac{1}{3}}", "-1/3"),
        ("Answer: 50%", 50),  # a percentage is its number, not a hundredth of it
        ("Answer: 1.5e3", 1500),
        ("The final answer is $18.", 18),
        ("Answer: 18 dollars", 18),  # not a number as a whole: its last number
        ("Answer: −5", -5),  # a Unicode minus
        ("Answer: .5", "0.5"),
        ("Answer: 7", 7.0),
    ],
)
def test_numeric_parses_the_usual_spellings(answer, reference):
    verdict = answer_match(answer, reference, mode="numeric")
    assert verdict.ok, verdict.detail


def test_numeric_tolerance_edges():
    # math.isclose: |a - b| <= max(rel_tol * max(|a|, |b|), abs_tol)
    assert answer_match("Answer: 1.000001", 1, rel_tol=1e-6, abs_tol=0).ok  # 1e-6 / 1.000001 < 1e-6
    assert not answer_match("Answer: 1.000003", 1, rel_tol=1e-6, abs_tol=0).ok
    assert answer_match("Answer: 0.000000001", 0, rel_tol=1e-6, abs_tol=1e-9).ok  # exactly abs_tol
    assert not answer_match("Answer: 0.000000003", 0, rel_tol=1e-6, abs_tol=1e-9).ok
    assert not answer_match("Answer: 0.3333", "1/3").ok  # 1e-4 relative is far outside 1e-6
    assert answer_match("Answer: 0.3333", "1/3", rel_tol=1e-3).ok


def test_numeric_exact_rationals_beyond_float_precision():
    big = 10**30
    assert answer_match(f"Answer: {big}", str(big), rel_tol=0, abs_tol=0).ok
    assert not answer_match(f"Answer: {big + 1}", str(big), rel_tol=0, abs_tol=0).ok


def test_numeric_without_a_number_in_the_answer_is_a_mismatch():
    verdict = answer_match("Answer: many", 3, mode="numeric")
    assert (verdict.ok, verdict.reason, verdict.extracted) == (False, "mismatch", "many")


def test_numeric_reference_that_is_not_a_number_is_an_error():
    with pytest.raises(ValueError, match="not a number"):
        answer_match("Answer: 3", "three", mode="numeric")


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("\\boxed{1, 2 and 3}", [3, 2, 1]),
        ("\\boxed{\\{2, 1\\}}", "1, 2"),
        ("Answer: Rome and Paris", ["paris", "rome"]),
        ("Answer: 1/2; 0.25", [0.25, 0.5]),
        ("\\boxed{1, 1, 2}", {1, 2}),  # a set: repeats do not count
        ("\\boxed{0.3333333, 2}", ["2", "1/3"]),  # items compared with the tolerance
    ],
)
def test_set_ignores_order(answer, reference):
    verdict = answer_match(answer, reference, mode="set")
    assert verdict.ok, verdict.detail


@pytest.mark.parametrize(
    ("answer", "reference"), [("\\boxed{1, 2}", [1, 2, 3]), ("\\boxed{1, 2, 4}", [1, 2])]
)
def test_set_needs_the_same_items(answer, reference):
    assert answer_match(answer, reference, mode="set").reason == "mismatch"


def test_list_needs_the_same_order_and_count():
    assert answer_match("\\boxed{1, 2, 3}", [1, 2, 3], mode="list").ok
    assert not answer_match("\\boxed{3, 2, 1}", [1, 2, 3], mode="list").ok
    assert not answer_match("\\boxed{1, 2}", [1, 2, 2], mode="list").ok


def test_thousands_separator_is_not_an_item_separator():
    assert split_items("1,234") == ["1,234"]
    assert split_items("1,2,3") == ["1", "2", "3"]
    assert split_items("100, 200") == ["100", "200"]
    assert split_items("(a, (b, c)) and d") == ["(a, (b, c))", "d"]
    assert split_items("f(1, 2), g(3)") == ["f(1, 2)", "g(3)"]  # commas inside brackets stay


@pytest.mark.parametrize(
    ("reference", "mode"),
    [
        ([1, 2], "set"),
        (("a", "b"), "set"),
        (42, "numeric"),
        (0.5, "numeric"),
        ("3/4", "numeric"),
        ("1,234", "numeric"),
        ("1, 2, 3", "set"),
        ("{1, 2}", "set"),
        ("(1, 2)", "list"),  # a point: order matters
        ("[1, 2]", "list"),
        ("Paris", "normalized"),
        ("Romeo and Juliet", "normalized"),  # "and" alone does not make a set
        ("f(1, 2)", "normalized"),  # a comma inside brackets is not top level
    ],
)
def test_auto_mode_choice(reference, mode):
    assert choose_mode(reference) == mode


def test_auto_compares_a_point_in_order():
    assert answer_match("\\boxed{(1, 2)}", "(1, 2)").ok
    assert not answer_match("\\boxed{(2, 1)}", "(1, 2)").ok
    assert answer_match("\\boxed{2, 1}", "1, 2").ok


def test_verdict_carries_the_extracted_answer_and_a_readable_detail():
    verdict = answer_match("so the answer is \\boxed{41}", 42)
    assert (verdict.ok, verdict.reason, verdict.extracted) == (False, "mismatch", "41")
    assert "42" in verdict.detail and "41" in verdict.detail and "numeric" in verdict.detail


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "fuzzy"}, "mode must be one of"),
        ({"rel_tol": -1.0}, "rel_tol"),
        ({"abs_tol": float("nan")}, "abs_tol"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        answer_match("Answer: 1", 1, **kwargs)


@pytest.mark.parametrize(("reference", "mode"), [(None, "auto"), (True, "auto"), ([1, 2], "numeric")])
def test_bad_references_are_clear_errors(reference, mode):
    with pytest.raises(ValueError, match="reference|compares one value"):
        answer_match("Answer: 1", reference, mode=mode)


# -- properties

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)


near_pairs = st.tuples(finite, st.floats(-3e-6, 3e-6)).map(lambda t: (t[0], t[0] * (1 + t[1])))


@given(st.one_of(st.tuples(finite, finite), near_pairs))
def test_numeric_equality_is_symmetric(pair):
    a, b = pair
    forward = answer_match(f"Answer: {a!r}", repr(b), mode="numeric").ok
    backward = answer_match(f"Answer: {b!r}", repr(a), mode="numeric").ok
    assert forward == backward
    # and it is math.isclose's relation, away from the boundary where rounding may decide either way
    if math.isclose(a, b, rel_tol=0.5e-6, abs_tol=0.5e-9):
        assert forward
    if not math.isclose(a, b, rel_tol=2e-6, abs_tol=2e-9):
        assert not forward


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_thousands_separators_round_trip(n):
    assert parse_number(f"{n:,}") == n


@given(st.integers(-1000, 1000), st.integers(1, 1000))
def test_fractions_round_trip(p, q):
    assert parse_number(f"{p}/{q}") == Fraction(p, q)
    assert parse_number(f"\\frac{{{abs(p)}}}{{{q}}}") == Fraction(abs(p), q)


@given(st.text(max_size=40))
def test_normalize_is_idempotent(text):
    once = normalize(text)
    assert normalize(once) == once


@settings(max_examples=50)
@given(st.lists(st.integers(-50, 50), min_size=1, max_size=8, unique=True), st.randoms(use_true_random=False))
def test_set_match_does_not_depend_on_order(items, rng: random.Random):
    shuffled = list(items)
    rng.shuffle(shuffled)
    answer = "\\boxed{" + ", ".join(str(i) for i in shuffled) + "}"
    assert answer_match(answer, items, mode="set").ok
    assert answer_match(answer, items, mode="list").ok == (shuffled == items)


def test_numbers_beyond_float_range_compare_exactly():
    huge = Fraction(10**400)
    assert numbers_equal(huge, huge + 1, rel_tol=1e-6, abs_tol=0)
    assert not numbers_equal(huge, huge + 1, rel_tol=0, abs_tol=0)
    assert not numbers_equal(huge, 1e300, rel_tol=1e-6, abs_tol=0)


def test_absurd_numbers_are_not_numbers():
    assert parse_number("1e999999999") is None  # no billion-digit integer is built
    assert parse_number("inf") is None and parse_number("nan") is None
    assert parse_number("1e300/1e-300") is None  # a ratio beyond float range
    assert parse_number("1" * 400 + "/2e0") is None
    assert parse_number("1/0") is None
