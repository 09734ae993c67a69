"""A PyTorch model to an ONNX file, and the check that onnxruntime computes what PyTorch does.

Export uses torch's own exporter (`torch.onnx.export(dynamo=True)`, which needs the `onnxscript` package) with a
dynamic batch dimension; the file appears atomically (written beside the target, then renamed), so a failed
export leaves no half-written model. A model whose output is structured (a detector's per-level lists in a
dataclass) is exported with its tensors flattened in a fixed order (`output_tensors`), one ONNX output each.
`check_onnx` runs the file in onnxruntime on the CPU and compares its
outputs with PyTorch's on the same inputs, and times both at batch 1 the same way (warm-up discarded, the
median of several rounds, the runs alternating), since a student is worth what it saves where it runs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.io import atomic_output
from kdistill.runs.timing import time_models

__all__ = [
    "FlatOutputs",
    "OnnxCheck",
    "check_onnx",
    "export_onnx",
    "onnx_session",
    "output_tensors",
    "time_alternating",
]

# onnxruntime and PyTorch sum in different orders: float32 outputs of the zoo's students agree to ~1e-6
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-4


def output_tensors(output: Any) -> Iterator[torch.Tensor]:
    """The tensors of a model's output in a fixed order: a tensor, or the tensors inside dataclass fields,
    lists, tuples and dicts (depth first, in field / index / key order); other values (ints) are skipped."""
    if isinstance(output, torch.Tensor):
        yield output
    elif is_dataclass(output):
        for field in fields(output):
            yield from output_tensors(getattr(output, field.name))
    elif isinstance(output, list | tuple):
        for item in output:
            yield from output_tensors(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from output_tensors(item)


class FlatOutputs(nn.Module):
    """`model` with its output as a tuple of tensors (`output_tensors`): what ONNX can name and return."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(output_tensors(self.model(x)))


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Write `model` (in eval mode, float32, on the CPU) as ONNX to `path`, batch dimension dynamic. A model
    with one tensor output names it `logits`; otherwise the outputs are `output_<i>` in `output_tensors` order."""
    model = model.eval().float().cpu()
    with torch.inference_mode():
        outputs = list(output_tensors(model(example.float().cpu())))
    names = ["logits"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    flat = FlatOutputs(model).eval()
    batch = torch.export.Dim("batch", min=1)
    with atomic_output(path) as tmp, contextlib.redirect_stdout(io.StringIO()), quiet_exporter():
        torch.onnx.export(
            flat,
            (example.float().cpu(),),
            str(tmp),
            dynamo=True,
            input_names=["input"],
            output_names=names,
            dynamic_shapes=({0: batch},),
            external_data=False,
        )
    return Path(path)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporter's progress (stdout), its notes that torchvision's operators are not registered (none of
    kdistill's models uses them) and a deprecation warning from inside torch: noise on a user's terminal."""
    exporter_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        exporter_log.setLevel(level)


def time_alternating(
    calls: dict[str, Callable[[], Any]], *, rounds: int = 5, repeats: int = 50
) -> dict[str, float]:
    """Median ms per call of each of `calls`, timed in turns (kdistill.runs.timing.time_models): `rounds`
    rounds of `repeats` calls of each, the order reversed every other round so none always runs right after
    another, and a first round discarded as warm-up (thread pools, caches, lazy initialisation)."""
    phase = time_models(calls, rounds=rounds, repeats=repeats, warmup_rounds=1, clock=time.perf_counter)
    return {key: 1000 * timing.median_s for key, timing in phase.models.items()}


def onnx_session(path: str | os.PathLike[str]) -> Any:
    """An onnxruntime CPU session on `path` with as many threads as torch uses (like for like). Its threads
    do not spin-wait after a call: spinning threads would take the cores from whatever is timed next (a
    PyTorch model timed in turns with it measured 40% slower)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class OnnxCheck:
    """onnxruntime against PyTorch on the same inputs: the largest difference and batch-1 latency."""

    max_abs_diff: float
    within_tolerance: bool
    torch_ms: float  # median ms per sample at batch 1
    onnxruntime_ms: float
    rounds: int


def check_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    inputs: torch.Tensor,
    *,
    rounds: int = 5,
    repeats: int = 50,
) -> OnnxCheck:
    """Outputs of `path` in onnxruntime vs `model` on `inputs` (any batch), then both timed at batch 1:
    `rounds` rounds of `repeats` calls each, the two alternating, the first round discarded as warm-up."""
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    model = model.eval().float().cpu()
    x = inputs.float().cpu()
    with torch.inference_mode():
        expected = [t.numpy() for t in output_tensors(model(x))]
    got = session.run(None, {name: x.numpy()})
    if len(got) != len(expected):
        raise ValueError(f"{path}: {len(got)} outputs, but the model gives {len(expected)} tensors")
    diff, within = 0.0, True
    for g, e in zip(got, expected, strict=True):  # every output, in output_tensors order
        if e.size:
            diff = max(diff, float(abs(g - e).max()))
            within = within and bool((abs(g - e) <= PARITY_ATOL + PARITY_RTOL * abs(e)).all())

    one = x[:1]
    one_np = one.numpy()
    with torch.inference_mode():
        times = time_alternating(
            {"torch": lambda: model(one), "ort": lambda: session.run(None, {name: one_np})},
            rounds=rounds,
            repeats=repeats,
        )
    return OnnxCheck(diff, within, times["torch"], times["ort"], rounds)
