"""The base of every config model: strict pydantic (unknown keys are errors), stable hashing, and the
one-line-per-problem error format that names each field path.

Task configs (classic, lm, encoders, generate, capture) build on `Strict` and `RunConfigBase`; this module
imports none of them, so any of them can import it.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A user error in a config: one line per problem, each naming the field path."""


class Strict(BaseModel):
    """A config section: unknown keys and wrong types are errors, assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def stable_hash(data: Any) -> str:
    """Hash of a JSON-able structure, independent of key order."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# Experiment-tracker sinks a run can log to besides the console, metrics.json and history.jsonl.
TRACKER_SINKS = ("tensorboard", "mlflow")

# Fields that decide where a run is logged, not what it computes: left out of the config hash, so adding a
# tracker to a config still continues its unfinished run.
LOGGING_FIELDS = {"report_to", "tracking_uri"}


def _known_sinks(sinks: list[str]) -> list[str]:
    for sink in sinks:
        if sink not in TRACKER_SINKS:
            raise ValueError(f"unknown sink {sink!r}; known: {', '.join(TRACKER_SINKS)}")
    if len(set(sinks)) != len(sinks):
        raise ValueError(f"a sink is listed twice: {sinks}")
    return sinks


ReportTo = Annotated[
    list[str],
    AfterValidator(_known_sinks),
    Field(
        default_factory=list,
        description="experiment trackers besides metrics.json: tensorboard (event files in the run dir), "
        "mlflow (a sqlite store `mlflow.db` in the run dir unless tracking_uri is set)",
    ),
]
TrackingURI = Annotated[
    str | None,
    Field(
        None, description="mlflow: tracking URI (default: sqlite store `mlflow.db` inside the run directory)"
    ),
]


def default_threads() -> int:
    """Torch threads when a config does not say: OMP_NUM_THREADS when set (torchrun sets 1 per process, so
    processes do not oversubscribe the cores), else the cores this process may use."""
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class RunConfigBase(Strict):
    """What every task's top-level config shares: YAML round trip and the hash that finds its unfinished run."""

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def config_hash(self) -> str:
        dump = self.model_dump(mode="json")
        return stable_hash({k: v for k, v in dump.items() if k not in LOGGING_FIELDS})

    def torch_threads(self) -> int:
        threads = getattr(self, "threads", None)
        return threads if threads is not None else default_threads()


def format_validation_errors(
    err: ValidationError, source: str, *, prefix: tuple[str, ...] = (), hide: tuple[str, ...] = ()
) -> str:
    """One line per problem: `source: field.path: what was expected`. `hide` drops union tags from paths."""
    lines = []
    for e in err.errors():
        path = ".".join([*prefix, *(str(p) for p in e["loc"] if p not in hide)]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required field missing"
        else:
            got = e.get("input")
            if not isinstance(got, dict | list) and e["type"] not in ("value_error",):
                msg = f"{msg} (got {got!r})"
        lines.append(f"{source}: {path}: {msg}")
    return "\n".join(lines)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply dotted `key.sub=value` overrides (values parsed as YAML scalars/lists)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        node: Any = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = node[_list_index(part, key)]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise ConfigError(f"override {key!r}: {'.'.join(parts[: i + 1])} is not a mapping")
        if isinstance(node, list):
            node[_list_index(parts[-1], key)] = value
        else:
            node[parts[-1]] = value
    return data


def _list_index(part: str, key: str) -> int:
    if not part.isdigit():
        raise ConfigError(f"override {key!r}: {part!r} must be a list index")
    return int(part)


def parse_yaml(text: str, source: str) -> Any:
    """yaml.safe_load (a config never builds objects) with errors that name the file, line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        raise ConfigError(f"{source}:{where} invalid YAML: {getattr(err, 'problem', err)}") from None
