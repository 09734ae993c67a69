"""Loading a run config: YAML file or built-in recipe, dotted overrides, validation into the task's model.

The pydantic models are the schema (one module per task: `classic/config.py`, `lm/config.py`,
`encoders/config.py`, on the strict base of `schema.py`); YAML is their serialisation. Every field has a
default and a one-line description; unknown keys and wrong types are errors that name the field path. A
config is data: nothing in it is imported or executed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kdistill.classic.config import RunConfig
from kdistill.detection.config import DetectionRunConfig
from kdistill.encoders.config import EncoderRunConfig
from kdistill.lm.config import LMRunConfig
from kdistill.schema import (
    ConfigError,
    apply_overrides,
    format_validation_errors,
    parse_yaml,
    read_config_text,
    stable_hash,
)

__all__ = [
    "ConfigError",
    "DetectionRunConfig",
    "EncoderRunConfig",
    "LMRunConfig",
    "RunConfig",
    "apply_overrides",
    "builtin_recipes",
    "format_validation_errors",
    "load_config",
    "parse_config",
    "parse_yaml",
    "stable_hash",
]


AnyRunConfig = RunConfig | LMRunConfig | EncoderRunConfig | DetectionRunConfig
TASK_CONFIGS = {
    "classify": RunConfig,
    "lm": LMRunConfig,
    "encoder": EncoderRunConfig,
    "detection": DetectionRunConfig,
}


def parse_config(data: Any, source: str = "<config>") -> AnyRunConfig:
    """Validate a mapping into the config of its `task:` (RunConfig for the default `classify`,
    LMRunConfig, EncoderRunConfig, DetectionRunConfig), raising ConfigError with field paths."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping of config keys at the top level, got {type(data).__name__}"
        )
    task = data.get("task", "classify")
    if not isinstance(task, str) or task not in TASK_CONFIGS:
        raise ConfigError(
            f"{source}: task: expected 'classify' (the default), 'lm', 'encoder' or 'detection', got {task!r}"
        )
    try:
        if task == "classify":
            return RunConfig.model_validate({k: v for k, v in data.items() if k != "task"})
        return TASK_CONFIGS[task].model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_errors(err, source) + _task_hint(data, task, source)) from None


def _task_hint(data: dict, task: str, source: str) -> str:
    """A last line when the top-level keys the task does not know all belong to another task's config (the
    usual cause: a `task:` line left out), else nothing."""
    models = TASK_CONFIGS
    unknown = {k for k in data if k != "task" and k not in models[task].model_fields}
    if not unknown:
        return ""
    fits = [name for name, model in models.items() if name != task and unknown <= model.model_fields.keys()]
    if len(fits) != 1:
        return ""
    keys, other = ", ".join(sorted(unknown)), fits[0]
    return f"\n{source}: {keys}: keys of a `task: {other}` config; is the `task: {other}` line missing?"


def builtin_recipes() -> list[str]:
    return sorted(
        p.name.removesuffix(".yaml")
        for p in resources.files("kdistill.recipes").iterdir()
        if p.name.endswith(".yaml")
    )


def load_config(path_or_recipe: str | Path | None = None, overrides: list[str] | None = None) -> AnyRunConfig:
    """Load a YAML file, or a built-in recipe by name (None = the default recipe `digits`).

    The file must hold at least one setting: an empty one would silently run every default."""
    name = "digits" if path_or_recipe is None else str(path_or_recipe)
    path = Path(name)
    try:
        is_file = path.is_file()
    except (OSError, ValueError) as err:  # a name too long for the file system, a NUL byte
        reason = err.strerror if isinstance(err, OSError) else err
        raise ConfigError(f"{name[:100]!r}: not a usable file name ({reason})") from None
    if is_file:
        text, source = read_config_text(path), str(path)
    elif name in builtin_recipes():
        text = resources.files("kdistill.recipes").joinpath(f"{name}.yaml").read_text()
        source = f"recipe {name}"
    else:
        raise ConfigError(
            f"{name}: no such file, and not a built-in recipe (built-in: {', '.join(builtin_recipes())})"
        )
    data = parse_yaml(text, source)
    if data is None or data == {}:
        raise ConfigError(
            f"{source}: the file is empty (no settings, only comments or blank lines); a config needs at "
            "least one setting, e.g. `name: my_run`"
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping of config keys at the top level, got {type(data).__name__}"
        )
    if overrides:
        data = apply_overrides(data, overrides)
    return parse_config(data, source)
