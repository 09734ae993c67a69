"""python_tests: which code is run, and every way a run can end (the sandbox's own escapes are in
test_sandbox.py; here each limit is checked to become the right verdict)."""

from __future__ import annotations

import pytest

from kdistill.verify import python_tests
from kdistill.verify.python_tests import extract_code

ADD = "def add(a, b):\n    return a + b\n"
SMALL = {"timeout_s": 5.0, "memory_mb": 256}


def fenced(code: str, lang: str = "python") -> str:
    return f"```{lang}\n{code}```\n"


# -- which code


def test_last_python_block_is_the_code():
    answer = "Draft:\n" + fenced("def add(a, b):\n    return a - b\n") + "Fixed:\n" + fenced(ADD)
    assert extract_code(answer) == ADD


def test_python_tag_beats_a_later_untagged_block():
    answer = fenced(ADD, "py") + "Output:\n" + fenced("3\n", "")
    assert extract_code(answer) == ADD


def test_untagged_block_when_none_is_tagged_python():
    assert extract_code("Here:\n" + fenced(ADD, "")) == ADD


def test_whole_answer_without_fences():
    assert extract_code(ADD) == ADD


@pytest.mark.parametrize("answer", ["", "   \n", fenced("ls -l\n", "bash"), "<think>" + fenced(ADD)])
def test_no_code(answer):
    assert extract_code(answer) is None
    verdict = python_tests(answer, "assert True", **SMALL)
    assert (verdict.ok, verdict.reason) == (False, "no_code")


def test_code_in_the_reasoning_is_not_the_answer():
    answer = "<think>" + fenced("def add(a, b):\n    return 0\n") + "</think>" + fenced(ADD)
    assert extract_code(answer) == ADD


# -- verdicts


def test_passing_tests():
    verdict = python_tests(
        "Here you go:\n" + fenced(ADD), "assert add(1, 2) == 3\nassert add(-1, 1) == 0", **SMALL
    )
    assert (verdict.ok, verdict.reason, verdict.extracted) == (True, "tests_passed", ADD)


def test_failing_assert_names_the_test_line():
    verdict = python_tests(fenced(ADD), "assert add(1, 2) == 3\nassert add(2, 2) == 5", **SMALL)
    assert (verdict.ok, verdict.reason) == (False, "tests_failed")
    assert verdict.detail == "AssertionError (tests line 2: assert add(2, 2) == 5)"


def test_error_in_the_code_gives_the_last_traceback_line():
    verdict = python_tests("def add(a, b):\n    return a + c\n", "assert add(1, 2) == 3", **SMALL)
    assert verdict.reason == "tests_failed"
    assert verdict.detail.startswith("NameError: name 'c' is not defined")


@pytest.mark.parametrize(
    ("answer", "tests", "blamed"),
    [
        ("def add(a, b)\n    return a + b\n", "assert add(1, 2) == 3", "<answer> line 1"),
        (ADD, "assert add(1,", "<tests> line 1"),
    ],
)
def test_syntax_error_is_blamed_on_the_right_source(answer, tests, blamed):
    verdict = python_tests(answer, tests, **SMALL)
    assert (verdict.ok, verdict.reason) == (False, "syntax_error")
    assert verdict.detail.startswith(blamed)


@pytest.mark.parametrize(
    "exit_call", ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit"]
)
def test_exiting_before_the_tests_is_no_pass(exit_call):
    verdict = python_tests(ADD + exit_call + "\n", "assert add(1, 2) == 99", **SMALL)
    assert (verdict.ok, verdict.reason) == (False, "tests_failed")
    assert "before the tests finished" in verdict.detail


def test_main_block_of_the_answer_is_not_run():
    answer = ADD + "if __name__ == '__main__':\n    print(add(int(input()), 1))\n"  # would read stdin
    assert python_tests(answer, "assert add(2, 2) == 4", **SMALL).ok


def test_infinite_loop_is_a_timeout():
    verdict = python_tests("while True:\n    pass\n", "assert True", timeout_s=1.0, cpu_s=5)
    assert (verdict.ok, verdict.reason) == (False, "timeout")


def test_cpu_limit_is_a_timeout_too():
    verdict = python_tests("while True:\n    pass\n", "assert True", timeout_s=20.0, cpu_s=1)
    assert (verdict.reason, verdict.detail.startswith("used up its CPU time")) == ("timeout", True)


def test_memory_hog_is_memory_limit():
    verdict = python_tests("data = bytearray(2**31)\n", "assert True", timeout_s=5.0, memory_mb=128)
    assert (verdict.ok, verdict.reason) == (False, "memory_limit")


def test_flood_of_output_is_output_limit():
    verdict = python_tests(
        "while True:\n    print('spam' * 100)\n", "assert True", output_bytes=4096, **SMALL
    )
    assert (verdict.ok, verdict.reason) == (False, "output_limit")


def test_printing_answers_still_pass_when_under_the_cap():
    verdict = python_tests(ADD + "print('hello', end='')\n", "assert add(1, 1) == 2", **SMALL)
    assert verdict.ok  # the marker is found even after output without a newline


def test_tests_must_be_given():
    with pytest.raises(ValueError, match="tests must be non-empty"):
        python_tests(ADD, "  ")
