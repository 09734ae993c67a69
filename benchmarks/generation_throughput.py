"""Throughput of `kdistill generate` against a loopback OpenAI-compatible server with a fixed latency.

The server (tests/fixtures/openai_server.py) runs in its own process and answers every request after
`--latency` seconds (200 ms by default), so the ideal rate is concurrency / latency. For each
concurrency the whole pipeline runs as a user would run it: prompt file -> requests -> judged rows ->
fsynced journal -> shard + manifest, into a fresh output directory, `concurrency * rounds` prompts.
"end to end" divides the prompts by the wall time of `generate()` (opening the store, loading the
prompts, the final seal included); "requests phase" by the time from the first request to the last
committed row.

    python benchmarks/generation_throughput.py            # prints a table, writes results/generation_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "generation_throughput.json"


def serve(latency: float) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.openai_server import ScriptedServer

    server = ScriptedServer(latency=latency).start()
    print(server.base_url, flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin


def run_level(base_url: str, concurrency: int, n: int, work: Path) -> dict:
    from kdistill.generate.run import GenerationConfig, generate

    prompts = work / f"prompts-{concurrency}.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"c{concurrency}-p{i}"}) + "\n" for i in range(n)))
    cfg = GenerationConfig.model_validate(
        {
            "prompts": prompts,
            "out": work / f"out-{concurrency}",
            "teacher": {"base_url": base_url, "model": "bench", "api_key_env": None},
            "sampling": {"max_tokens": 64},
            "concurrency": concurrency,
        }
    )
    commits: list[tuple[float, int]] = []
    started = time.perf_counter()
    summary = generate(cfg, progress=lambda s: commits.append((time.perf_counter(), s.committed)))
    wall = time.perf_counter() - started
    assert summary.committed == n and summary.missing == 0, summary
    t0 = commits[0][0]  # the first progress call comes right before the first request
    t1 = next(t for t, c in commits if c == n)
    return {
        "concurrency": concurrency,
        "requests": n,
        "wall_s": wall,
        "end_to_end_rps": n / wall,
        "requests_phase_rps": n / (t1 - t0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.2, help="server latency per request, seconds")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--rounds", type=int, default=20, help="prompts per level = concurrency * rounds")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON results go")
    args = parser.parse_args()
    if args.serve:
        return serve(args.latency)

    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--latency", str(args.latency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            (work / "warmup").mkdir()
            run_level(base_url, 8, 16, work / "warmup")  # imports, first connections
            levels = []
            for c in args.concurrency:
                level = run_level(base_url, c, c * args.rounds, work)
                level["ideal_rps"] = c / args.latency
                level["end_to_end_of_ideal"] = level["end_to_end_rps"] / level["ideal_rps"]
                level["requests_phase_of_ideal"] = level["requests_phase_rps"] / level["ideal_rps"]
                levels.append(level)
                print(
                    f"concurrency {c:>3}: {level['end_to_end_rps']:7.1f} req/s end to end, "
                    f"{level['requests_phase_rps']:7.1f} in the requests phase, ideal {level['ideal_rps']:6.1f}",
                    flush=True,
                )
    finally:
        server.stdin.close()
        server.wait(timeout=10)

    print()
    print(
        "| concurrency | requests | wall s | req/s end to end | req/s requests phase | ideal | end to end / ideal | requests phase / ideal |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for lv in levels:
        print(
            f"| {lv['concurrency']} | {lv['requests']} | {lv['wall_s']:.2f} | {lv['end_to_end_rps']:.1f} | "
            f"{lv['requests_phase_rps']:.1f} | {lv['ideal_rps']:.0f} | {lv['end_to_end_of_ideal']:.0%} | {lv['requests_phase_of_ideal']:.0%} |"
        )
    result = {
        "benchmark": "generation_throughput",
        "latency_s": args.latency,
        "rounds": args.rounds,
        "levels": levels,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "openai": metadata.version("openai"),
        },
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from kdistill.io import atomic_write_text

    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
