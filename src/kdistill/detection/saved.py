"""A detection run's trained student, read back from its job folder (`runs/<run>/jobs/<job>/`), for export.

A job saves everything it trained in `model.safetensors`: the student under `student.`, beside its loss
terms' own modules (`adapters.`, `contexts.`), which are left out. The detector's size comes from the run's
`config.yaml` (`student.arch`); the image size and classes from its `manifest.json` (`data`), since COCO
folders decide them only when the run reads its data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from kdistill.detection.models import DETECTOR_SIZES, FCOSDetector, build_detector
from kdistill.schema import ConfigError, parse_yaml, read_config_text
from kdistill.weight_files import safetensors_shapes

__all__ = ["SavedDetector", "example_images", "is_detection_job", "load_detection_student"]

WEIGHTS, CONFIG, MANIFEST = "model.safetensors", "config.yaml", "manifest.json"
PREFIX = "student."


@dataclass
class SavedDetector:
    model: FCOSDetector  # in eval mode, float32, on the CPU
    arch: str
    image_size: tuple[int, int]  # (H, W) of the images the run trained on
    num_classes: int
    class_names: tuple[str, ...]  # empty when the manifest names none
    job: str


def is_detection_job(job_dir: str | Path) -> bool:
    """Whether the run around `job_dir` says `task: detection` in its config.yaml. Only that key is read, not
    the config validated: this picks a loader, and the loader validates (and names what is wrong)."""
    config_file = Path(job_dir).parent.parent / CONFIG
    try:
        data = parse_yaml(read_config_text(config_file), str(config_file))
    except (ConfigError, OSError):
        return False
    return isinstance(data, dict) and data.get("task") == "detection"


def load_detection_student(job_dir: str | Path) -> SavedDetector:
    """The student a finished detection job trained. ValueError (one line, naming the path) for a folder that
    is not a finished job of a detection run, or weights that hold no student of the run's architecture."""
    from kdistill.config import DetectionRunConfig, load_config

    job_dir = Path(job_dir)
    weights = job_dir / WEIGHTS
    if not job_dir.is_dir():
        raise ValueError(f"{job_dir}: no such folder; expected a job folder of a run, runs/<run>/jobs/<job>")
    if not weights.is_file():
        raise ValueError(
            f"{job_dir}: no {WEIGHTS}; expected a finished job folder of a run (runs/<run>/jobs/<job>)"
        )
    run_dir = job_dir.parent.parent
    if job_dir.parent.name != "jobs" or not (run_dir / CONFIG).is_file():
        raise ValueError(
            f"{job_dir}: not inside a run folder (expected {run_dir / CONFIG} beside its jobs/ folder)"
        )
    cfg = load_config(run_dir / CONFIG)
    if not isinstance(cfg, DetectionRunConfig):
        task = getattr(cfg, "task", "classify")  # a classic RunConfig has no `task` field: it is the default
        raise ValueError(
            f"{job_dir}: the run is a `task: {task}` run; expected a detection run (`task: detection`)"
        )
    arch = cfg.student.arch
    image_size, num_classes, class_names = _manifest_data(run_dir / MANIFEST)

    model = build_detector(arch, num_classes)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    shapes = safetensors_shapes(weights, str(weights))  # the header only: a mismatch costs no tensor read
    found = {n.removeprefix(PREFIX): s for n, s in shapes.items() if n.startswith(PREFIX)}
    if found != expected:
        there = _what_is_there(shapes, found, expected)
        raise ValueError(
            f"{weights}: no {PREFIX}-prefixed {arch} student with {num_classes} classes; {there}"
        )
    state = load_file(str(weights))
    model.load_state_dict({n.removeprefix(PREFIX): t for n, t in state.items() if n.startswith(PREFIX)})
    return SavedDetector(model.eval().float(), arch, image_size, num_classes, class_names, job_dir.name)


def _manifest_data(manifest: Path) -> tuple[tuple[int, int], int, tuple[str, ...]]:
    """(H, W), number of classes and class names from a run's manifest.json `data`."""
    if not manifest.is_file():
        raise ValueError(
            f"{manifest}: no such file; a detection run records its image size and classes there"
        )
    try:
        content = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{manifest}: not JSON ({err})") from None
    data = content.get("data") if isinstance(content, dict) else None
    if not isinstance(data, dict):
        raise ValueError(
            f"{manifest}: no `data` object; expected data.image_size [H, W] and data.num_classes"
        )
    size, num_classes = data.get("image_size"), data.get("num_classes")
    if not (isinstance(size, list) and len(size) == 2 and all(_positive_int(s) for s in size)):
        raise ValueError(f"{manifest}: data.image_size: expected [H, W], two positive integers, got {size!r}")
    if not _positive_int(num_classes):
        raise ValueError(f"{manifest}: data.num_classes: expected a positive integer, got {num_classes!r}")
    names = data.get("class_names", [])
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)) or len(names) not in (
        0,
        num_classes,
    ):
        raise ValueError(f"{manifest}: data.class_names: expected {num_classes} names, got {names!r}")
    return (size[0], size[1]), num_classes, tuple(names)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _what_is_there(
    shapes: dict[str, tuple[int, ...]],
    found: dict[str, tuple[int, ...]],
    expected: dict[str, tuple[int, ...]],
) -> str:
    """What the file holds instead, in one clause: its top-level prefixes, or how the student differs (and
    which detector it fits, when one does)."""
    if not found:
        counts: dict[str, int] = {}
        for name in shapes:
            top = name.split(".")[0] + "." if "." in name else name
            counts[top] = counts.get(top, 0) + 1
        held = ", ".join(f"{p} ({n} tensors)" for p, n in sorted(counts.items())) or "no tensors"
        return f"it holds {held}"
    missing = sorted(expected.keys() - found.keys())
    extra = sorted(found.keys() - expected.keys())
    reshaped = sorted(n for n in expected.keys() & found.keys() if expected[n] != found[n])
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing (first {PREFIX}{missing[0]})")
    if extra:
        parts.append(f"{len(extra)} unexpected tensors (first {PREFIX}{extra[0]})")
    if reshaped:
        n = reshaped[0]
        parts.append(
            f"{len(reshaped)} of another shape (first {PREFIX}{n}: {found[n]}, expected {expected[n]})"
        )
    fits = _fitting_detector(found)
    return "its student. tensors differ: " + ", ".join(parts) + (f"; they fit {fits}" if fits else "")


def _fitting_detector(found: dict[str, tuple[int, ...]]) -> str | None:
    """`<arch> with <K> classes` for the known detector whose state dict has exactly these shapes, if any."""
    classes = found.get("head.cls_logits.bias")
    if classes is None or len(classes) != 1:
        return None
    for arch, size in DETECTOR_SIZES.items():
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            candidate = FCOSDetector(size, classes[0])
        if {n: tuple(t.shape) for n, t in candidate.state_dict().items()} == found:
            return f"{arch} with {classes[0]} classes"
    return None


def example_images(saved: SavedDetector, batch: int, seed: int = 0) -> torch.Tensor:
    """Uniform [0, 1) images of the student's input size, (batch, 3, H, W), from a seeded generator (the
    parity check needs the shape and the detector's input range, not scenes)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, *saved.image_size, generator=g)
