"""Speed in llama.cpp: prompt and generated tokens/s of GGUF files, timed in turns in another interpreter.

llama-cpp-python builds llama.cpp from source and is no kdistill dependency, so it usually lives in an
environment of its own (`.venv-llama`, made by `benchmarks/deploy_speed.py --setup`) that has no kdistill.
This file is therefore two things:

- run by path under that interpreter (`python /abs/path/llama_speed.py spec.json`), it is the worker: it
  imports only the standard library and llama_cpp, loads every GGUF once and times them in turns (a
  warm-up round discarded, then `rounds` rounds, the order reversed every other round), printing each
  round's raw tokens/s as one JSON line; `--probe` prints the llama-cpp-python version and nothing else;
- imported in kdistill (`llama_cpp_speeds`), it chooses the interpreter, writes the spec, runs the worker
  under a timeout, records how busy the machine was (kdistill.runs.timing's rule) and summarises the rounds
  into median, min and max per model.

What is timed, per prompt: `prompt tokens/s`, one batched forward over the prompt's tokens; `generated
tokens/s`, exactly `new_tokens` greedy tokens after it (EOS ignored, so no model is faster by stopping
early), one token per forward as a chat turn runs.

    speeds = llama_cpp_speeds({"teacher": Path("t.gguf")}, prompts, new_tokens=64, rounds=3, threads=2,
                              python=".venv-llama/bin/python")
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["LlamaCppError", "llama_cpp_interpreter", "llama_cpp_speeds"]

RUNTIME = "llama.cpp (llama-cpp-python)"
WARMUP_ROUNDS = 1  # the first round warms caches and llama.cpp's thread pool; it is not kept
PROBE = "--probe"
# the worker says on stderr what it is about to do, so a crash (a segfault prints nothing) names its file
PROGRESS = "kdistill-llama-speed:"
DEFAULT_TIMEOUT_S = 3600.0
PROBE_TIMEOUT_S = 120.0
TEXT_N_CTX = 2048  # context when prompts are text (their token counts are only known inside the worker)


class LlamaCppError(RuntimeError):
    """The llama.cpp worker crashed, failed or ran past its timeout; the message names the model file."""


# --- the worker: standard library and llama_cpp only -------------------------------------------------------


def _progress(doing: str, name: str, gguf: str) -> None:
    print(f"{PROGRESS} {doing} {name} {gguf}", file=sys.stderr, flush=True)


def _time_one(llm: Any, prompts: list[list[int]], new_tokens: int) -> tuple[float, float]:
    """(prompt tokens/s, generated tokens/s) over all `prompts`, greedy, exactly `new_tokens` each."""
    prompt_s = generate_s = 0.0
    for ids in prompts:
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        prompt_done = time.perf_counter()
        for _ in range(new_tokens):
            llm.eval([int(llm.scores[llm.n_tokens - 1].argmax())])
        prompt_s += prompt_done - start
        generate_s += time.perf_counter() - prompt_done
    return sum(map(len, prompts)) / prompt_s, len(prompts) * new_tokens / generate_s


def worker(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Time every model of `spec` in turns; the raw tokens/s of each kept round, per model."""
    import llama_cpp

    threads, new_tokens, n_ctx = spec["threads"], spec["new_tokens"], spec["n_ctx"]
    llms, prompts = {}, {}
    for name, model in spec["models"].items():
        _progress("loading", name, model["gguf"])
        llm = llama_cpp.Llama(
            model_path=model["gguf"],
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=512,
            verbose=False,
        )
        # text is tokenized by llama.cpp as the chat template rendered it (no BOS added); ids are used as given
        ids = [
            p if isinstance(p, list) else llm.tokenize(p.encode(), add_bos=False, special=True)
            for p in model["prompts"]
        ]
        longest = max(map(len, ids))
        if longest + new_tokens > n_ctx:
            raise ValueError(
                f"{model['gguf']}: a prompt of {longest} tokens + {new_tokens} new ones exceeds n_ctx {n_ctx}"
            )
        llms[name], prompts[name] = llm, ids
    order = list(llms)
    kept: dict[str, list[list[float]]] = {name: [] for name in order}
    for r in range(WARMUP_ROUNDS + spec["rounds"]):
        for name in order if r % 2 == 0 else order[::-1]:
            _progress(f"timing (round {r})", name, spec["models"][name]["gguf"])
            prompt_tps, generated_tps = _time_one(llms[name], prompts[name], new_tokens)
            if r >= WARMUP_ROUNDS:
                kept[name].append([prompt_tps, generated_tps])
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "models": {
            name: {"prompt_tokens": sum(map(len, prompts[name])), "rounds": kept[name]} for name in order
        },
    }


def _worker_main(argv: list[str]) -> int:
    # run by path, this file's folder is on sys.path: its gguf.py and onnx.py must not shadow those packages
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    if argv == [PROBE]:
        import llama_cpp

        print(json.dumps({"llama_cpp_python": llama_cpp.__version__}))
        return 0
    if len(argv) != 1:
        print(f"usage: python {Path(__file__).name} SPEC.json | {PROBE}", file=sys.stderr)
        return 2
    try:
        result = worker(json.loads(Path(argv[0]).read_text()))
    except Exception:  # the traceback goes to stderr after the progress line naming the model
        traceback.print_exc()
        return 1
    print(json.dumps(result))
    return 0


# --- kdistill's side ----------------------------------------------------------------------------------------


def _run_worker(python: str, args: list[str], timeout_s: float) -> tuple[int | None, str, str]:
    """(exit code or None on timeout, stdout, stderr) of the worker; a worker past its timeout is killed."""
    with subprocess.Popen(
        [python, str(Path(__file__).resolve()), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            return None, out, err
    return proc.returncode, out, err


def llama_cpp_interpreter(python: str | os.PathLike[str] | None = None) -> tuple[str | None, str]:
    """(interpreter, llama-cpp-python version), or (None, why not): `python` if given, else this interpreter
    when llama_cpp imports in it. The import is tried in a child process, so a broken build cannot crash
    this one."""
    candidate = str(Path(python).expanduser()) if python is not None else sys.executable
    hint = (
        ""
        if python is not None
        else " (give an interpreter that has it, e.g. .venv-llama/bin/python from "
        "`benchmarks/deploy_speed.py --setup`)"
    )
    if python is not None and not Path(candidate).is_file():
        return None, f"llama-cpp-python not installed: no interpreter at {candidate}"
    try:
        code, out, err = _run_worker(candidate, [PROBE], PROBE_TIMEOUT_S)
    except OSError as error:
        return None, f"llama-cpp-python not installed: cannot run {candidate}: {error}"
    if code != 0:
        lines = err.strip().splitlines()
        why = (
            lines[-1]
            if lines
            else f"exit code {code}"
            if code is not None
            else f"no answer in {PROBE_TIMEOUT_S:g} s"
        )
        return None, f"llama-cpp-python not installed in {candidate}: {why}{hint}"
    try:
        return candidate, str(json.loads(out.strip().splitlines()[-1])["llama_cpp_python"])
    except (ValueError, KeyError, IndexError):
        return (
            None,
            f"llama-cpp-python not installed in {candidate}: its probe answered {out.strip()[-200:]!r}",
        )


def _failure(code: int | None, err: str, timeout_s: float) -> str:
    """What went wrong, naming the model the worker was busy with (its last progress line)."""
    lines = err.strip().splitlines()
    progress = [line[len(PROGRESS) :].strip() for line in lines if line.startswith(PROGRESS)]
    at = f"while {progress[-1]}" if progress else "before loading any model"
    if code is None:
        return f"the llama.cpp worker ran past its {timeout_s:g} s timeout {at}"
    how = f"exit code {code}"
    if code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    detail = [line for line in lines if not line.startswith(PROGRESS)][-3:]
    return f"the llama.cpp worker failed ({how}) {at}" + (": " + " | ".join(detail) if detail else "")


def _children_cpu_s() -> float:
    times = os.times()
    return times.children_user + times.children_system  # the worker's CPU, once it has been waited for


def _summary(rounds: list[list[float]], column: int) -> tuple[float, float, float]:
    values = [r[column] for r in rounds]
    return statistics.median(values), min(values), max(values)


def _model_speeds(got: Mapping[str, Any], gguf: str) -> dict[str, Any]:
    """One model's answer from the worker as median, min and max tokens/s, with its raw rounds."""
    prompt, generated = _summary(got["rounds"], 0), _summary(got["rounds"], 1)
    return {
        "gguf": gguf,
        "prompt_tokens": got["prompt_tokens"],
        "prompt_tokens_per_s": prompt[0],
        "prompt_tokens_per_s_min": prompt[1],
        "prompt_tokens_per_s_max": prompt[2],
        "generated_tokens_per_s": generated[0],
        "generated_tokens_per_s_min": generated[1],
        "generated_tokens_per_s_max": generated[2],
        "rounds": got["rounds"],  # [prompt tokens/s, generated tokens/s] per kept round
    }


def llama_cpp_speeds(
    ggufs: Mapping[str, str | os.PathLike[str]],
    prompts: Sequence[str | Sequence[int]] | Mapping[str, Sequence[str | Sequence[int]]],
    *,
    new_tokens: int,
    rounds: int,
    threads: int,
    python: str | os.PathLike[str] | None = None,
    n_ctx: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    """Prompt and generated tokens/s (median, min, max over `rounds` kept rounds) of every GGUF in llama.cpp.

    `prompts`: one list for every model, or a list per model name; each prompt is text (tokenized by
    llama.cpp, special tokens parsed, no BOS added: render the chat template first) or token ids (used as
    they are). `python`: the interpreter with llama-cpp-python (see llama_cpp_interpreter). `n_ctx`: None
    fits the longest id prompt plus `new_tokens` (2048 for text prompts).

    Returns {"models": {name: {...speeds, "prompt_tokens", "rounds"}}, "record": {...}}; without
    llama-cpp-python {"models": None, "reason": ..., "record": {..., "reason": ...}}. The record has the
    runtime, its version, the settings and the machine's load while timing (kdistill.runs.timing's rule:
    other processes' CPU, from /proc/stat less this process and the worker). Raises LlamaCppError, naming
    the model file, when the worker crashes, fails or runs past `timeout_s`.
    """
    from kdistill.runs.timing import CpuSample, cpu_sample, machine_load

    if not ggufs:
        raise ValueError("no GGUF files to time")
    if new_tokens < 1 or rounds < 1 or threads < 1:
        raise ValueError(f"need new_tokens, rounds and threads >= 1, got {new_tokens}, {rounds}, {threads}")
    interpreter, version = llama_cpp_interpreter(python)
    if interpreter is None:
        return {"models": None, "reason": version, "record": {"runtime": RUNTIME, "reason": version}}
    per_model = {
        name: [
            p if isinstance(p, str) else [int(i) for i in p]
            for p in (prompts[name] if isinstance(prompts, Mapping) else prompts)
        ]
        for name in ggufs
    }
    if any(not p for p in per_model.values()):
        raise ValueError("every model needs at least one prompt")
    if n_ctx is None:
        id_prompts = [p for ps in per_model.values() for p in ps]
        if any(isinstance(p, str) for p in id_prompts):
            n_ctx = TEXT_N_CTX
        else:  # whole 256-token blocks, at least 512: llama.cpp's own default context is larger still
            n_ctx = max(512, -(-(max(map(len, id_prompts)) + new_tokens) // 256) * 256)
    spec = {
        "models": {
            name: {"gguf": str(Path(path).resolve()), "prompts": per_model[name]}
            for name, path in ggufs.items()
        },
        "threads": threads,
        "new_tokens": new_tokens,
        "rounds": rounds,
        "n_ctx": n_ctx,
    }
    with tempfile.TemporaryDirectory(prefix="kdistill-llama-") as tmp:
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        try:
            load_average: float | None = os.getloadavg()[0]
        except OSError:
            load_average = None
        first, children_first = cpu_sample(), _children_cpu_s()
        code, out, err = _run_worker(interpreter, [str(spec_file)], timeout_s)
        last, children_last = cpu_sample(), _children_cpu_s()
    if code != 0:
        raise LlamaCppError(_failure(code, err, timeout_s))
    try:
        measured = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise LlamaCppError(f"the llama.cpp worker answered no JSON line: {out.strip()[-300:]!r}") from None
    # the worker's CPU is ours, not other processes': count it with this process's own
    before = CpuSample(first.wall_s, first.machine_busy_s, first.own_cpu_s + children_first)
    after = CpuSample(last.wall_s, last.machine_busy_s, last.own_cpu_s + children_last)
    cores = os.cpu_count() or 1
    load = machine_load(
        before, after, load_average, cores=cores, own_threads=threads, busy_share=0.25
    )  # time_models' rule
    try:
        models = {
            name: _model_speeds(measured["models"][name], spec["models"][name]["gguf"]) for name in ggufs
        }
    except (KeyError, TypeError, ValueError, IndexError) as err:  # statistics of no rounds: ValueError
        raise LlamaCppError(
            f"the llama.cpp worker's answer is incomplete ({type(err).__name__}: {err}): {out.strip()[-300:]!r}"
        ) from None
    record = {
        "runtime": RUNTIME,
        "llama_cpp_python": measured.get("llama_cpp_python", version),
        "python": interpreter,
        "threads": threads,
        "rounds": rounds,
        "warmup_rounds": WARMUP_ROUNDS,
        "new_tokens": new_tokens,
        "prompts": {name: len(p) for name, p in per_model.items()},
        "n_ctx": n_ctx,
        "load": load.record(),
        "busy": load.busy,
    }
    return {"models": models, "record": record}


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
