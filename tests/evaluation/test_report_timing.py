"""The report's Timing line (metrics["timing"]) and the busy-machine marks on speed cells."""

from __future__ import annotations

import copy
import html

from rich.console import Console

from kdistill.evaluation.report import (
    DETECTION_RESULT_COLUMNS,
    LM_RESULT_COLUMNS,
    RESULT_COLUMNS,
    SPEED_COLUMNS,
    results_rows,
    results_table,
    timing_line,
    write_report,
)
from kdistill.runs.timing import MachineLoad, ModelTiming, TimingPhase

HEADLINE = "student keeps 95% of the teacher's accuracy with 1/60 of its parameters, 4.2x faster per sample"


def _timing(busy: bool, **settings) -> dict:
    """metrics["timing"] as the recipes write it: TimingPhase.record."""
    load = MachineLoad(
        cores=2, load_average_1m=3.9 if busy else 0.4, others_cores=1.9 if busy else 0.1, busy=busy
    )
    phase = TimingPhase(
        models={"teacher": ModelTiming([0.05, 0.06, 0.05]), "student": ModelTiming([0.012, 0.011, 0.012])},
        rounds=3,
        warmup_rounds=1,
        repeats=10,
        threads=1,
        load=load,
    )
    return phase.record(**settings)


def _classify(timing: dict | None) -> dict:
    metrics = {
        "models": [
            {"name": "teacher", "role": "teacher", "accuracy": 0.98, "params": 94020, "latency_ms": 0.05},
            {"name": "student", "role": "distilled", "accuracy": 0.93, "params": 1567, "latency_ms": 0.0119},
            # no latency: its cells stay a dash, unmarked
            {"name": "other", "role": "scratch", "accuracy": 0.9, "params": 1567},
        ],
        "summary": {"headline": HEADLINE},
    }
    if timing is not None:
        metrics["timing"] = timing
    return metrics


def _rendered(table) -> str:
    console = Console(record=True, width=250)
    console.print(table)
    return console.export_text()


def test_metrics_without_timing_render_as_before(tmp_path) -> None:
    metrics = _classify(None)
    assert timing_line(metrics) is None
    rows = [dict(zip(RESULT_COLUMNS, row, strict=True)) for row in results_rows(metrics)]
    assert rows[1]["ms / sample"] == "0.0119 ms" and rows[1]["speedup"] == "4.2x"
    table = results_table(metrics)
    assert table.caption is None and str(table.title) == HEADLINE
    page = write_report(tmp_path, metrics).read_text()
    assert "Timing:" not in page and "busy machine" not in page


def test_a_quiet_timing_phase_is_described_under_the_table_and_marks_nothing(tmp_path) -> None:
    metrics = _classify(_timing(False, batch_size=1, device="cpu"))
    line = timing_line(metrics)
    assert line == (
        "Timing: 3 rounds after 1 warm-up round, models in turns, 10 calls per turn, 1 thread, batch size 1, "
        "device cpu; other processes used 0.1 of 2 cores (load average 0.4) while timing: quiet."
    )
    assert all("*" not in cell for row in results_rows(metrics) for cell in row)
    text = _rendered(results_table(metrics))
    assert "Timing: 3 rounds" in text and "quiet" in text and HEADLINE in text
    page = write_report(tmp_path, metrics).read_text()
    assert '<p class="meta timing">Timing: 3 rounds after 1 warm-up round' in page


def test_a_busy_machine_marks_every_speed_cell_and_says_the_figures_are_not_reliable(tmp_path) -> None:
    metrics = _classify(_timing(True, batch_size=1))
    rows = [dict(zip(RESULT_COLUMNS, row, strict=True)) for row in results_rows(metrics)]
    assert rows[0]["ms / sample"] == "0.0500 ms*" and rows[0]["speedup"] == "1.0x*"
    assert rows[1]["ms / sample"] == "0.0119 ms*" and rows[1]["speedup"] == "4.2x*"
    assert rows[2]["ms / sample"] == "—" and rows[2]["speedup"] == "—"  # nothing measured, nothing marked
    assert rows[1]["accuracy"] == "93.0 %" and rows[1]["params"] == "1,567"  # only speed is in doubt
    line = timing_line(metrics)
    assert "other processes used 1.9 of 2 cores (load average 3.9) while timing: BUSY" in line
    assert "busy machine" in line and "not reliable" in line
    text = _rendered(results_table(metrics))
    assert "not reliable" in text and "0.0119 ms*" in text
    page = write_report(tmp_path, metrics).read_text()
    assert '<p class="meta timing busy">' in page and "not reliable" in page
    assert "0.0119 ms*" in page
    assert html.escape(f"{HEADLINE} (speed timed on a busy machine: not reliable)") in page


def test_busy_marks_follow_each_tasks_speed_columns() -> None:
    lm = {
        "task": "lm",
        "models": [
            {"name": "teacher", "role": "teacher", "params": 10, "latency_ms": 80.0, "tokens_per_s": 400.0},
            {"name": "student", "role": "distilled", "params": 2, "latency_ms": 20.0, "tokens_per_s": 1600.0},
        ],
        "timing": _timing(True, batch_size=4, new_tokens=32, max_prompt_length=256),
    }
    student = dict(zip(LM_RESULT_COLUMNS, results_rows(lm)[1], strict=True))
    assert student["ms / answer"] == "20.0 ms*" and student["tokens / s"] == "1600*"
    assert student["speedup"] == "4.0x*" and student["params"] == "2"
    assert "new tokens 32, max prompt length 256" in timing_line(lm)

    detection = {
        "task": "detection",
        "models": [
            {"name": "teacher", "role": "teacher", "params": 10, "latency_ms": 9.8, "onnx_latency_ms": 6.1},
            {"name": "scratch", "role": "scratch", "params": 2, "latency_ms": 2.9, "onnx_latency_ms": None},
        ],
        "timing": _timing(True, batch_size=1, image_size=[64, 64]),
    }
    scratch = dict(zip(DETECTION_RESULT_COLUMNS, results_rows(detection)[1], strict=True))
    assert scratch["ms / image"] == "2.90 ms*" and scratch["onnxruntime ms"] == "—"
    assert "image size 64x64" in timing_line(detection)
    # every column the marks may touch is a speed figure of some task's table
    assert {
        "ms / sample",
        "ms / answer",
        "ms / image",
        "onnxruntime ms",
        "tokens / s",
        "speedup",
    } <= SPEED_COLUMNS


def test_per_model_tables_in_the_record_are_left_out_and_notes_are_sentences() -> None:
    timing = _timing(False, texts=200, batch_size=32, max_seq_length=128)
    timing["texts_per_s"] = {"teacher": 100.0, "student": 900.0}  # an encoder run's figures: not settings
    timing["sequence_note"] = "static students read whole texts"
    line = timing_line({"task": "encoder", "models": [], "timing": timing})
    assert "texts 200, batch size 32, max seq length 128;" in line
    assert "texts per s" not in line and "900" not in line
    assert line.endswith("while timing: quiet. Static students read whole texts.")


def test_a_report_does_not_change_the_metrics() -> None:
    metrics = _classify(_timing(True, batch_size=1))
    before = copy.deepcopy(metrics)
    results_rows(metrics)
    timing_line(metrics)
    assert metrics == before
