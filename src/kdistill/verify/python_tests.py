"""Does the teacher's code pass the prompt's tests? Run both in the sandbox and look at how it ended.

**Which code.** The answer's final text (after `</think>`) is searched for fenced blocks: the *last* block
tagged `python` (or `py`, `python3`) is the code, as in open-r1's code reward and LiveCodeBench: models put
the finished solution last, after drafts and explanations. Without such a block the last untagged block is
taken; an answer without any fence is code as a whole; an answer whose blocks are all in other languages
(or that is empty) has `no_code`.

**How it runs.** A small runner program compiles the code and the tests separately (so a syntax error is
blamed on the right one), executes the code and then the tests in one namespace whose `__name__` is
`"solution"` (not `"__main__"`: an answer's `if __name__ == "__main__":` demo, which often reads stdin, is
skipped), and finally prints a marker chosen at random for this run. `ok` needs exit status 0 *and* the
marker, so an answer that calls `sys.exit(0)` or `os._exit(0)` before the tests run does not pass. The
marker is in the runner's source and memory, so a determined answer could find it: like the sandbox, this
stops accidents and lazy reward hacking, not an adversary.

Reasons: `tests_passed`, `tests_failed` (detail: the last line of the traceback and the test line that
failed), `syntax_error`, `timeout` (wall clock or CPU), `memory_limit`, `output_limit` (stdout/stderr or a
file over the size limit), `no_code`.
"""

from __future__ import annotations

import re
import secrets

from kdistill.verify.answer_text import fenced_blocks, final_text
from kdistill.verify.sandbox import SandboxResult, run_untrusted
from kdistill.verify.verdict import Verdict

PYTHON_TAGS = frozenset({"python", "py", "python3"})
SYNTAX_EXIT = 3  # the runner's exit status when the code or the tests do not compile
_SYNTAX_TAG = "kdistill-syntax-error:"

_RUNNER = """\
import linecache, sys

def _compile(source, name):
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)  # tracebacks show lines
    try:
        return compile(source, name, "exec")
    except (SyntaxError, ValueError) as err:  # ValueError: a null byte in the source
        where = f" line {{err.lineno}}" if getattr(err, "lineno", None) else ""
        print(f"{syntax_tag} {{name}}{{where}}: {{getattr(err, 'msg', err)}}", file=sys.stderr)
        sys.exit({syntax_exit})

_answer = _compile({answer!r}, "<answer>")
_tests = _compile({tests!r}, "<tests>")
_namespace = {{"__name__": "solution", "__builtins__": __builtins__}}
exec(_answer, _namespace)
exec(_tests, _namespace)
sys.stdout.flush()
sys.__stdout__.write("\\n" + {marker!r} + "\\n")
sys.__stdout__.flush()
"""


def extract_code(answer: str) -> str | None:
    """The code to run (see the module docstring), or None when the answer has none."""
    text = final_text(answer)
    blocks = fenced_blocks(text)
    if not blocks:
        return text if text.strip() else None
    tagged = [body for lang, body in blocks if lang in PYTHON_TAGS]
    untagged = [body for lang, body in blocks if lang == ""]
    code = (tagged or untagged or [None])[-1]
    return code if code is not None and code.strip() else None


def python_tests(
    answer: str,
    tests: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    cpu_s: float | None = None,
    output_bytes: int = 65536,
) -> Verdict:
    """Run the answer's code, then `tests` (plain Python statements, e.g. asserts), in the sandbox."""
    if not isinstance(tests, str) or not tests.strip():
        raise ValueError("python_tests: tests must be non-empty Python source (e.g. assert statements)")
    code = extract_code(answer)
    if code is None:
        return Verdict(False, "no_code", None, "no Python code in the answer")
    marker = f"kdistill-tests-done-{secrets.token_hex(16)}"
    runner = _RUNNER.format(
        answer=code, tests=tests, marker=marker, syntax_tag=_SYNTAX_TAG, syntax_exit=SYNTAX_EXIT
    )
    result = run_untrusted(
        runner, timeout_s=timeout_s, cpu_s=cpu_s, memory_mb=memory_mb, output_bytes=output_bytes
    )
    return _verdict(result, code, tests, marker, timeout_s, memory_mb, output_bytes)


def _verdict(
    result: SandboxResult,
    code: str,
    tests: str,
    marker: str,
    timeout_s: float,
    memory_mb: int,
    output_bytes: int,
) -> Verdict:
    if result.limit == "timeout":
        return Verdict(False, "timeout", code, f"still running after {timeout_s:g} s (wall clock)")
    if result.limit == "cpu":
        return Verdict(False, "timeout", code, f"used up its CPU time ({result.cpu_s:.1f} s)")
    if result.limit == "memory":
        return Verdict(False, "memory_limit", code, f"ran out of its {memory_mb} MB of memory")
    if result.limit == "output":
        return Verdict(False, "output_limit", code, f"printed more than {output_bytes} bytes")
    if result.limit == "file_size":
        return Verdict(False, "output_limit", code, "wrote a file over the size limit")
    last = _last_line(result.stderr)
    if result.returncode == SYNTAX_EXIT and last.startswith(_SYNTAX_TAG):
        return Verdict(False, "syntax_error", code, last.removeprefix(_SYNTAX_TAG).strip())
    if result.returncode == 0 and marker in result.stdout:
        return Verdict(True, "tests_passed", code, "all tests passed")
    if result.returncode == 0:
        return Verdict(False, "tests_failed", code, "the program exited before the tests finished")
    if result.returncode is None:
        return Verdict(False, "tests_failed", code, f"killed by signal {result.signal}")
    return Verdict(False, "tests_failed", code, _failure_detail(last, result.stderr, tests))


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


_TESTS_FRAME = re.compile(r'File "<tests>", line (\d+)')


def _failure_detail(last: str, stderr: str, tests: str) -> str:
    """The traceback's last line, and the test line it went through last (an assert without a message
    says nothing by itself)."""
    detail = last or "failed without an error message"
    frames = _TESTS_FRAME.findall(stderr)
    if frames:
        lines = tests.splitlines()
        number = int(frames[-1])
        if 0 < number <= len(lines):
            detail += f" (tests line {number}: {lines[number - 1].strip()})"
    return detail
