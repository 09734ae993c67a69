"""The `driving` recipe's benchmark rows: one per arm from a finished run's metrics.json, as a Markdown table.

    kdistill run driving                                  # (= make driving)
    python benchmarks/driving_rows.py runs/driving-<stamp>  # rows for benchmarks/README.md

Per arm: mAP@[.5:.95] and mAP@.5 (mean ± std over seeds, and each seed), the gain over the scratch arm in mAP
points with the spread of the per-seed differences (seeds pair up: the same seed gives the same initial
weights and data order in every arm), agreement with the teacher, PyTorch and onnxruntime ms per image at
batch 1 and the teacher's latency over the student's. Writes nothing; the run folder is the record.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def rows(metrics: dict[str, Any]) -> list[str]:
    models = {m["name"]: m for m in metrics["models"]}
    teacher = models["teacher"]
    scratch = next((m for m in metrics["models"] if m["role"] == "scratch"), None)
    lines = [
        "| arm | terms | mAP@[.5:.95] | per seed | mAP@.5 | vs scratch (points) | agrees w/ teacher (F1) "
        "| ms / image (PyTorch) | ms / image (onnxruntime) | teacher latency / student |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in metrics["models"]:
        per_seed = m.get("map_per_seed") or [m["map"]]
        terms = ", ".join(m.get("losses", [])) or ("—" if m["role"] != "teacher" else "its own training")
        if scratch is not None and m["role"] == "distilled":
            gains = [100 * (a - b) for a, b in zip(per_seed, scratch["map_per_seed"], strict=True)]
            spread = f" ± {statistics.stdev(gains):.1f}" if len(gains) > 1 else ""
            gain = f"{statistics.mean(gains):+.1f}{spread}"
        else:
            gain = "—"
        onnx = m.get("onnx_latency_ms")
        lines.append(
            f"| {m['name']} | {terms} | {100 * m['map']:.1f} ± {100 * m.get('map_std', 0.0):.1f} "
            f"| {' / '.join(f'{100 * v:.1f}' for v in per_seed)} | {100 * m['map_50']:.1f} | {gain} "
            f"| {m['agreement_f1']:.2f} | {m['latency_ms']:.2f} | {'—' if onnx is None else f'{onnx:.2f}'} "
            f"| {teacher['latency_ms'] / m['latency_ms']:.1f}x |"
        )
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python benchmarks/driving_rows.py RUN_DIR", file=sys.stderr)
        return 2
    path = Path(argv[0]) / "metrics.json"
    if not path.is_file():
        print(f"{path}: no such file (is the run finished?)", file=sys.stderr)
        return 2
    metrics = json.loads(path.read_text())
    print("\n".join(rows(metrics)))
    run = metrics.get("run", {})
    print(f"\nrun {run.get('run_dir')}: {run.get('wall_seconds_this_session')} s this session")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
