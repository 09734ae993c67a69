"""Experiment-tracker sinks of the run logger: TensorBoard event files and an MLflow run.

Both receive the numbers of every log entry as `job/key` scalars at the entry's step (`kd-cached/loss`,
`kd-cached/terms/hinton_kd`; characters other than letters, digits and `_ - . /` become `_`), so the
trackers show what history and metrics.json hold. Their packages are optional
(`pip install 'kdistill[tracking]'`) and imported only when a config asks for the sink.

Where they write, by default inside the run directory:
    tensorboard/   event files (`tensorboard --logdir <run_dir>/tensorboard`)
    mlflow.db      MLflow's sqlite store (MLflow >= 3.7 refuses new file stores unless forced by an
                   environment variable, and recommends sqlite); `tracking_uri` sends the run elsewhere
    mlflow-run.json  the MLflow run id, so a resumed kdistill run continues its MLflow run
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdistill.io import atomic_write_text
from kdistill.schema import LOGGING_FIELDS, ConfigError

TENSORBOARD_DIR = "tensorboard"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
MLFLOW_RUN_FILE = "mlflow-run.json"
INSTALL_HINT = "pip install 'kdistill[tracking]'"

# MLflow's limits on one log_batch call (mlflow.utils.validation): 1000 metrics, 100 params.
METRICS_PER_BATCH = 1000
PARAMS_PER_BATCH = 100
# Tracking URI schemes of MLflow's database store (`sqlite:///…`, `postgresql+psycopg2://…`)
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def missing_package(sink: str, package: str) -> ConfigError:
    return ConfigError(f"report_to: {sink} needs the {package} package ({INSTALL_HINT})")


class TensorBoardSink:
    """Scalars `job/key` at each entry's step in event files under `<run_dir>/tensorboard/`.

    Written with tensorboardX (3 MB, pure Python + protobuf) rather than torch.utils.tensorboard, which needs
    the whole tensorboard server (~60 MB with grpcio) just to write; the files are the same format.
    """

    def __init__(self, run_dir: Path) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise missing_package("tensorboard", "tensorboardX") from None
        self.logdir = Path(run_dir) / TENSORBOARD_DIR
        self.writer = SummaryWriter(logdir=str(self.logdir))

    def start_job(self, job: str, label: str, total: int | None) -> None:
        pass

    def log(self, job: str, step: int, values: Mapping[str, float], entry: Mapping[str, Any]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(metric_name(f"{job}/{key}"), value, step)

    def close(self, failed: bool = False) -> None:
        self.writer.close()  # flushes; closing twice is harmless


def default_mlflow_uri(run_dir: Path) -> str:
    """MLflow's recommended local store, a sqlite file, inside the run directory."""
    return f"sqlite:///{(Path(run_dir) / MLFLOW_DB).resolve().as_posix()}"


def metric_name(name: str) -> str:
    """The name both trackers show: letters, digits and `_ - . /` kept, anything else `_` (MLflow rejects
    other characters, tensorboardX replaces them the same way)."""
    return re.sub(r"[^\w./-]", "_", name)


def config_params(dump: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A config dump flattened to MLflow params: dotted keys as in overrides (`train.lr`, `loss.0.weight`),
    text as is and every other value as JSON. The logging fields are left out (a tracking URI may hold
    credentials), and nothing but the config is read: no environment, no secrets."""
    out: dict[str, str] = {}
    for key, value in dump.items():
        if not prefix and key in LOGGING_FIELDS:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out |= config_params(value, f"{name}.")
        elif isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
            out |= config_params({str(i): v for i, v in enumerate(value)}, f"{name}.")
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


class MLflowSink:
    """One MLflow run per kdistill run: config params, and metrics `job/key` with their steps.

    Uses an explicit `MlflowClient` and run id, never MLflow's global "active run", so two runs in one process
    (tests, notebooks) do not mix. A resumed kdistill run continues the MLflow run recorded in its directory.
    """

    def __init__(
        self,
        run_dir: Path,
        tracking_uri: str | None = None,
        *,
        run_name: str | None = None,
        experiment: str = "kdistill",
        params: Mapping[str, str] | None = None,
    ) -> None:
        try:
            from mlflow.entities import Param
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise missing_package("mlflow", "mlflow-skinny") from None
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri or default_mlflow_uri(self.run_dir)
        self.closed = False
        if self.tracking_uri.partition(":")[0].partition("+")[0] in DATABASE_SCHEMES:
            try:  # mlflow-skinny lacks them, and MLflow would only say the URI scheme is unsupported
                import alembic  # noqa: F401
                import sqlalchemy  # noqa: F401
            except ImportError as err:
                raise missing_package("mlflow", (err.name or "sqlalchemy").partition(".")[0]) from None
        try:
            with warnings.catch_warnings():
                # SQLAlchemy 2.1 deprecates a loader option MLflow's sqlite store still uses: not the user's to fix
                warnings.filterwarnings("ignore", message=r".*noload.*", category=DeprecationWarning)
                self.client = MlflowClient(tracking_uri=self.tracking_uri)
            experiment_id = self.experiment_id(experiment, tracking_uri is None)
            self.run_id = self.resumed_run(experiment_id)
            if self.run_id is None:
                run = self.client.create_run(
                    experiment_id,
                    run_name=run_name or self.run_dir.name,
                    tags={"kdistill.run_dir": str(self.run_dir.resolve())},
                )
                self.run_id = run.info.run_id
                items = [Param(k, v) for k, v in (params or {}).items()]
                for i in range(0, len(items), PARAMS_PER_BATCH):
                    self.client.log_batch(self.run_id, params=items[i : i + PARAMS_PER_BATCH])
                atomic_write_text(self.run_dir / MLFLOW_RUN_FILE, json.dumps({"run_id": self.run_id}))
        except MlflowException as err:
            message = f"tracking_uri: MLflow store {self.tracking_uri!r}: {err.message.strip()}"
            raise ConfigError(re.sub(r"//[^/@\s']*@", "//***@", message)) from None  # no credentials shown

    def experiment_id(self, name: str, local: bool) -> str:
        """The experiment named after the config; artifacts of a run-dir store stay in the run dir too."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        from mlflow.exceptions import MlflowException

        location = (self.run_dir / MLFLOW_ARTIFACTS).resolve().as_uri() if local else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created meanwhile by another process
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def resumed_run(self, experiment_id: str) -> str | None:
        """The run id this run directory logged to before, if that run is in this store and experiment."""
        from mlflow.exceptions import MlflowException

        path = self.run_dir / MLFLOW_RUN_FILE
        if not path.is_file():
            return None
        run_id = json.loads(path.read_text())["run_id"]
        try:
            run = self.client.get_run(run_id)
        except MlflowException:  # another store (tracking_uri changed): start a new run
            return None
        if run.info.experiment_id != experiment_id or run.info.lifecycle_stage != "active":
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def start_job(self, job: str, label: str, total: int | None) -> None:
        pass

    def log(self, job: str, step: int, values: Mapping[str, float], entry: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(metric_name(f"{job}/{k}"), v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + METRICS_PER_BATCH])

    def close(self, failed: bool = False) -> None:
        if not self.closed:
            self.closed = True
            self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
