"""The run report for `task: detection`: its own columns and plot axes, the other tasks' left as they were."""

import copy

import pytest
from rich.console import Console

from kdistill.evaluation import report
from kdistill.evaluation.report import (
    DETECTION_RESULT_COLUMNS,
    RESULT_COLUMNS,
    plot_learning_curves,
    plot_tradeoff,
    result_columns,
    results_rows,
    results_table,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _detection_metrics() -> dict:
    common = {"map_std": 0.0, "map_50_std": 0.0, "agreement_f1_std": 0.0}
    history = [
        {
            "model": name,
            "seed": seed,
            "step": step,
            "epoch": step // 250,
            "loss": 1.0 / step + seed,
            "lr": 0.001,
        }
        | {"terms": {"det": 0.5 / step, **({"pkd": 0.5 / step} if name == "pkd" else {})}}
        for name in ("scratch", "pkd")
        for seed in (0, 1, 2)
        for step in (250, 500)
    ]
    return {
        "task": "detection",
        "models": [
            # teacher deliberately not first: the table must put it first
            {
                "name": "scratch",
                "role": "scratch",
                "arch": "fcos_s",
                "params": 362830,
                "size_bytes": 1450000,
                "latency_ms": 2.9,
                "onnx_latency_ms": None,  # ONNX timing failed for this one
                "map": 0.10,
                "map_std": 0.01,
                "map_per_seed": [0.09, 0.10, 0.11],
                "map_50": 0.22,
                "map_50_std": 0.02,
                "agreement_f1": 0.31,
                "agreement_f1_std": 0.02,
            },
            {
                **common,
                "name": "teacher",
                "role": "teacher",
                "arch": "fcos_l",
                "params": 3400302,
                "size_bytes": 13600000,
                "latency_ms": 9.8,
                "onnx_latency_ms": 6.1,
                "map": 0.41,
                "map_per_seed": [0.41],
                "map_50": 0.70,
                "agreement_f1": 1.0,
            },
            {
                "name": "pkd",
                "role": "distilled",
                "arch": "fcos_s",
                "params": 362830,
                "size_bytes": 1450000,
                "latency_ms": 3.1,
                "onnx_latency_ms": 1.7,
                "map": 0.153,
                "map_std": 0.004,
                "map_per_seed": [0.149, 0.153, 0.157],
                "map_50": 0.318,
                "map_50_std": 0.006,
                "agreement_f1": 0.52,
                "agreement_f1_std": 0.03,
            },
        ],
        "history": history,
        "summary": {"headline": "pkd keeps 37% of the teacher's mAP at 1/9 of its parameters"},
        "run": {"name": "driving", "seeds": [0, 1, 2]},
    }


def _classify_metrics() -> dict:
    models = [
        {"name": "teacher", "role": "teacher", "params": 1000, "latency_ms": 0.5, "accuracy": 0.9},
        {
            "name": "student",
            "role": "distilled",
            "params": 100,
            "latency_ms": 0.1,
            "accuracy": 0.8,
            "accuracy_std": 0.02,
            "accuracy_per_seed": [0.78, 0.82],
        },
    ]
    return {"models": models, "run": {"name": "digits", "seeds": [0, 1]}}


def _rows_by_name(metrics: dict) -> dict[str, dict[str, str]]:
    columns = result_columns(metrics)
    rows = results_rows(metrics)
    assert all(len(row) == len(columns) for row in rows)
    return {row[0]: dict(zip(columns, row, strict=True)) for row in rows}


def test_detection_run_gets_the_detection_columns_teacher_first():
    metrics = _detection_metrics()
    assert result_columns(metrics) == DETECTION_RESULT_COLUMNS
    assert [row[1] for row in results_rows(metrics)] == ["teacher", "scratch", "distilled"]


def test_detection_cells_mean_std_latencies_and_ratios():
    rows = _rows_by_name(_detection_metrics())
    teacher, scratch, pkd = rows["teacher"], rows["scratch"], rows["pkd"]
    assert pkd["mAP@[.5:.95]"] == "15.3 ± 0.4 %"
    assert pkd["mAP@.5"] == "31.8 ± 0.6 %"
    assert pkd["agrees w/ teacher"] == "52.0 ± 3.0 %"
    assert scratch["mAP@[.5:.95]"] == "10.0 ± 1.0 %"
    assert teacher["mAP@[.5:.95]"] == "41.0 %"  # one seed, no spread: no ±
    assert teacher["agrees w/ teacher"] == "100.0 %"  # as the classify table shows its teacher
    assert pkd["params"] == "362,830"
    assert pkd["size"] == "1.45 MB"
    assert teacher["size"] == "13.6 MB"
    assert pkd["ms / image"] == "3.10 ms"
    assert pkd["onnxruntime ms"] == "1.70 ms"
    assert scratch["onnxruntime ms"] == "—"  # null: timing off or failed
    assert pkd["params vs teacher"] == f"1/{3400302 / 362830:.1f}"  # 9.37 times smaller
    # speedup is teacher / model PyTorch latency, whatever onnxruntime measured
    assert pkd["speedup"] == f"{9.8 / 3.1:.1f}x"
    assert scratch["speedup"] == f"{9.8 / 2.9:.1f}x"
    assert teacher["speedup"] == "1.0x"


def test_detection_seed_count_comes_from_map_per_seed():
    metrics = _detection_metrics()
    pkd = metrics["models"][2]
    pkd["map_per_seed"] = [0.153]  # one seed ran, though the run planned three: a std means nothing
    assert _rows_by_name(metrics)["pkd"]["mAP@[.5:.95]"] == "15.3 %"
    del pkd["map_per_seed"]  # no per-seed list: fall back to the run's seeds, as the classify table does
    assert _rows_by_name(metrics)["pkd"]["mAP@[.5:.95]"] == "15.3 ± 0.4 %"


def test_detection_without_ground_truth_shows_dashes_and_still_plots(tmp_path):
    metrics = _detection_metrics()
    for model in metrics["models"]:
        model["map"] = model["map_50"] = None
    rows = _rows_by_name(metrics)
    assert {row["mAP@[.5:.95]"] for row in rows.values()} == {"—"}
    assert {row["mAP@.5"] for row in rows.values()} == {"—"}
    assert rows["pkd"]["agrees w/ teacher"] == "52.0 ± 3.0 %"
    assert plot_tradeoff(metrics, tmp_path / "t.png").read_bytes().startswith(PNG_MAGIC)


def test_detection_terminal_table_headers_and_cells():
    table = results_table(_detection_metrics())
    assert [str(column.header) for column in table.columns] == list(DETECTION_RESULT_COLUMNS)
    assert table.row_count == 3
    console = Console(record=True, width=250)
    console.print(table)
    text = console.export_text()
    assert "mAP@[.5:.95]" in text  # brackets are not taken for rich markup
    assert "15.3 ± 0.4 %" in text


@pytest.fixture
def saved_figures(monkeypatch):
    """The matplotlib figures the report saves, to read their axes instead of decoding PNGs."""
    figures = []
    save = report._save_figure

    def keep(figure, path):
        figures.append(figure)
        return save(figure, path)

    monkeypatch.setattr(report, "_save_figure", keep)
    return figures


def _errorbars(axes) -> list[tuple[float, float, float]]:
    """(x, y, half the error bar) per plotted point."""
    points = []
    for container in axes.containers:
        data_line, _caps, (bars,) = container.lines
        (x,), (y,) = data_line.get_xdata(), data_line.get_ydata()
        (_, low), (_, high) = bars.get_segments()[0]
        points.append((float(x), float(y), float(high - low) / 2))
    return points


def _rounded(points) -> list[tuple[float, ...]]:
    return sorted(tuple(round(value, 6) for value in point) for point in points)


def test_tradeoff_plots_map_against_latency_for_detection(tmp_path, saved_figures):
    metrics = _detection_metrics()
    plot_tradeoff(metrics, tmp_path / "t.png")
    params_axes, latency_axes = saved_figures[-1].axes
    assert latency_axes.get_xlabel() == "latency per image, ms (log)"
    assert "mAP@[.5:.95]" in latency_axes.get_ylabel() and "mAP@[.5:.95]" in params_axes.get_ylabel()
    expected = [(m["latency_ms"], 100 * m["map"], 100 * m["map_std"]) for m in metrics["models"]]
    assert _rounded(_errorbars(latency_axes)) == _rounded(expected)
    assert sorted(x for x, _, _ in _errorbars(params_axes)) == sorted(m["params"] for m in metrics["models"])


def test_tradeoff_for_classify_still_plots_accuracy(tmp_path, saved_figures):
    metrics = _classify_metrics()
    plot_tradeoff(metrics, tmp_path / "t.png")
    _, latency_axes = saved_figures[-1].axes
    assert latency_axes.get_xlabel() == "latency per sample, ms (log)"
    assert latency_axes.get_ylabel() == "accuracy (%)"
    assert _rounded(_errorbars(latency_axes)) == _rounded([(0.1, 80.0, 2.0), (0.5, 90.0, 0.0)])


def test_detection_learning_curves_are_the_loss_panel_alone(tmp_path, saved_figures):
    # detection history logs no val_accuracy: one panel, nothing invented for the missing one
    assert plot_learning_curves(_detection_metrics(), tmp_path / "l.png") == tmp_path / "l.png"
    (loss_axes,) = saved_figures[-1].axes
    assert loss_axes.get_ylabel() == "loss"
    assert len(loss_axes.lines) == 2 * 3  # (scratch, pkd) x 3 seeds


def test_write_report_for_a_detection_run(tmp_path):
    html_path = write_report(tmp_path, _detection_metrics())
    assert html_path == tmp_path / "report.html"
    page = html_path.read_text(encoding="utf-8")
    for column in DETECTION_RESULT_COLUMNS:
        assert f">{column}</th>" in page
    assert "15.3 ± 0.4 %" in page and "1.70 ms" in page
    assert 'src="tradeoff.png"' in page and 'alt="mAP@[.5:.95] against parameters and latency"' in page
    section = page[page.index("Final loss terms") :]
    assert ">det</th>" in section and ">pkd</th>" in section
    for png in ("tradeoff.png", "learning_curves.png"):
        assert (tmp_path / png).read_bytes().startswith(PNG_MAGIC)


def test_classify_columns_and_cells_are_unchanged():
    metrics = _classify_metrics()
    assert result_columns(metrics) == RESULT_COLUMNS
    assert result_columns({**metrics, "task": "classify"}) == RESULT_COLUMNS
    student = _rows_by_name(metrics)["student"]
    assert student["accuracy"] == "80.0 ± 2.0 %"
    assert student["speedup"] == "5.0x"
    assert "mAP@[.5:.95]" not in result_columns(copy.deepcopy(metrics))
