"""`kdistill generate` over N teacher servers: does the rate grow N-fold, and does a killed server lose anything?

Each server is the loopback test server (tests/fixtures/openai_server.py) in its own process, serving at
most `--max-concurrency` requests at once (C; more wait in its queue, as vLLM's do) after a fixed
`--latency`, so one server's top rate is C / latency. For N = 1, 2, 4 servers the whole pipeline runs as
a user runs it (prompt file -> EndpointPool -> judged rows -> journal -> shards) with `endpoints:` N
entries of `concurrency: C` and `concurrency: N * C`, `rounds * N * C` prompts, into a fresh directory;
each level is repeated and the median kept. Goal: rate(N) >= 0.9 * N * rate(1).

Then the failure run: N = 4 servers, one of them SIGKILLed when a third of the rows are committed. It
must complete on the other three with every prompt answered exactly once (rows, distinct record ids and
the set of prompts are counted).

    python benchmarks/generation_servers.py       # prints a table, writes results/generation_servers.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "generation_servers.json"


def serve(latency: float, max_concurrency: int) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.openai_server import ScriptedServer

    server = ScriptedServer(latency=latency, max_concurrency=max_concurrency).start()
    print(server.base_url, flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin (or kills us)


def start_servers(n: int, latency: float, cap: int) -> list[tuple[subprocess.Popen, str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--serve", "--latency", str(latency), "--max-concurrency", str(cap)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    return [(p, p.stdout.readline().strip()) for p in procs]


def stop_servers(servers: list[tuple[subprocess.Popen, str]]) -> None:
    for proc, _ in servers:
        if proc.poll() is None:
            proc.stdin.close()
            proc.wait(timeout=10)


def run_once(urls: list[str], cap: int, n: int, out: Path, tag: str, progress=None) -> tuple[dict, object]:
    from kdistill.generate.run import GenerationConfig, generate

    out.mkdir(parents=True)
    prompts = out / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{tag}-p{i}"}) + "\n" for i in range(n)))
    cfg = GenerationConfig.model_validate(
        {
            "prompts": prompts,
            "out": out / "gens",
            "teacher": {
                "endpoints": [{"base_url": u, "concurrency": cap} for u in urls],
                "model": "bench",
                "api_key_env": None,
                "endpoint_health": {"backoff_s": 0.5, "max_backoff_s": 2.0},
            },
            "sampling": {"max_tokens": 64},
            "concurrency": len(urls) * cap,
        }
    )
    commits: list[tuple[float, int]] = []

    def record(stats) -> None:
        commits.append((time.perf_counter(), stats.committed))
        if progress is not None:
            progress(stats)

    started = time.perf_counter()
    summary = generate(cfg, progress=record)
    wall = time.perf_counter() - started
    t0 = commits[0][0]  # the first progress call comes right before the first request
    t1 = next(t for t, c in commits if c == n)
    return {"requests": n, "wall_s": wall, "rps": n / wall, "requests_phase_rps": n / (t1 - t0)}, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.05, help="server latency per request, seconds")
    parser.add_argument(
        "--max-concurrency", type=int, default=4, help="C: requests one server serves at once"
    )
    parser.add_argument("--servers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=30, help="prompts per level = rounds * N * C")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON results go")
    args = parser.parse_args()
    if args.serve:
        return serve(args.latency, args.max_concurrency)

    from kdistill.generate.store import load_generations

    cap, latency = args.max_concurrency, args.latency
    load_before = os.getloadavg()
    levels = []
    kill: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for n_servers in args.servers:
            servers = start_servers(n_servers, latency, cap)
            try:
                urls = [u for _, u in servers]
                run_once(urls, cap, 2 * n_servers * cap, work / f"warm-{n_servers}", "warm")
                n = args.rounds * n_servers * cap
                runs = [
                    run_once(urls, cap, n, work / f"n{n_servers}-{r}", f"n{n_servers}-{r}")[0]
                    for r in range(args.repeats)
                ]
            finally:
                stop_servers(servers)
            level = {
                "servers": n_servers,
                "requests": n,
                "rps_runs": [round(r["rps"], 1) for r in runs],
                "rps": statistics.median(r["rps"] for r in runs),
                "requests_phase_rps_runs": [round(r["requests_phase_rps"], 1) for r in runs],
                "requests_phase_rps": statistics.median(r["requests_phase_rps"] for r in runs),
                "ideal_rps": n_servers * cap / latency,
            }
            levels.append(level)
            print(
                f"{n_servers} servers: {level['rps']:.1f} req/s end to end (runs {level['rps_runs']}), "
                f"{level['requests_phase_rps']:.1f} in the requests phase",
                flush=True,
            )
        one = levels[0]
        assert one["servers"] == 1, "the first level must be one server (the reference)"
        for level in levels:
            level["of_n_times_single"] = level["rps"] / (level["servers"] * one["rps"])
            level["requests_phase_of_n_times_single"] = level["requests_phase_rps"] / (
                level["servers"] * one["requests_phase_rps"]
            )
            level["of_ideal"] = level["rps"] / level["ideal_rps"]

        # one server of four SIGKILLed a third of the way through
        servers = start_servers(4, latency, cap)
        try:
            urls = [u for _, u in servers]
            run_once(urls, cap, 16, work / "warm-kill", "warm")
            n = args.rounds * 4 * cap
            victim = servers[1][0]
            killed_at: list[int] = []

            def kill_a_third_in(stats) -> None:
                if stats.committed >= n // 3 and not killed_at:
                    victim.kill()  # SIGKILL: the kernel resets its connections
                    killed_at.append(stats.committed)

            result, summary = run_once(urls, cap, n, work / "kill", "kill", progress=kill_a_third_in)
        finally:
            stop_servers(servers)
        ds = load_generations(work / "kill" / "gens")
        kill = {
            "servers": 4,
            "requests": n,
            "killed_after_rows": killed_at[0],
            "rps": result["rps"],
            "rows": len(ds),
            "distinct_record_ids": len(set(ds["record_id"])),
            "prompts_answered": len(set(ds["prompt"])),
            "missing": summary.missing,
            "errors": summary.errors,
            "run_retries": summary.retries,
            "per_server": [
                {k: e[k] for k in ("url", "state", "answered", "failed", "ejections")}
                for e in summary.endpoints
            ],
        }
        kill["complete_and_exactly_once"] = (
            kill["rows"] == kill["distinct_record_ids"] == kill["prompts_answered"] == n
            and kill["missing"] == 0
        )
        print(
            f"kill: {kill['rows']} rows, {kill['distinct_record_ids']} distinct ids of {n}; "
            f"missing {kill['missing']}; per server {[e['answered'] for e in kill['per_server']]}",
            flush=True,
        )

    print()
    print(
        "| servers N | requests | req/s end to end | of N × single | req/s requests phase | of N × single "
        "| ideal N·C/latency | end to end of ideal |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for lv in levels:
        print(
            f"| {lv['servers']} | {lv['requests']} | {lv['rps']:.1f} | {lv['of_n_times_single']:.0%} | "
            f"{lv['requests_phase_rps']:.1f} | {lv['requests_phase_of_n_times_single']:.0%} | "
            f"{lv['ideal_rps']:.0f} | {lv['of_ideal']:.0%} |"
        )
    result = {
        "benchmark": "generation_servers",
        "latency_s": latency,
        "max_concurrency_per_server": cap,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "levels": levels,
        "goal": "rps(N) >= 0.9 * N * rps(1)",
        "goal_met_end_to_end": all(lv["of_n_times_single"] >= 0.9 for lv in levels),
        "goal_met_requests_phase": all(lv["requests_phase_of_n_times_single"] >= 0.9 for lv in levels),
        "kill_one_of_four": kill,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from kdistill.io import atomic_write_text

    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
