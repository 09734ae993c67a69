"""A PyTorch model to an ONNX file, and the check that onnxruntime computes what PyTorch does.

Export uses torch's own exporter (`torch.onnx.export(dynamo=True)`, which needs the `onnxscript` package) with a
dynamic batch dimension; the file appears atomically (written beside the target, then renamed), so a failed
export leaves no half-written model. `check_onnx` runs the file in onnxruntime on the CPU and compares its
outputs with PyTorch's on the same inputs, and times both at batch 1 the same way (warm-up discarded, the
median of several rounds, the runs alternating), since a student is worth what it saves where it runs.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdistill.io import atomic_output

__all__ = ["OnnxCheck", "check_onnx", "export_onnx"]

# onnxruntime and PyTorch sum in different orders: float32 outputs of the zoo's students agree to ~1e-6
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-4


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Write `model` (in eval mode, float32, on the CPU) as ONNX to `path`, batch dimension dynamic."""
    model = model.eval().float().cpu()
    batch = torch.export.Dim("batch", min=1)
    with atomic_output(path) as tmp, contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress
        torch.onnx.export(
            model,
            (example.float().cpu(),),
            str(tmp),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            external_data=False,
        )
    return Path(path)


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
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads as the PyTorch side
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    model = model.eval().float().cpu()
    x = inputs.float().cpu()
    with torch.inference_mode():
        expected = model(x).numpy()
    got = session.run(None, {name: x.numpy()})[0]
    diff = float(abs(got - expected).max()) if expected.size else 0.0
    within = bool(((abs(got - expected)) <= PARITY_ATOL + PARITY_RTOL * abs(expected)).all())

    one = x[:1]
    one_np = one.numpy()

    def timed(call) -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        return (time.perf_counter() - start) * 1000 / repeats

    torch_ms, ort_ms = [], []
    with torch.inference_mode():
        for r in range(rounds + 1):
            arms = [("torch", lambda: model(one)), ("ort", lambda: session.run(None, {name: one_np}))]
            for arm, call in arms if r % 2 == 0 else arms[::-1]:
                ms = timed(call)
                if r > 0:  # round 0 warms both up
                    (torch_ms if arm == "torch" else ort_ms).append(ms)
    return OnnxCheck(diff, within, statistics.median(torch_ms), statistics.median(ort_ms), rounds)
