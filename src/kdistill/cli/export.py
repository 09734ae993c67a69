"""`kdistill export`: a trained student out of its run folder, into a deployable format (ONNX)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kdistill.cli.output import console, fail


def export_command(
    student: Annotated[
        Path,
        typer.Argument(help="a student's job folder in a run folder, e.g. runs/digits-.../jobs/distilled-s0"),
    ],
    onnx: Annotated[Path, typer.Option("--onnx", help="write the student as ONNX to this file")],
    peer: Annotated[int, typer.Option(help="mutual learning: which peer of the job (0, 1, ...)", min=0)] = 0,
    check_batch: Annotated[int, typer.Option(help="inputs in the onnxruntime-vs-PyTorch check", min=1)] = 64,
) -> None:
    """Export a classic student to ONNX, check onnxruntime's outputs against PyTorch's, time both at batch 1.

    Example: kdistill export runs/digits-20261202-101500/jobs/distilled-s0 --onnx student.onnx
    """
    from kdistill.classic.saved import example_inputs, load_job_student
    from kdistill.export.onnx import PARITY_ATOL, PARITY_RTOL, check_onnx, export_onnx
    from kdistill.runs.threads import torch_threads

    try:
        saved = load_job_student(student, peer=peer)
    except ValueError as err:
        raise fail(str(err)) from None
    if not onnx.parent.is_dir():
        raise fail(f"--onnx {onnx}: no folder {onnx.parent}")
    with torch_threads(1):  # the setting students are timed in on small CPUs
        export_onnx(saved.model, example_inputs(saved, 2), onnx)
        check = check_onnx(saved.model, onnx, example_inputs(saved, check_batch, seed=1))
    size_kb = onnx.stat().st_size / 1024
    console.print(
        f"wrote {onnx} ({size_kb:.1f} kB): {saved.arch} student of job {saved.job}", highlight=False
    )
    verdict = "equal" if check.within_tolerance else "NOT equal"
    console.print(
        f"onnxruntime vs PyTorch on {check_batch} inputs: max |diff| {check.max_abs_diff:.2e} ({verdict} within "
        f"atol {PARITY_ATOL:g} + rtol {PARITY_RTOL:g}); batch 1, 1 thread: PyTorch {check.torch_ms:.3f} ms, "
        f"onnxruntime {check.onnxruntime_ms:.3f} ms (median of {check.rounds} rounds)",
        highlight=False,
    )
    if not check.within_tolerance:
        raise typer.Exit(code=1)
