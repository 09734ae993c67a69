"""The LM report's deploy columns (GGUF size, llama.cpp tok/s): present only with deploy data, the speed
busy-marked by metrics["deploy"] alone, and described under the table."""

from __future__ import annotations

import copy

from rich.console import Console

from kdistill.evaluation.report import (
    LM_RESULT_COLUMNS,
    result_columns,
    results_rows,
    results_table,
    write_report,
)
from kdistill.runs.timing import MachineLoad


def _deploy_record(busy: bool) -> dict:
    load = MachineLoad(cores=2, load_average_1m=2.0, others_cores=1.5 if busy else 0.1, busy=busy)
    return {
        "gguf_type": "f16",
        "new_tokens": 64,
        "rounds": 3,
        "runtime": "llama.cpp (llama-cpp-python)",
        "llama_cpp_python": "0.3.36",
        "threads": 2,
        "warmup_rounds": 1,
        "prompts": {"teacher": 4, "cached": 4},
        "load": load.record(),
        "busy": busy,
    }


def _lm(deploy: dict | None = None, *, timing_busy: bool = False, reasoning: bool = False) -> dict:
    models = [
        {"name": "teacher", "role": "teacher", "params": 134_515_008, "size_bytes": 538_060_032},
        {
            "name": "student (pruned, before)",
            "role": "before",
            "params": 41_600_000,
            "size_bytes": 166_400_000,
        },
        {"name": "student (KD)", "role": "distilled", "params": 41_600_000, "size_bytes": 166_400_000},
    ]
    for model, tps in zip(models, (400.0, 900.0, 900.0), strict=True):
        model |= {"latency_ms": 80.0 * 400 / tps, "tokens_per_s": tps}
    metrics = {"task": "lm", "models": models, "timing": {"busy": timing_busy, "rounds": 3}}
    if reasoning:
        metrics["reasoning"] = {"teacher": {}, "arms": []}
    if deploy is not None:
        for model, size, tps in zip(
            models, (270_000_000, None, 84_000_000), (52.5, None, 151.2), strict=True
        ):
            model |= {"gguf_bytes": size, "gguf_type": "f16" if size else None, "deploy_tokens_per_s": tps}
        metrics["deploy"] = deploy
    return metrics


def test_runs_without_deploy_keep_todays_columns(tmp_path):
    metrics = _lm()
    assert result_columns(metrics) == LM_RESULT_COLUMNS
    assert all(len(row) == len(LM_RESULT_COLUMNS) for row in results_rows(metrics))
    page = write_report(tmp_path, metrics).read_text()
    assert "GGUF size" not in page and "llama.cpp" not in page
    # a deploy record whose models have no numbers adds no columns either (the reason is still described)
    empty = _lm()
    empty["deploy"] = {
        "gguf_type": "f16",
        "not_measured": "no model could be exported to GGUF",
        "busy": False,
    }
    assert result_columns(empty) == LM_RESULT_COLUMNS
    assert (
        "speed not measured: no model could be exported to GGUF" in write_report(tmp_path, empty).read_text()
    )


def test_deploy_columns_sit_beside_size_and_tokens_per_s():
    metrics = _lm(_deploy_record(busy=False))
    columns = result_columns(metrics)
    assert columns[columns.index("size") + 1] == "GGUF size"
    assert columns[columns.index("tokens / s") + 1] == "llama.cpp tok/s"
    assert len(columns) == len(LM_RESULT_COLUMNS) + 2
    rows = [dict(zip(columns, row, strict=True)) for row in results_rows(metrics)]
    assert rows[0]["GGUF size"] == "270 MB" and rows[0]["llama.cpp tok/s"] == "52.5"
    assert rows[1]["GGUF size"] == "—" and rows[1]["llama.cpp tok/s"] == "—"
    assert rows[2]["GGUF size"] == "84.0 MB" and rows[2]["llama.cpp tok/s"] == "151"
    assert rows[2]["size"] == "166 MB" and rows[2]["tokens / s"] == "900"  # today's columns unchanged
    assert all("*" not in cell for row in rows for cell in row.values())  # quiet: nothing marked
    with_reasoning = result_columns(_lm(_deploy_record(busy=False), reasoning=True))
    assert with_reasoning[2] == "held-out solved" and "GGUF size" in with_reasoning


def test_a_busy_deploy_marks_only_the_llama_cpp_speed(tmp_path):
    metrics = _lm(_deploy_record(busy=True))
    before = copy.deepcopy(metrics)
    columns = result_columns(metrics)
    rows = [dict(zip(columns, row, strict=True)) for row in results_rows(metrics)]
    assert rows[0]["llama.cpp tok/s"] == "52.5*" and rows[2]["llama.cpp tok/s"] == "151*"
    assert rows[1]["llama.cpp tok/s"] == "—"  # nothing measured, nothing marked
    assert rows[2]["GGUF size"] == "84.0 MB" and rows[2]["tokens / s"] == "900"  # PyTorch timing was quiet
    assert metrics == before
    console = Console(record=True, width=300)
    console.print(results_table(metrics))
    text = console.export_text()
    assert "llama.cpp: llama-cpp-python 0.3.36, f16 GGUF, 3 rounds after 1 warm-up round" in text
    assert "151*" in text and "BUSY" in text
    page = write_report(tmp_path, metrics).read_text()
    assert (
        '<p class="meta deploy busy">' in page
        and "llama.cpp speeds marked * were taken on a busy machine" in page
    )


def test_a_busy_pytorch_timing_does_not_mark_a_quiet_deploy():
    metrics = _lm(_deploy_record(busy=False), timing_busy=True)
    columns = result_columns(metrics)
    teacher = dict(zip(columns, results_rows(metrics)[0], strict=True))
    assert teacher["tokens / s"] == "400*" and teacher["llama.cpp tok/s"] == "52.5"


def test_the_deploy_line_names_models_not_exported(tmp_path):
    record = _deploy_record(busy=False) | {
        "not_exported": {"teacher": "model_type 'gpt2' cannot be exported"}
    }
    page = write_report(tmp_path, _lm(record)).read_text()
    assert "Not exported to GGUF: teacher (model_type &#x27;gpt2&#x27; cannot be exported)." in page
    assert "4 prompts of 64 generated tokens each, 2 threads; other processes used 0.1 of 2 cores" in page
