"""RunLogger: entries reach every sink flattened to `key` -> float, bars follow the steps, sinks close once
with the outcome of the run, and only the main process gets trackers."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from rich.console import Console

from kdistill.runs.logger import RunLogger, numeric_leaves
from kdistill.runs.progress import RunProgress


class RecordingSink:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start_job(self, job, label, total):
        self.calls.append(("start", job, label, total))

    def log(self, job, step, values, entry):
        self.calls.append(("log", job, step, dict(values)))

    def close(self, failed=False):
        self.calls.append(("close", failed))


def test_numeric_leaves_flattens_nested_numbers_and_drops_text_and_bools():
    entry = {"loss": 2, "terms": {"ce": 1.5, "kd": {"hinton": 0.25}}, "note": "x", "ok": True, "empty": {}}
    assert numeric_leaves(entry) == {"loss": 2.0, "terms/ce": 1.5, "terms/kd/hinton": 0.25}
    assert all(type(v) is float for v in numeric_leaves(entry).values())


def test_entries_reach_every_sink_with_their_step_and_numbers():
    a, b = RecordingSink(), RecordingSink()
    logger = RunLogger(RunProgress(None), [a, b])
    with logger.shown():
        log = logger.job("kd-s0", "student KD", total=20)
        log.log({"step": 10, "loss": 1.5, "terms": {"ce": 1.0}, "tag": "x"})
        log.log({"loss": 0.5})  # no step: logged at 0
    expected = [
        ("start", "kd-s0", "student KD", 20),
        ("log", "kd-s0", 10, {"loss": 1.5, "terms/ce": 1.0}),
        ("log", "kd-s0", 0, {"loss": 0.5}),
        ("close", False),
    ]
    assert a.calls == expected and b.calls == expected


def test_a_failing_block_closes_every_sink_as_failed_and_reraises():
    sink = RecordingSink()
    logger = RunLogger(RunProgress(None), [sink])
    with pytest.raises(KeyError, match="boom"), logger.shown():
        logger.job("j", "j").log({"step": 1, "loss": 1.0})
        raise KeyError("boom")
    assert sink.calls[-1] == ("close", True)
    assert [c for c in sink.calls if c[0] == "close"] == [("close", True)]


def test_done_sends_nothing_to_the_trackers():
    sink = RecordingSink()
    logger = RunLogger(RunProgress(None), [sink])
    logger.job("j", "j", total=5).done()
    logger.job("spin", "eval").done()
    assert [c[0] for c in sink.calls] == ["start", "start"]


def progress_tasks(logger: RunLogger) -> dict[str, tuple[float, float | None]]:
    return {t.description: (t.completed, t.total) for t in logger.progress.bars.tasks}


def test_bars_follow_the_logged_steps_and_done_completes_bars_and_spinners():
    logger = RunLogger(RunProgress(Console(file=io.StringIO(), force_terminal=True)))
    with logger.shown():
        train = logger.job("kd", "student KD", total=20)
        train.log({"step": 10, "loss": 1.0})
        assert progress_tasks(logger)["student KD"] == (10, 20)
        train.done()
        spinner = logger.job("eval", "eval: teacher")
        assert progress_tasks(logger)["eval: teacher"] == (0, None)
        spinner.done()
        loaded = logger.job("old", "finished earlier", total=7)
        loaded.done()
    assert progress_tasks(logger) == {
        "student KD": (20, 20),
        "eval: teacher": (1, 1),
        "finished earlier": (7, 7),
    }


def test_only_the_main_process_gets_trackers(tmp_path):
    cfg = SimpleNamespace(report_to=["tensorboard"], tracking_uri=None)
    other = RunLogger.for_run(tmp_path, cfg, console=None, main=False)
    assert other.sinks == [other.progress_sink]
    assert other.progress.bars is None  # no console on other processes either
    assert not (tmp_path / "tensorboard").exists()

    main = RunLogger.for_run(tmp_path, cfg, console=None)
    assert [type(s).__name__ for s in main.sinks] == ["ProgressSink", "TensorBoardSink"]
    main.close()


def test_a_config_without_trackers_logs_to_the_console_only(tmp_path):
    logger = RunLogger.for_run(tmp_path, SimpleNamespace(report_to=[]), console=None)
    assert logger.sinks == [logger.progress_sink]
    assert list(tmp_path.iterdir()) == []
