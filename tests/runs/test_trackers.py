"""The tracker sinks, read back with the trackers' own readers: tensorboard's EventAccumulator (the reader
behind `tensorboard --logdir`, a different implementation from the tensorboardX writer) and MlflowClient."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import Field

from kdistill.runs.logger import RunLogger, numeric_leaves, tracker_sinks
from kdistill.runs.progress import RunProgress
from kdistill.runs.trackers import (
    MLFLOW_DB,
    MLFLOW_RUN_FILE,
    TENSORBOARD_DIR,
    MLflowSink,
    TensorBoardSink,
    config_params,
    default_mlflow_uri,
    metric_name,
)
from kdistill.schema import TRACKER_SINKS, ConfigError, ReportTo, RunConfigBase, Strict, TrackingURI

SRC = Path(__file__).resolve().parents[2] / "src"


def tb_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the event files of `logdir`: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def mlflow_history(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    keys = client.get_run(run_id).data.metrics
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


class Section(Strict):
    lr: float = 0.5
    steps: int = 3


class Term(Strict):
    name: str
    weight: float = 1.0


class TinyConfig(RunConfigBase):
    name: str = "tiny"
    seeds: list[int] = Field(default_factory=lambda: [0, 1])
    train: Section = Field(default_factory=Section)
    loss: list[Term] = Field(default_factory=lambda: [Term(name="ce"), Term(name="hinton_kd", weight=0.5)])
    note: str | None = None
    report_to: ReportTo
    tracking_uri: TrackingURI


ENTRIES = [  # what a training loop's on_log receives; text and bools are no scalars
    {
        "step": 10,
        "loss": 2.5,
        "terms": {"ce": 1.5, "feat/fitnet[b1]": 1.0},
        "lr": 0.0625,
        "note": "x",
        "ok": True,
    },
    {"step": 20, "loss": 1.25, "terms": {"ce": 0.75, "feat/fitnet[b1]": 0.5}, "lr": 0.03125},
]


def log_entries(logger: RunLogger) -> None:
    with logger.shown():
        log = logger.job("kd-s0", "student KD", total=20)
        for entry in ENTRIES:
            log.log(entry)
        log.done()
        logger.job("teacher", "teacher", total=5).log({"step": 5, "val_accuracy": 0.875})


# ---------------------------------------------------------------- pure helpers


def test_config_params_are_dotted_paths_as_in_overrides_without_the_logging_fields():
    dump = TinyConfig(report_to=["mlflow"], tracking_uri="https://user:token@mlflow.example").model_dump(
        mode="json"
    )
    assert config_params(dump) == {
        "name": "tiny",
        "seeds": "[0, 1]",
        "train.lr": "0.5",
        "train.steps": "3",
        "loss.0.name": "ce",
        "loss.0.weight": "1.0",
        "loss.1.name": "hinton_kd",
        "loss.1.weight": "0.5",
        "note": "null",
    }


def test_metric_names_keep_letters_digits_and_separators_and_replace_the_rest():
    assert metric_name("kd-s0/terms/feat.x_1") == "kd-s0/terms/feat.x_1"
    assert metric_name("kd/terms/feat/fitnet[b1]:w y") == "kd/terms/feat/fitnet_b1__w_y"


def test_default_mlflow_store_is_a_sqlite_file_in_the_run_dir(tmp_path):
    assert default_mlflow_uri(tmp_path) == f"sqlite:///{(tmp_path / MLFLOW_DB).resolve().as_posix()}"


# ---------------------------------------------------------------- config errors


def test_an_unknown_sink_is_a_config_error_naming_the_field():
    from kdistill.config import parse_config

    with pytest.raises(ConfigError) as err:
        parse_config({"report_to": ["tensorboard", "wandb"]})
    assert str(err.value) == "<config>: report_to: unknown sink 'wandb'; known: tensorboard, mlflow"


def test_tracker_sinks_rejects_an_unknown_sink_that_bypassed_the_schema(tmp_path):
    cfg = SimpleNamespace(report_to=["wandb"], tracking_uri=None)
    with pytest.raises(ConfigError, match=r"^report_to: unknown sink 'wandb'; known: tensorboard, mlflow$"):
        tracker_sinks(tmp_path, cfg)


def test_a_config_without_report_to_has_no_tracker_sinks(tmp_path):
    assert tracker_sinks(tmp_path, object()) == []
    assert tracker_sinks(tmp_path, TinyConfig()) == []


@pytest.mark.parametrize(
    "sink, modules, package",
    [
        ("tensorboard", ["tensorboardX"], "tensorboardX"),
        ("mlflow", ["mlflow", "mlflow.entities", "mlflow.exceptions", "mlflow.tracking"], "mlflow-skinny"),
    ],
)
def test_a_missing_tracker_package_is_a_clear_error(tmp_path, monkeypatch, sink, modules, package):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    expected = f"report_to: {sink} needs the {package} package (pip install 'kdistill[tracking]')"
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
        tracker_sinks(tmp_path, TinyConfig(report_to=[sink]))


def test_a_sink_that_fails_to_open_closes_those_already_opened(tmp_path, monkeypatch):
    closed = []

    class FakeTensorBoard:
        def __init__(self, run_dir):
            pass

        def close(self, failed=False):
            closed.append(failed)

    monkeypatch.setattr("kdistill.runs.logger.TensorBoardSink", FakeTensorBoard)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.entities", None)
    with pytest.raises(ConfigError, match="mlflow needs the mlflow-skinny package"):
        tracker_sinks(tmp_path, TinyConfig(report_to=["tensorboard", "mlflow"]))
    assert closed == [True]


def test_the_default_mlflow_store_without_sqlalchemy_names_the_missing_package(tmp_path):
    """mlflow-skinny alone has no sqlite store: the error says what to install (a fresh interpreter, since
    this process may have imported sqlalchemy already)."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["sqlalchemy"] = None
        from kdistill.runs.trackers import MLflowSink
        from kdistill.schema import ConfigError
        try:
            MLflowSink({str(tmp_path)!r})
        except ConfigError as err:
            print("ERROR:", err)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(SRC), "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    assert "ERROR: report_to: mlflow needs the sqlalchemy package (pip install 'kdistill[tracking]')" in (
        out.stdout
    ), out.stderr[-2000:]


def test_an_unusable_tracking_uri_is_a_config_error_without_its_credentials(tmp_path):
    with pytest.raises(ConfigError) as err:
        MLflowSink(tmp_path, "foo://user:s3cret@tracker.example")
    message = str(err.value)
    assert message.startswith("tracking_uri: MLflow store 'foo://***@tracker.example': ")
    assert "unsupported URI" in message and "s3cret" not in message


# ---------------------------------------------------------------- TensorBoard


def test_tensorboard_sink_writes_job_key_scalars_at_each_entry_step(tmp_path):
    log_entries(RunLogger(RunProgress(None), [TensorBoardSink(tmp_path)]))
    files = list((tmp_path / TENSORBOARD_DIR).iterdir())
    assert [f.name.startswith("events.out.tfevents.") for f in files] == [True]
    # every value is exact in float32, the precision of a TensorBoard scalar
    assert tb_scalars(tmp_path / TENSORBOARD_DIR) == {
        "kd-s0/loss": [(10, 2.5), (20, 1.25)],
        "kd-s0/terms/ce": [(10, 1.5), (20, 0.75)],
        "kd-s0/terms/feat/fitnet_b1_": [(10, 1.0), (20, 0.5)],
        "kd-s0/lr": [(10, 0.0625), (20, 0.03125)],
        "teacher/val_accuracy": [(5, 0.875)],
    }


# ---------------------------------------------------------------- MLflow


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """A new, empty MLflow sqlite store, copied by the tests below: MLflow's schema migrations take seconds
    per store (a real run's fresh store is in the end-to-end test)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / MLFLOW_DB
    with warnings.catch_warnings():  # SQLAlchemy 2.1 deprecates a loader option MLflow uses
        warnings.simplefilter("ignore", DeprecationWarning)
        MlflowClient(tracking_uri=f"sqlite:///{path.as_posix()}").search_experiments()
    return path


def test_mlflow_sink_logs_config_params_and_metrics_to_a_store_in_the_run_dir(tmp_path, empty_mlflow_db):
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "tiny-20260101-000000"
    run_dir.mkdir()
    shutil.copy(empty_mlflow_db, run_dir / MLFLOW_DB)  # the store the sink must find there
    cfg = TinyConfig(report_to=["mlflow"])
    (sink,) = tracker_sinks(run_dir, cfg)
    assert isinstance(sink, MLflowSink)
    log_entries(RunLogger(RunProgress(None), [sink]))

    client = MlflowClient(tracking_uri=default_mlflow_uri(run_dir))
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == sink.run_id
    assert (run.info.run_name, run.info.status) == (run_dir.name, "FINISHED")
    assert run.data.params == config_params(cfg.model_dump(mode="json"))
    assert mlflow_history(client, run.info.run_id) == {
        "kd-s0/loss": [(10, 2.5), (20, 1.25)],
        "kd-s0/terms/ce": [(10, 1.5), (20, 0.75)],
        "kd-s0/terms/feat/fitnet_b1_": [(10, 1.0), (20, 0.5)],
        "kd-s0/lr": [(10, 0.0625), (20, 0.03125)],
        "teacher/val_accuracy": [(5, 0.875)],
    }


def test_two_mlflow_runs_in_one_process_do_not_mix_and_a_resumed_run_continues(
    tmp_path, monkeypatch, empty_mlflow_db
):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root of a user-given store is ./mlruns
    for name in ("shared.db", "other.db"):
        shutil.copy(empty_mlflow_db, tmp_path / name)
    uri = f"sqlite:///{(tmp_path / 'shared.db').as_posix()}"
    a = MLflowSink(tmp_path / "a", uri, experiment="exp", params={"p": "a"})
    b = MLflowSink(tmp_path / "b", uri, experiment="exp", params={"p": "b"})
    a.log("job", 1, {"loss": 1.0}, {})
    b.log("job", 1, {"loss": 5.0}, {})
    a.log("job", 2, {"loss": 0.5}, {})
    a.close(failed=True)  # interrupted
    b.close()

    client = MlflowClient(tracking_uri=uri)
    assert mlflow_history(client, a.run_id) == {"job/loss": [(1, 1.0), (2, 0.5)]}
    assert mlflow_history(client, b.run_id) == {"job/loss": [(1, 5.0)]}
    assert client.get_run(a.run_id).data.params == {"p": "a"}
    assert client.get_run(a.run_id).info.status == "FAILED"

    resumed = MLflowSink(tmp_path / "a", uri, experiment="exp", params={"p": "a"})
    assert resumed.run_id == a.run_id
    assert client.get_run(a.run_id).info.status == "RUNNING"
    resumed.log("job", 3, {"loss": 0.25}, {})
    resumed.close()
    resumed.close()  # a second close is harmless
    assert mlflow_history(client, a.run_id) == {"job/loss": [(1, 1.0), (2, 0.5), (3, 0.25)]}
    assert client.get_run(a.run_id).info.status == "FINISHED"
    experiment = client.get_experiment_by_name("exp")
    assert len(client.search_runs([experiment.experiment_id])) == 2

    # the run id file of another store does not resume there: a new run
    other = MLflowSink(tmp_path / "a", f"sqlite:///{(tmp_path / 'other.db').as_posix()}", experiment="exp")
    assert other.run_id != a.run_id
    other.close()
    assert (tmp_path / "a" / MLFLOW_RUN_FILE).is_file()


@pytest.mark.parametrize("report_to", [list(TRACKER_SINKS), list(reversed(TRACKER_SINKS))])
def test_tracker_sinks_builds_every_known_sink_from_the_config(tmp_path, monkeypatch, report_to):
    built = []

    def fake(kind):
        return lambda *args, **kwargs: built.append((kind, args, kwargs)) or kind

    monkeypatch.setattr("kdistill.runs.logger.TensorBoardSink", fake("tensorboard"))
    monkeypatch.setattr("kdistill.runs.logger.MLflowSink", fake("mlflow"))
    run_dir = tmp_path / "tiny-20260101-000000"
    cfg = TinyConfig(report_to=report_to, tracking_uri="http://127.0.0.1:5000")
    assert tracker_sinks(run_dir, cfg) == report_to
    assert sorted(built) == [
        (
            "mlflow",
            (run_dir, "http://127.0.0.1:5000"),
            {
                "run_name": run_dir.name,
                "experiment": "tiny",
                "params": config_params(cfg.model_dump(mode="json")),
            },
        ),
        ("tensorboard", (run_dir,), {}),
    ]


# ---------------------------------------------------------------- a real run


@pytest.mark.slow
def test_a_classic_run_logs_its_history_to_tensorboard_and_mlflow(tmp_path, tiny_config):
    """The tiny classic config with both trackers, interrupted once and continued: each job's history
    (done.json) is in both stores, in one MLflow run."""
    from mlflow.tracking import MlflowClient

    from kdistill.classic.methods.base import JobInterrupted
    from kdistill.classic.recipe import run
    from kdistill.config import parse_config
    from kdistill.runs.markers import read_done

    data = copy.deepcopy(tiny_config)
    data["train"] |= {"steps": 20, "eval_every": 10, "checkpoint_every": 10}
    data["report_to"] = ["tensorboard", "mlflow"]
    cfg = parse_config(data)
    with pytest.raises(JobInterrupted):  # after step 15 of the first job; it resumes from its step 10
        run(cfg, runs_dir=tmp_path, console=None, stop_after=15)
    (run_dir,) = [d for d in tmp_path.iterdir() if d.name != ".locks"]  # not the run lock
    client = MlflowClient(tracking_uri=default_mlflow_uri(run_dir))
    (interrupted,) = client.search_runs([client.get_experiment_by_name(cfg.name).experiment_id])
    assert interrupted.info.status == "FAILED"

    result = run(cfg, runs_dir=tmp_path, console=None)
    assert (result.run_dir, result.resumed) == (run_dir, True)

    expected: dict[str, list[tuple[int, float]]] = {}
    for job_dir in sorted((run_dir / "jobs").iterdir()):
        for entry in read_done(job_dir)["history"]:
            for key, value in numeric_leaves({k: v for k, v in entry.items() if k != "step"}).items():
                expected.setdefault(f"{job_dir.name}/{key}", []).append((entry["step"], value))
    assert {"loss", "lr", "val_accuracy", "terms/ce", "terms/kd/hinton_kd"} <= {
        tag.partition("/")[2] for tag in expected
    }
    assert len({tag.partition("/")[0] for tag in expected}) == 2  # the scratch baseline and the KD student
    assert all([s for s, _ in points] == [10, 20] for points in expected.values())

    scalars = tb_scalars(run_dir / TENSORBOARD_DIR)
    student = {tag: points for tag, points in scalars.items() if not tag.startswith("teacher/")}
    assert student.keys() == {metric_name(tag) for tag in expected}
    for tag, points in expected.items():  # TensorBoard keeps float32
        assert [s for s, _ in student[metric_name(tag)]] == [s for s, _ in points]
        assert [v for _, v in student[metric_name(tag)]] == pytest.approx([v for _, v in points], rel=1e-6)

    (mlrun,) = client.search_runs([client.get_experiment_by_name(cfg.name).experiment_id])
    assert (mlrun.info.run_id, mlrun.info.status) == (interrupted.info.run_id, "FINISHED")
    history = mlflow_history(client, mlrun.info.run_id)
    assert {k: v for k, v in history.items() if not k.startswith("teacher/")} == {
        metric_name(k): v for k, v in expected.items()
    }
    params = mlrun.data.params
    assert params == config_params(cfg.model_dump(mode="json"))
    assert (params["train.steps"], params["loss.1.name"], params["student.arch"]) == (
        "20",
        "hinton_kd",
        "cnn_xs",
    )
    assert "report_to" not in params and "tracking_uri" not in params
