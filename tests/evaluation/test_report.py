import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from kdistill import io as kdistill_io
from kdistill.evaluation.report import (
    RESULT_COLUMNS,
    plot_learning_curves,
    plot_tradeoff,
    results_rows,
    results_table,
    write_report,
)
from kdistill.io import atomic_write_bytes, atomic_write_text

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADLINE = (
    "student (distilled) keeps 94.5% of the teacher's accuracy with 1/60 of its parameters, 4.2x faster"
)


def _history() -> list[dict]:
    history = []
    for model, base in (("student (scratch)", 2.0), ("student (distilled) <script>alert(1)</script>", 1.5)):
        for seed in (0, 1):
            for epoch in (1, 2, 3):
                for step in (epoch * 40 - 20, epoch * 40):
                    loss = base / step + 0.01 * seed
                    entry = {"model": model, "seed": seed, "epoch": epoch, "step": step, "loss": loss}
                    entry["terms"] = {"ce": loss / 3, "kd/hinton_kd": 2 * loss / 3}
                    if step == epoch * 40:
                        entry["val_accuracy"] = 0.7 + 0.05 * epoch + 0.01 * seed
                    history.append(entry)
    return history


def _metrics() -> dict:
    return {
        "run": {
            "name": "digits",
            "run_dir": "runs/digits-20261123-120000",
            "started": "2026-11-23T12:00:00",
            "finished": "2026-11-23T12:01:00",
            "config_hash": "ab12cd",
            "seeds": [0, 1, 2],
            "device": "cpu",
        },
        "models": [
            # teacher deliberately not first: the table must put it first
            {
                "name": "student (scratch)",
                "role": "scratch",
                "arch": "cnn_xs",
                "accuracy": 0.862,
                "accuracy_std": 0.012,
                "accuracy_per_seed": [0.85, 0.862, 0.874],
                "params": 1567,
                "extra_params": 0,
                "size_bytes": 12345,
                "latency_ms": 0.0119,
                "agreement_with_teacher": 0.87,
                "agreement_std": 0.01,
            },
            {
                "name": "teacher",
                "role": "teacher",
                "arch": "cnn_m",
                "accuracy": 0.985,
                "accuracy_std": 0.0,
                "accuracy_per_seed": [0.985],
                "params": 94020,
                "extra_params": 0,
                "size_bytes": 380000,
                "latency_ms": 0.05,
                "agreement_with_teacher": 1.0,
                "agreement_std": 0.0,
            },
            {
                "name": "student (distilled) <script>alert(1)</script>",
                "role": "distilled",
                "arch": "cnn_xs",
                "accuracy": 0.931,
                "accuracy_std": 0.008,
                "accuracy_per_seed": [0.923, 0.931, 0.939],
                "params": 1567,
                "extra_params": 1200,
                "size_bytes": 12345,
                "latency_ms": 0.0119,
                "agreement_with_teacher": 0.95,
                "agreement_std": 0.005,
            },
        ],
        "history": _history(),
        "summary": {"headline": HEADLINE, "distilled_minus_scratch": 0.069},
    }


def test_results_rows_teacher_first_and_formatting():
    rows = results_rows(_metrics())
    assert [row[1] for row in rows] == ["teacher", "scratch", "distilled"]
    assert all(len(row) == len(RESULT_COLUMNS) for row in rows)
    teacher, scratch, distilled = (dict(zip(RESULT_COLUMNS, row, strict=True)) for row in rows)
    assert distilled["accuracy"] == "93.1 ± 0.8 %"
    assert teacher["accuracy"] == "98.5 %"  # one seed: no ±
    assert teacher["params"] == "94,020"
    assert distilled["extra params"] == "1,200"
    assert distilled["size"] == "12.3 kB"
    assert teacher["size"] == "380 kB"
    assert distilled["ms / sample"] == "0.0119 ms"
    assert distilled["agrees w/ teacher"] == "95.0 ± 0.5 %"
    assert distilled["params vs teacher"] == "1/60"  # 94020 / 1567 = 60.0
    assert teacher["params vs teacher"] == "1"
    assert distilled["speedup"] == "4.2x"  # 0.05 / 0.0119 = 4.20
    assert teacher["speedup"] == "1.0x"


def test_std_is_hidden_when_only_one_seed():
    metrics = _metrics()
    metrics["models"][2]["accuracy_per_seed"] = [0.931]
    distilled = results_rows(metrics)[2]
    assert distilled[2] == "93.1 %"


def test_missing_values_render_as_dash_not_crash():
    metrics = _metrics()
    del metrics["models"][0]["latency_ms"]
    metrics["models"][0]["size_bytes"] = None
    scratch = dict(zip(RESULT_COLUMNS, results_rows(metrics)[1], strict=True))
    assert scratch["ms / sample"] == "—"
    assert scratch["speedup"] == "—"
    assert scratch["size"] == "—"


def test_results_table_renders_all_rows_and_columns():
    table = results_table(_metrics())
    assert table.row_count == 3
    assert [str(column.header) for column in table.columns] == list(RESULT_COLUMNS)
    console = Console(record=True, width=250)
    console.print(table)
    text = console.export_text()
    assert "93.1 ± 0.8 %" in text
    assert "94,020" in text
    assert text.index("teacher") < text.index("student (scratch)")
    assert "<script>alert(1)</script>" in text  # the terminal shows the name as is


def test_results_table_does_not_read_names_as_rich_markup():
    metrics = _metrics()
    metrics["models"][0]["name"] = "student [bold]wide[/bold] [T=4]"
    table = results_table(metrics)
    assert table.row_count == 3
    assert len(table.columns) == 10
    console = Console(record=True, width=250)
    console.print(table)
    assert "student [bold]wide[/bold] [T=4]" in console.export_text()


def test_write_report_files_and_content(tmp_path):
    metrics = _metrics()
    manifest = {"torch": "2.13.0", "kdistill": "0.1.0", "seed": 0, "data_sha256": "deadbeef<b>"}
    config_yaml = "method: hinton_kd\nloss:\n  temperature: 4.0  # <T>\n"
    html_path = write_report(tmp_path, metrics, config_yaml=config_yaml, manifest=manifest)

    assert html_path == tmp_path / "report.html"
    page = html_path.read_text(encoding="utf-8")
    for name in ("teacher", "student (scratch)", "student (distilled) &lt;script&gt;alert(1)&lt;/script&gt;"):
        assert name in page
    assert "<script>" not in page
    assert "digits" in page and HEADLINE.replace("'", "&#x27;") in page
    assert "93.1 ± 0.8 %" in page
    assert page.count("<tr>") >= 4  # header + 3 models in the results table
    assert 'src="tradeoff.png"' in page and 'src="learning_curves.png"' in page
    assert "kd/hinton_kd" in page  # final loss terms
    assert "temperature: 4.0  # &lt;T&gt;" in page
    assert "2.13.0" in page and "deadbeef&lt;b&gt;" in page
    assert "0.069" in page  # free-form summary numbers

    for png in ("learning_curves.png", "tradeoff.png"):
        assert (tmp_path / png).read_bytes().startswith(PNG_MAGIC)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_write_report_creates_missing_run_dir(tmp_path):
    html_path = write_report(tmp_path / "runs" / "new", _metrics())
    assert html_path.is_file()


def test_final_loss_terms_use_last_step_mean_over_seeds(tmp_path):
    metrics = _metrics()
    # scratch: last step 120, loss 2/120 + 0.01*seed -> mean over seeds 0,1 = 2/120 + 0.005
    expected = f"{2 / 120 + 0.005:.4g}"
    page = write_report(tmp_path, metrics).read_text(encoding="utf-8")
    section = page[page.index("Final loss terms") :]
    assert expected in section


def test_empty_history_gives_no_learning_curves(tmp_path):
    metrics = _metrics()
    write_report(tmp_path, metrics)
    assert (tmp_path / "learning_curves.png").exists()

    metrics["history"] = []
    html_path = write_report(tmp_path, metrics)
    assert not (tmp_path / "learning_curves.png").exists()  # a stale plot from an earlier report is removed
    assert "learning_curves.png" not in html_path.read_text(encoding="utf-8")
    assert "Final loss terms" not in html_path.read_text(encoding="utf-8")
    assert plot_learning_curves(metrics, tmp_path / "lc.png") is None
    assert not (tmp_path / "lc.png").exists()
    assert (tmp_path / "tradeoff.png").read_bytes().startswith(PNG_MAGIC)


def test_plots_accept_names_that_look_like_mathtext(tmp_path):
    metrics = _metrics()
    metrics["run"]["name"] = "cost $\\frac"
    metrics["models"][0]["name"] = r"student $\frac{unbalanced$"
    for entry in metrics["history"]:
        if entry["model"] == "student (scratch)":
            entry["model"] = r"student $\frac{unbalanced$"
    assert plot_tradeoff(metrics, tmp_path / "t.png").read_bytes().startswith(PNG_MAGIC)
    assert plot_learning_curves(metrics, tmp_path / "l.png").read_bytes().startswith(PNG_MAGIC)


def _png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")  # IHDR width, right after the 8-byte signature


def test_learning_curves_drop_the_accuracy_panel_when_nothing_held_out_was_logged(tmp_path):
    metrics = copy.deepcopy(_metrics())
    assert any("val_accuracy" in entry for entry in metrics["history"])
    two_panels = _png_width(plot_learning_curves(metrics, tmp_path / "two.png"))
    for entry in metrics["history"]:
        entry.pop("val_accuracy", None)  # LM and encoder runs log only the training loss
    one_panel = _png_width(plot_learning_curves(metrics, tmp_path / "one.png"))
    assert one_panel < 0.75 * two_panels


def test_plots_are_written_where_asked(tmp_path):
    metrics = copy.deepcopy(_metrics())
    assert plot_tradeoff(metrics, tmp_path / "t.png") == tmp_path / "t.png"
    assert plot_learning_curves(metrics, tmp_path / "l.png") == tmp_path / "l.png"
    assert (tmp_path / "t.png").read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "l.png").read_bytes().startswith(PNG_MAGIC)


def test_report_never_imports_pyplot(tmp_path):
    # pyplot holds global state (backend, open figures); library code must render without it.
    script = (
        "import sys, pathlib\n"
        "from kdistill.evaluation.report import plot_tradeoff\n"
        f"plot_tradeoff({{'models': [{{'name': 'm', 'params': 10, 'accuracy': 0.5, 'latency_ms': 1.0}}]}}, "
        f"pathlib.Path({str(tmp_path / 'x.png')!r}))\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    subprocess.run([sys.executable, "-c", script], check=True, env=env)
    assert (tmp_path / "x.png").read_bytes().startswith(PNG_MAGIC)


def test_atomic_write_text_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second ✓")
    assert target.read_text(encoding="utf-8") == "second ✓"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_write_keeps_old_file_when_replace_fails(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text("old content")

    def failing_replace(src, dst):
        raise OSError("disk went away")

    monkeypatch.setattr(kdistill_io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk went away"):
        atomic_write_text(target, "new content")
    assert target.read_text() == "old content"
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_atomic_write_bytes_keeps_existing_file_mode(tmp_path):
    target = tmp_path / "plot.png"
    atomic_write_bytes(target, b"a")
    assert (target.stat().st_mode & 0o777) == 0o644
    target.chmod(0o640)
    atomic_write_bytes(target, b"b")
    assert (target.stat().st_mode & 0o777) == 0o640
    assert target.read_bytes() == b"b"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.5, "0.50 s"), (42.0, "42 s"), (59.7, "1 min 00 s"), (192.4, "3 min 12 s"), (7500, "2 h 05 min")],
)
def test_training_time_reads_as_a_duration(seconds, shown):
    from kdistill.evaluation.report import format_duration

    assert format_duration(seconds) == shown
    assert format_duration(None) == "—"


def test_lm_and_encoder_tables_show_each_students_training_time():
    from kdistill.evaluation.report import result_columns

    for task, extra in (("lm", {"perplexity_on_teacher_answers": 3.0}), ("encoder", {"recall@10": 0.5})):
        models = [
            {"name": "teacher", "role": "teacher", "params": 100, **extra},
            {"name": "student", "role": "distilled", "params": 10, "train_seconds": 125.0, **extra},
        ]
        metrics = {"task": task, "models": models}
        columns = result_columns(metrics)
        rows = [dict(zip(columns, row, strict=True)) for row in results_rows(metrics)]
        assert [r["train time"] for r in rows] == ["—", "2 min 05 s"]


def test_train_clock_sums_the_sessions_of_a_resumed_job(tmp_path):
    import json

    from kdistill.runs.clock import TrainClock

    path = tmp_path / "job" / "train_clock.json"
    first = TrainClock(path)
    first.before = 10.0  # as if an earlier session had already run 10 s
    first.tick()
    recorded = json.loads(path.read_text())["seconds"]
    assert 10.0 <= recorded < 11.0
    second = TrainClock(path)  # the next session starts from what the killed one recorded
    assert second.before == recorded and second.seconds >= recorded
    quiet = TrainClock(tmp_path / "other.json", write=False)
    quiet.tick()
    assert not (tmp_path / "other.json").exists()
