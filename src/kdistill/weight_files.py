"""What a weights file is, judged without loading it: a safetensors header's tensor shapes, or a pickle that
kdistill refuses to open (unpickling can run code). The config checks (`kdistill.preflight`) and the loaders
(classic teacher, language models) share these, so both give the same one-line refusal.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

__all__ = ["PreflightError", "pickle_only_weights", "refuse_pickle_weights", "safetensors_shapes"]

# What transformers unpickles (torch.load) when a model folder has no safetensors weights.
PICKLE_WEIGHT_FILES = "pytorch_model*.bin"


class PreflightError(ValueError):
    """A config that cannot run, found before training: one line per problem, each naming its field."""


def _pickle_message(field: str, path: Path, convert: str) -> str:
    prefix = f"{field}: " if field else ""
    return (
        f"{prefix}refused: {path} is a pickle checkpoint, which can run code when loaded; convert it to "
        f"safetensors ({convert})"
    )


def _is_pickle(path: Path) -> bool:
    """torch.save output: a zip holding `data.pkl` (torch >= 1.6), or a bare pickle (protocol 2+)."""
    with path.open("rb") as f:
        head = f.read(2)
    if head == b"PK":
        try:
            with zipfile.ZipFile(path) as z:
                return any(name.endswith(".pkl") for name in z.namelist())
        except zipfile.BadZipFile:
            return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def safetensors_shapes(path: Path, field: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's header (no tensor is read); PreflightError, naming
    `field`, for a missing path, a folder, a pickle or anything else that is not safetensors."""
    from safetensors import SafetensorError, safe_open

    if path.is_dir():
        raise PreflightError(f"{field}: {path} is a directory; expected a .safetensors file")
    if not path.is_file():
        raise PreflightError(f"{field}: no file {path}")
    if _is_pickle(path):
        raise PreflightError(
            _pickle_message(field, path, "where you trust it: safetensors.torch.save_file(state_dict, path)")
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    except SafetensorError as err:
        raise PreflightError(
            f"{field}: {path} is not a safetensors file ({err}); expected weights saved with "
            "safetensors.torch.save_file"
        ) from None


def pickle_only_weights(model_dir: str | Path) -> Path | None:
    """The pickled weights transformers would unpickle from a local model folder that has no safetensors
    weights (None: a safetensors folder, no such folder, or a hub id)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir() or any(model_dir.glob("*.safetensors")):
        return None
    found = sorted(model_dir.glob(PICKLE_WEIGHT_FILES))
    return found[0] if found else None


def refuse_pickle_weights(model_dir: str | Path, field: str = "") -> None:
    """PreflightError if the model in `model_dir` would be loaded from a pickle; it is never opened."""
    pickled = pickle_only_weights(model_dir)
    if pickled is not None:
        raise PreflightError(
            _pickle_message(
                field,
                pickled,
                "where you trust it: load the model and save_pretrained(folder), which writes "
                "model.safetensors",
            )
        )
