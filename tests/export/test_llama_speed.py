"""kdistill.export.llama_speed without llama-cpp-python: the interpreter choice, the spec/answer protocol
with a fake worker interpreter (numbers planted, summaries checked), a crashing or hanging worker named by
its model file, and the real worker's turns against a fake llama_cpp module."""

from __future__ import annotations

import json
import statistics
import sys
import textwrap
import types
from pathlib import Path

import pytest

from kdistill.export import llama_speed
from kdistill.export.llama_speed import LlamaCppError, llama_cpp_interpreter, llama_cpp_speeds

PROBE_ANSWER = (
    'if args == ["--probe"]:\n    print(json.dumps({"llama_cpp_python": "9.9.9-fake"}))\n    sys.exit(0)\n'
)


def fake_interpreter(folder: Path, body: str) -> Path:
    """An executable that runs `body` with this Python, as `python WORKER_PATH ARGS...` would run the worker:
    in `body`, `args` are the ARGS and json, os, signal, sys, time are imported."""
    script = folder / "fake_worker.py"
    script.write_text("import json, os, signal, sys, time\nargs = sys.argv[2:]\n" + textwrap.dedent(body))
    python = folder / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    python.chmod(0o755)
    return python


def spec_recording_worker(folder: Path, answer: str) -> tuple[Path, Path]:
    """A fake worker that answers the probe, saves the spec it was given to the returned file (read it back to
    see what llama_cpp_speeds asked for), then runs `answer` (where `spec` is that spec)."""
    seen = folder / "spec_seen.json"
    body = f"""
spec = json.loads(open(args[0]).read())
open({str(seen)!r}, "w").write(json.dumps(spec))
"""
    return fake_interpreter(folder, PROBE_ANSWER + body + textwrap.dedent(answer)), seen


def test_no_llama_cpp_here_gives_none_and_a_reason(tmp_path, monkeypatch):
    broken = fake_interpreter(tmp_path, "raise ModuleNotFoundError(\"No module named 'llama_cpp'\")\n")
    monkeypatch.setattr(sys, "executable", str(broken))  # "this interpreter" lacks llama_cpp
    assert llama_cpp_interpreter(None)[0] is None
    out = llama_cpp_speeds({"m": tmp_path / "m.gguf"}, ["hi"], new_tokens=4, rounds=1, threads=1, python=None)
    assert out["models"] is None
    assert out["reason"].startswith("llama-cpp-python not installed") and "llama_cpp" in out["reason"]
    assert out["record"]["reason"] == out["reason"]


def test_a_missing_interpreter_gives_a_reason(tmp_path):
    python, reason = llama_cpp_interpreter(tmp_path / "nowhere" / "python")
    assert python is None and reason.startswith("llama-cpp-python not installed") and "nowhere" in reason


def test_the_given_interpreter_wins_and_this_one_is_used_when_it_has_llama_cpp(tmp_path, monkeypatch):
    (tmp_path / "given").mkdir()
    (tmp_path / "here").mkdir()
    given = fake_interpreter(tmp_path / "given", PROBE_ANSWER)
    here = fake_interpreter(tmp_path / "here", PROBE_ANSWER)
    monkeypatch.setattr(sys, "executable", str(here))
    assert llama_cpp_interpreter(given) == (str(given), "9.9.9-fake")
    assert llama_cpp_interpreter(None) == (str(here), "9.9.9-fake")


ROUNDS = {
    "a": [[100.0, 10.0], [300.0, 30.0], [200.0, 50.0]],
    "b": [[1000.0, 7.0], [900.0, 9.0], [800.0, 8.0]],
}


def test_spec_and_answer_protocol_with_planted_numbers(tmp_path):
    python, got_spec = spec_recording_worker(
        tmp_path,
        f"""
rounds = {ROUNDS!r}
print("some llama.cpp chatter")
print(json.dumps({{"llama_cpp_python": "9.9.9-fake",
    "models": {{n: {{"prompt_tokens": 11, "rounds": rounds[n]}} for n in spec["models"]}}}}))
""",
    )
    ggufs = {"a": tmp_path / "a.gguf", "b": tmp_path / "b.gguf"}
    prompts = {"a": [[1, 2, 3], [4] * 300], "b": [[5, 6]]}
    out = llama_cpp_speeds(ggufs, prompts, new_tokens=8, rounds=3, threads=2, python=python)

    spec = json.loads(got_spec.read_text())
    assert spec["threads"] == 2 and spec["new_tokens"] == 8 and spec["rounds"] == 3
    assert spec["models"]["a"] == {"gguf": str(ggufs["a"].resolve()), "prompts": prompts["a"]}
    assert spec["n_ctx"] == 512 and spec["n_ctx"] >= 300 + 8  # fits the longest id prompt
    for name, planted in ROUNDS.items():
        row = out["models"][name]
        prompt, generated = [r[0] for r in planted], [r[1] for r in planted]
        assert row["prompt_tokens_per_s"] == statistics.median(prompt)
        assert (row["prompt_tokens_per_s_min"], row["prompt_tokens_per_s_max"]) == (min(prompt), max(prompt))
        assert row["generated_tokens_per_s"] == statistics.median(generated)
        assert (row["generated_tokens_per_s_min"], row["generated_tokens_per_s_max"]) == (
            min(generated),
            max(generated),
        )
        assert row["rounds"] == planted and row["prompt_tokens"] == 11
    assert out["models"]["a"]["generated_tokens_per_s"] == 30.0  # the median, not the mean (30.0 too) or last
    assert out["models"]["b"]["generated_tokens_per_s"] == 8.0
    record = out["record"]
    assert record["llama_cpp_python"] == "9.9.9-fake" and record["python"] == str(python)
    assert (record["threads"], record["rounds"], record["new_tokens"], record["warmup_rounds"]) == (
        2,
        3,
        8,
        1,
    )
    assert record["prompts"] == {"a": 2, "b": 1}
    assert {"cores", "others_cores", "busy", "method", "description"} <= set(record["load"])
    assert record["busy"] == record["load"]["busy"] and isinstance(record["busy"], bool)


def test_text_prompts_get_the_default_context(tmp_path):
    python, got_spec = spec_recording_worker(
        tmp_path,
        """
print(json.dumps({"models": {n: {"prompt_tokens": 1, "rounds": [[1.0, 2.0]]} for n in spec["models"]}}))
""",
    )
    out = llama_cpp_speeds(
        {"a": tmp_path / "a.gguf"}, ["<|im_start|>hi"], new_tokens=4, rounds=1, threads=1, python=python
    )
    assert json.loads(got_spec.read_text())["n_ctx"] == llama_speed.TEXT_N_CTX
    assert out["models"]["a"]["generated_tokens_per_s"] == 2.0
    assert out["record"]["llama_cpp_python"] == "9.9.9-fake"  # the probe's, when the answer has none


def test_a_crashing_worker_names_the_model_file(tmp_path):
    python = fake_interpreter(
        tmp_path,
        PROBE_ANSWER
        + """
spec = json.loads(open(args[0]).read())
for name, model in spec["models"].items():
    print(f"kdistill-llama-speed: loading {name} {model['gguf']}", file=sys.stderr, flush=True)
    if name == "bad":
        os.kill(os.getpid(), signal.SIGSEGV)
""",
    )
    ggufs = {"good": tmp_path / "good.gguf", "bad": tmp_path / "bad.gguf"}
    with pytest.raises(LlamaCppError, match="SIGSEGV") as caught:
        llama_cpp_speeds(ggufs, ["x"], new_tokens=4, rounds=1, threads=1, python=python)
    assert str(ggufs["bad"].resolve()) in str(caught.value) and "loading bad" in str(caught.value)


def test_a_failing_worker_says_why(tmp_path):
    python = fake_interpreter(
        tmp_path,
        PROBE_ANSWER
        + """
print("kdistill-llama-speed: timing (round 1) m /x/m.gguf", file=sys.stderr, flush=True)
raise ValueError("llama_decode returned -3")
""",
    )
    with pytest.raises(
        LlamaCppError, match=r"exit code 1\) while timing \(round 1\) m /x/m.gguf.*llama_decode"
    ):
        llama_cpp_speeds({"m": tmp_path / "m.gguf"}, ["x"], new_tokens=4, rounds=1, threads=1, python=python)


def test_a_hanging_worker_times_out_naming_the_file(tmp_path):
    python = fake_interpreter(
        tmp_path,
        PROBE_ANSWER
        + """
spec = json.loads(open(args[0]).read())
print(f"kdistill-llama-speed: loading m {spec['models']['m']['gguf']}", file=sys.stderr, flush=True)
time.sleep(60)
""",
    )
    gguf = tmp_path / "m.gguf"
    with pytest.raises(LlamaCppError, match="timeout") as caught:
        llama_cpp_speeds({"m": gguf}, ["x"], new_tokens=4, rounds=1, threads=1, python=python, timeout_s=1.5)
    assert str(gguf.resolve()) in str(caught.value)


class FakeLlama:
    """llama_cpp.Llama's surface the worker uses; every eval is logged, one token per character of text."""

    log: list[tuple[str, str, int]] = []

    def __init__(self, model_path: str, n_ctx: int, **_: object) -> None:
        self.path, self.n_ctx, self.n_tokens = model_path, n_ctx, 0

        class Scores:
            def __getitem__(self, _row: int) -> types.SimpleNamespace:
                return types.SimpleNamespace(argmax=lambda: 7)

        self.scores = Scores()

    def tokenize(self, text: bytes, add_bos: bool, special: bool) -> list[int]:
        assert add_bos is False and special is True
        return list(text)

    def reset(self) -> None:
        self.n_tokens = 0

    def eval(self, ids: list[int]) -> None:
        self.log.append((Path(self.path).name, "prompt" if self.n_tokens == 0 else "token", len(ids)))
        self.n_tokens += len(ids)


def test_the_worker_times_models_in_turns_and_drops_the_warmup(monkeypatch):
    FakeLlama.log = []
    monkeypatch.setitem(
        sys.modules, "llama_cpp", types.SimpleNamespace(Llama=FakeLlama, __version__="0.0-fake")
    )
    spec = {
        "models": {
            "a": {"gguf": "/m/a.gguf", "prompts": ["abc", [1, 2]]},
            "b": {"gguf": "/m/b.gguf", "prompts": ["xy"]},
        },
        "threads": 1,
        "new_tokens": 3,
        "rounds": 2,
        "n_ctx": 64,
    }
    out = llama_speed.worker(spec)
    assert out["llama_cpp_python"] == "0.0-fake"
    assert out["models"]["a"]["prompt_tokens"] == 5 and out["models"]["b"]["prompt_tokens"] == 2
    assert all(len(m["rounds"]) == 2 for m in out["models"].values())  # the warm-up round is not kept
    prompts = [(name, n) for name, kind, n in FakeLlama.log if kind == "prompt"]
    # warm-up a b, then b a, then a b: the order reversed every other round
    assert [name for name, _ in prompts] == ["a.gguf"] * 2 + ["b.gguf"] + ["b.gguf"] + ["a.gguf"] * 2 + [
        "a.gguf"
    ] * 2 + ["b.gguf"]
    assert prompts[:2] == [("a.gguf", 3), ("a.gguf", 2)]  # text tokenized, ids used as they are
    tokens = [n for _, kind, n in FakeLlama.log if kind == "token"]
    assert tokens == [1] * (3 * 3 * 3)  # 3 new tokens, one per eval, for 3 prompts in 3 rounds
    assert all(p > 0 and g > 0 for m in out["models"].values() for p, g in m["rounds"])


def test_the_worker_refuses_a_prompt_longer_than_its_context(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=FakeLlama, __version__="0"))
    spec = {
        "models": {"a": {"gguf": "/m/a.gguf", "prompts": [[1] * 60]}},
        "threads": 1,
        "new_tokens": 8,
        "rounds": 1,
        "n_ctx": 64,
    }
    with pytest.raises(ValueError, match="/m/a.gguf: a prompt of 60 tokens"):
        llama_speed.worker(spec)


def test_the_worker_file_imports_only_the_standard_library_at_the_top():
    """Run by path in an interpreter without kdistill: no kdistill (or torch) import outside functions."""
    source = Path(llama_speed.__file__).read_text()
    top = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert all("kdistill" not in line and "torch" not in line and "numpy" not in line for line in top), top


def test_an_answer_without_a_model_is_an_error_not_a_key_error(tmp_path):
    python = fake_interpreter(tmp_path, PROBE_ANSWER + 'print(json.dumps({"models": {}}))\n')
    with pytest.raises(LlamaCppError, match="incomplete \\(KeyError: 'm'\\)"):
        llama_cpp_speeds({"m": tmp_path / "m.gguf"}, ["x"], new_tokens=4, rounds=1, threads=1, python=python)
