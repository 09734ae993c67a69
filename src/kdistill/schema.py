"""The base of every config model: strict pydantic (unknown keys are errors), stable hashing, and the
one-line-per-problem error format that names each field path.

Task configs (classic, lm, encoders, generate, capture) build on `Strict` and `RunConfigBase`; this module
imports none of them, so any of them can import it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

# A config is a page of settings: a file larger than this is a mistake (a data file passed as the config),
# refused before it is read, and it bounds the memory parsing may take (a 1 MiB YAML list is ~500k values).
CONFIG_MAX_BYTES = 1 << 20
# YAML aliases can expand a small file into a huge tree ("billion laughs"); no real config comes close.
CONFIG_MAX_VALUES = 1_000_000

# Bounds of values with a meaning, shared by every task config (and named in their field descriptions).
LR_MAX = 10.0  # no optimizer here trains at a learning rate above 10: a larger one is a typo
LOSS_WEIGHT_MAX = 1000.0  # loss terms are O(1): a weight above 1000 drowns every other term
TEMPERATURE_MAX = 100.0  # softmax at T > 100 is uniform to float precision: nothing left to learn
NAME_MAX_LENGTH = 100  # run names prefix directory names (255 bytes at most on common file systems)
SEED_MAX = 2**32 - 1  # numpy and scikit-learn take seeds in [0, 2**32)


class ConfigError(ValueError):
    """A user error in a config: one line per problem, each naming the field path."""


class Strict(BaseModel):
    """A config section: unknown keys and wrong types are errors, assignments are validated too, and no float
    may be inf or nan (a config that says `lr: .inf` is a mistake, never a setting)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# A run's (or a student's) name: letters, digits and `_.-` only, as it names a directory.
RunName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+$", max_length=NAME_MAX_LENGTH)]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


def nested_error(field: str, message: str) -> PydanticCustomError:
    """A validator's error about `field` inside the value it checks (`params.temperature` of a loss term):
    `format_validation_errors` appends `field` to the path, so the line names the exact key."""
    return PydanticCustomError("nested_field", "{message}", {"field": field, "message": message})


def one_error(expected: str) -> Any:
    """A wrap validator that turns every failure of a union (one error per member: `float`, `int`) into the one
    line `expected ...`, as the user sees one field, not the union's members."""

    def validate(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("expected", "expected {expected}", {"expected": expected}) from None

    return WrapValidator(validate)


def usable_path(value: Any) -> Any:
    """A path (or hub id, `pkg:` reference) the file system could hold: no NUL character, no component over
    255 bytes, at most 4096 bytes in all, a `~user` that exists; otherwise opening it fails with an OSError
    far from the config. A `pkg:<package>[/subdir]` names a top-level package (finding `a.b` would import
    `a`: a config never runs code)."""
    text = str(value)
    if "\x00" in text:
        raise ValueError("contains a NUL character; not a usable path")
    if len(text.encode()) > 4096:
        raise ValueError("longer than 4096 bytes; not a usable path")
    if any(len(part.encode()) > 255 for part in text.split("/")):
        raise ValueError("a path component is longer than 255 bytes; not a usable path")
    if text.startswith("~"):
        try:
            Path(text).expanduser()
        except RuntimeError:
            raise ValueError(f"{text.split('/')[0]}: no such user's home directory") from None
    package = text.removeprefix("pkg:").partition("/")[0]
    if text.startswith("pkg:") and not PACKAGE_NAME.fullmatch(package):
        raise ValueError(
            f"pkg:<package>[/subdir] needs the name of an installed top-level package, got {package!r}"
        )
    return value


PACKAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# A file or folder a config names (as text, or as a Path), checked by `usable_path`.
PathText = Annotated[str, AfterValidator(usable_path)]
PathValue = Annotated[Path, AfterValidator(usable_path)]

# A student's layers: how many to keep, or their indices (one error line either way, not one per form).
KeepLayers = Annotated[int | list[int] | None, one_error("a layer count or a list of layer indices")]


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
        parts = [*prefix, *(str(p) for p in e["loc"] if p not in hide)]
        if e["type"] == "nested_field":
            parts.append(e["ctx"]["field"])
        path = ".".join(parts) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required field missing"
        else:
            got = e.get("input")
            if not isinstance(got, dict | list) and e["type"] not in ("value_error", "nested_field"):
                msg = f"{msg} (got {_short_repr(got)})"
        lines.append(f"{source}: {path}: {msg}")
    return "\n".join(lines)


def _short_repr(value: Any) -> str:
    """repr cut to a readable length: an error line quotes the value, not a megabyte of it."""
    return _SHORT.repr(value)


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 80, 80, 40


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply dotted `key.sub=value` overrides (values parsed as YAML scalars/lists/mappings), in place.

    A list entry is addressed by its index (`loss.1.weight=0.5`) and must exist; a missing mapping on the way
    is created. Every problem is a ConfigError naming the override."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        parts = key.split(".")
        if not key:
            raise ConfigError(f"override {item!r}: the key is empty; expected key.path=value")
        if not all(parts):
            raise ConfigError(f"override {item!r}: an empty key between dots; expected key.path=value")
        if len(raw) > CONFIG_MAX_BYTES:
            raise ConfigError(f"override {key!r}: the value is longer than {CONFIG_MAX_BYTES} characters")
        value = parse_yaml(raw, f"override {item!r}")
        node: Any = data
        for i, part in enumerate(parts):
            where = ".".join(parts[:i]) or "the config"
            last = i == len(parts) - 1
            if isinstance(node, list):
                index = _list_index(node, part, item, where)
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                elif node.get(part) is not None:
                    node = node[part]
                elif parts[i + 1].isdigit():
                    raise ConfigError(
                        f"override {item!r}: {'.'.join(parts[: i + 1])} is not in the config, so it has no "
                        f"entry {parts[i + 1]} (set the whole list: {'.'.join(parts[: i + 1])}=[...])"
                    )
                else:  # a section the config leaves out (or null): the override starts it
                    node[part] = {}
                    node = node[part]
            else:
                raise ConfigError(
                    f"override {item!r}: {where} is {_short_repr(node)}, not a mapping or list to go into"
                )
    return data


def _list_index(node: list, part: str, item: str, where: str) -> int:
    if not part.isdigit():
        raise ConfigError(f"override {item!r}: {where} is a list: {part!r} must be an index (0, 1, ...)")
    if int(part) >= len(node):
        raise ConfigError(
            f"override {item!r}: {where} has {len(node)} entries (indices 0-{len(node) - 1}), no {part}"
            if node
            else f"override {item!r}: {where} is an empty list, it has no entry {part}"
        )
    return int(part)


def read_config_text(path: Path) -> str:
    """The text of a config file: at most CONFIG_MAX_BYTES (checked before reading), UTF-8 (a BOM is
    allowed). Anything else is a ConfigError naming the file."""
    try:
        size = path.stat().st_size
        if size > CONFIG_MAX_BYTES:
            raise ConfigError(
                f"{path}: the file is {size} bytes; a config is at most {CONFIG_MAX_BYTES} bytes (1 MiB)"
            )
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"{path}: the file is UTF-16 text (it starts with a UTF-16 BOM); save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
            "a config is a UTF-8 YAML file"
        ) from None


class ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader that builds JSON-like data only and refuses duplicate keys.

    A repeated key at any depth is an error naming both lines (plain YAML keeps the last one: a second
    `train:` block would silently drop the first). Timestamps stay strings, and the tags that build other
    Python types (!!binary, !!set, !!omap, !!pairs, !!timestamp) are refused: a config holds strings,
    numbers, booleans, null, lists and mappings, which every field, hash and dump handles."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges, later keys override
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in first_line:
                        raise yaml.constructor.ConstructorError(
                            problem=f"duplicate key {_short_repr(key)} (first at line {first_line[key]}); "
                            "a key may appear once per mapping",
                            problem_mark=key_node.start_mark,
                        )
                    first_line[key] = line
                except TypeError:  # an unhashable key: the base class reports it
                    pass
        return super().construct_mapping(node, deep=deep)

    def refuse_tag(self, node: yaml.Node) -> Any:
        raise yaml.constructor.ConstructorError(
            problem=f"the tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not allowed in a config "
            "(strings, numbers, booleans, null, lists and mappings only)",
            problem_mark=node.start_mark,
        )


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag in ("binary", "set", "omap", "pairs", "timestamp"):
    ConfigLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", ConfigLoader.refuse_tag)


def parse_yaml(text: str, source: str) -> Any:
    """Safe YAML (a config never builds objects, see ConfigLoader) with errors that name the file, line and
    column; a tree that YAML aliases expand past CONFIG_MAX_VALUES values is refused."""
    try:
        data = yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - ConfigLoader is a SafeLoader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = err.problem or err.context or "malformed"
        raise ConfigError(f"{source}:{where} invalid YAML: {problem}") from None
    except yaml.reader.ReaderError as err:
        raise ConfigError(
            f"{source}: character {err.position + 1}: invalid YAML: unacceptable character "
            f"#x{err.character if isinstance(err.character, int) else ord(err.character):04x} ({err.reason})"
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: invalid YAML: {' '.join(str(err).split())}") from None
    except RecursionError:
        raise ConfigError(
            f"{source}: invalid YAML: nested too deeply (lists or mappings inside each other)"
        ) from None
    _check_expanded_size(data, source)
    return data


def _check_expanded_size(data: Any, source: str) -> None:
    """Count the values of the parsed tree (an alias counts again wherever it is used) up to the cap."""
    stack, seen = [data], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > CONFIG_MAX_VALUES:
            raise ConfigError(
                f"{source}: the config expands to more than {CONFIG_MAX_VALUES} values "
                "(YAML aliases that repeat a large block, or refer to themselves)"
            )
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
