"""Checks of a run config that need files or models but no training: what `kdistill validate` reports and
what `kdistill run` checks before it makes a run folder, so a config that cannot run leaves nothing behind.

Every problem is one line naming the config field and what was expected; `preflight(cfg)` raises them all
together. Nothing here loads weights: checkpoints are judged by their headers, models are built on the meta
device (no memory), and a pickle is never unpickled.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kdistill.weight_files import (
    PreflightError,
    pickle_only_weights,
    refuse_pickle_weights,
    safetensors_shapes,
)

__all__ = [
    "INPUT_SHAPES",
    "PreflightError",
    "check_detector_checkpoint",
    "config_problems",
    "pickle_only_weights",
    "preflight",
    "refuse_pickle_weights",
    "safetensors_shapes",
]

# One sample of each built-in classic dataset, (C, ...); all have 10 classes. The data loaders are the truth
# (tests compare); loading mnist1d to learn its shape would generate the whole dataset.
INPUT_SHAPES: dict[str, tuple[int, ...]] = {"digits": (1, 8, 8), "mnist1d": (1, 40)}
NUM_CLASSES = 10


def preflight(cfg: Any) -> None:
    """Raise PreflightError listing every problem of `cfg` that files or models reveal (none: return)."""
    problems = config_problems(cfg)
    if problems:
        raise PreflightError("\n".join(problems))


def config_problems(cfg: Any) -> list[str]:
    """One line per problem of a classic, `task: lm`, `task: encoder` or `task: detection` config."""
    from kdistill.detection.config import DetectionRunConfig
    from kdistill.encoders.config import EncoderRunConfig
    from kdistill.lm.config import LMRunConfig

    if isinstance(cfg, DetectionRunConfig):
        return list(_detection_problems(cfg))
    if isinstance(cfg, LMRunConfig):
        return list(_lm_problems(cfg))
    if isinstance(cfg, EncoderRunConfig):
        return list(_encoder_problems(cfg))
    return list(_classic_problems(cfg))


def _checked(check: Any, *args: Any) -> Iterator[str]:
    """The problem `check(*args)` raises, as a line (FileNotFoundError from model references included)."""
    try:
        check(*args)
    except (PreflightError, OSError) as err:  # FileNotFoundError from model references, too-long names
        yield str(err)


# -- classic -----------------------------------------------------------------------------------------------


def _meta_model(arch: str, dataset: str) -> Any:
    """The zoo model with parameter shapes and module names, but no storage."""
    import torch

    from kdistill.classic.zoo import build_model

    with torch.device("meta"):
        return build_model(arch, INPUT_SHAPES[dataset], NUM_CLASSES)


def _missing_module(field: str, path: str | None, model: Any, arch: str) -> Iterator[str]:
    modules = dict(model.named_modules())
    if path is not None and path not in modules:
        top = ", ".join(name for name, _ in model.named_children())
        yield f"{field}: no module {path!r} in {arch}; modules: {top}"


def _classic_problems(cfg: Any) -> Iterator[str]:
    import torch

    from kdistill.classic.teacher import check_teacher_checkpoint

    if cfg.device == "cuda" and not torch.cuda.is_available():
        yield "device: cuda was asked for but torch sees no CUDA device; use device: cpu (or auto)"
    if cfg.data.dataset == "mnist1d" and importlib.util.find_spec("mnist1d") is None:
        yield "data.dataset: mnist1d needs the `mnist1d` package: pip install 'kdistill[bench]'"
    student = _meta_model(cfg.student.arch, cfg.data.dataset)
    teacher = _meta_model(cfg.teacher.arch, cfg.data.dataset)
    if cfg.teacher.checkpoint is not None:
        yield from _checked(check_teacher_checkpoint, cfg.teacher.checkpoint, teacher, cfg.teacher.arch)
    if cfg.method.name == "none":
        return  # the loss terms are not used
    # born-again's teacher is the previous generation: the student's architecture
    born_again = cfg.method.name == "born_again"
    tapped, tapped_arch = (student, cfg.student.arch) if born_again else (teacher, cfg.teacher.arch)
    for i, term in enumerate(cfg.loss):
        yield from _missing_module(f"loss.{i}.student_layer", term.student_layer, student, cfg.student.arch)
        yield from _missing_module(f"loss.{i}.teacher_layer", term.teacher_layer, tapped, tapped_arch)


# -- detection ---------------------------------------------------------------------------------------------

DETECTOR_PREFIX = "student."  # a detection job (and the cached teacher) saves its detector under this prefix


def check_detector_checkpoint(path: Path, model: Any, arch: str, field: str) -> None:
    """PreflightError (one line) unless the safetensors file holds exactly `model`'s tensors with their shapes,
    bare or under `student.` (a job's own weights); only the header is read."""
    shapes = safetensors_shapes(path, field)
    if shapes and all(n.startswith(DETECTOR_PREFIX) for n in shapes):
        shapes = {n.removeprefix(DETECTOR_PREFIX): s for n, s in shapes.items()}
    elif any(n.startswith(DETECTOR_PREFIX) for n in shapes):  # a distillation job: the student plus adapters
        shapes = {
            n.removeprefix(DETECTOR_PREFIX): s for n, s in shapes.items() if n.startswith(DETECTOR_PREFIX)
        }
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    problems = []
    if missing := [n for n in expected if n not in shapes]:
        problems.append(
            f"missing {', '.join(missing[:3])}"
            + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        )
    if unexpected := [n for n in shapes if n not in expected]:
        problems.append(
            f"unexpected {', '.join(unexpected[:3])}"
            + (f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else "")
        )
    for name in (n for n in expected if n in shapes and tuple(shapes[n]) != expected[n]):
        problems.append(f"{name} is {list(shapes[name])} in the file, {list(expected[name])} in {arch}")
    if problems:
        raise PreflightError(f"{field}: {path} does not fit detector {arch!r}: {'; '.join(problems[:4])}")


def _detection_problems(cfg: Any) -> Iterator[str]:
    import torch

    from kdistill.detection.coco import INSTANCES_FILE
    from kdistill.detection.models import build_detector

    if cfg.device == "cuda" and not torch.cuda.is_available():
        yield "device: cuda was asked for but torch sees no CUDA device; use device: cpu (or auto)"
    for field in ("train_folder", "test_folder", "unlabeled_folder"):
        folder = getattr(cfg.data, field)
        if folder is not None and not (Path(folder) / INSTANCES_FILE).is_file():
            yield f"data.{field}: {folder} has no {INSTANCES_FILE} (expected a COCO folder: images + {INSTANCES_FILE})"
    if cfg.data.source == "coco":
        return  # the number of classes comes from the folder: shapes are checked when it is read
    from kdistill.detection.scenes import CLASSES

    with torch.device("meta"):
        teacher = build_detector(cfg.teacher.arch, len(CLASSES))
        student = build_detector(cfg.student.arch, len(CLASSES))
    if cfg.teacher.checkpoint is not None:
        yield from _checked(
            check_detector_checkpoint, cfg.teacher.checkpoint, teacher, cfg.teacher.arch, "teacher.checkpoint"
        )
    for a, arm in enumerate(cfg.arms):
        for i, term in enumerate(arm.losses):
            for j, path in enumerate(term.student_layers):
                yield from _missing_module(
                    f"arms.{a}.losses.{i}.student_layers.{j}", path, student, cfg.student.arch
                )
            for j, path in enumerate(term.teacher_layers):
                yield from _missing_module(
                    f"arms.{a}.losses.{i}.teacher_layers.{j}", path, teacher, cfg.teacher.arch
                )


# -- lm and encoder ----------------------------------------------------------------------------------------


def _local_model(field: str, ref: str, gguf_file: str | None = None) -> tuple[Path | None, str | None]:
    """The local folder a model reference names (None: a hub id) and its GGUF file (given, or the one GGUF a
    folder without config.json holds); FileNotFoundError naming `field`."""
    from kdistill.runs.locations import resolve_model

    try:
        resolved = resolve_model(ref, gguf_file=gguf_file, field=field)
    except ValueError as err:  # a reference that contradicts itself (empty, a bare pkg:, two GGUF names)
        raise FileNotFoundError(str(err)) from None
    path = Path(resolved.path)
    return (path if path.exists() else None), resolved.gguf_file


def _model_folder_problems(field: str, ref: str, gguf_file: str | None = None) -> Iterator[str]:
    try:
        folder, gguf = _local_model(field, ref, gguf_file)
    except FileNotFoundError as err:
        yield str(err)
        return
    if folder is None or gguf is not None:
        return  # a hub id, or GGUF weights (not a pickle; the resolver checked the file is there)
    if not folder.is_dir():
        yield f"{field}: {folder} is a file; expected a model folder (config.json and weights) or a hub id"
        return
    yield from _checked(refuse_pickle_weights, folder, field)


def _existing(field: str, ref: str | None, what: str) -> Iterator[str]:
    if ref is not None and not Path(ref).exists():
        yield f"{field}: no {what} {ref}"


def _lm_problems(cfg: Any) -> Iterator[str]:
    from kdistill.runs.locations import resolve_prompts

    yield from _model_folder_problems("teacher.model", cfg.teacher.model, cfg.teacher.gguf_file)
    if cfg.student.init == "pretrained":
        yield from _model_folder_problems("student.model", cfg.student.model)
    if cfg.prompts.generations is not None:
        yield from _existing("prompts.generations", cfg.prompts.generations, "generation directory")
    else:
        yield from _checked(resolve_prompts, cfg.prompts.file)
    yield from _existing("distill.signal_dir", cfg.distill.signal_dir, "signal directory")


def _encoder_problems(cfg: Any) -> Iterator[str]:
    try:
        folder, _ = _local_model("teacher.model", cfg.teacher.model)
    except FileNotFoundError as err:
        yield str(err)
        folder = None
    if folder is not None and folder.is_dir():
        from kdistill.encoders.models import read_sentence_transformers_layout

        try:  # sentence-transformers may keep the transformer in a subfolder (modules.json says which)
            subfolder = read_sentence_transformers_layout(folder).transformer_path
        except ValueError as err:
            yield f"teacher.model: {err}"
            subfolder = ""
        yield from _checked(refuse_pickle_weights, folder / subfolder, "teacher.model")
    if cfg.corpus.source == "files":
        for i, ref in enumerate(cfg.corpus.files):
            yield from _existing(f"corpus.files.{i}", ref, "file or directory")
