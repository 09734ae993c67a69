"""`kdistill export`: a trained student out of its run folder, into a deployable format (ONNX, GGUF)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kdistill.cli.output import console, fail

if TYPE_CHECKING:
    from kdistill.export.onnx import OnnxCheck

# A detector costs far more per input than a classic student: this many images suffice for the parity check.
DETECTION_CHECK_BATCH = 8


def export_command(
    student: Annotated[
        Path,
        typer.Argument(
            help="--onnx: a student's job folder in a classic or detection run folder, "
            "e.g. runs/digits-.../jobs/distilled-s0; --gguf: a Hugging Face model folder (config.json, "
            "model.safetensors, tokenizer), e.g. an LM run's student folder"
        ),
    ],
    onnx: Annotated[
        Path | None,
        typer.Option("--onnx", help="write the classic or detection student as ONNX to this file"),
    ] = None,
    gguf: Annotated[
        Path | None, typer.Option("--gguf", help="write the Llama-family LM student as GGUF to this file")
    ] = None,
    gguf_type: Annotated[
        str | None,
        typer.Option("--type", help="--gguf: weight type of 2-D tensors, f16 or q8_0 [default: f16]"),
    ] = None,
    peer: Annotated[
        int, typer.Option(help="classic mutual learning: which peer of the job (0, 1, ...)", min=0)
    ] = 0,
    check_batch: Annotated[
        int,
        typer.Option(
            help=f"inputs in the onnxruntime-vs-PyTorch check (detection: at most {DETECTION_CHECK_BATCH})",
            min=1,
        ),
    ] = 64,
) -> None:
    """Export a classic (classifier) or detection student to ONNX, check onnxruntime's outputs against
    PyTorch's, time both at batch 1. The run's config.yaml says which kind the job holds.

    Example: kdistill export runs/digits-20261202-101500/jobs/distilled-s0 --onnx student.onnx

    Example: kdistill export runs/detection-20261202-101500/jobs/response-s0 --onnx detector.onnx

    With --gguf, a Llama-family LM student (a Hugging Face model folder) becomes one GGUF file for llama.cpp
    or Ollama; it is loaded back and its logits compared with the folder's.

    Example: kdistill export runs/lm-20261202-101500/jobs/distilled-s0/student --gguf student.gguf --type q8_0
    """
    from kdistill.detection.saved import is_detection_job

    if (onnx is None) == (gguf is None):
        raise fail("give exactly one of --onnx FILE or --gguf FILE")
    if gguf is not None:
        _export_gguf(student, gguf, gguf_type or "f16")
        return
    if gguf_type is not None:
        raise fail(f"--type {gguf_type}: applies to --gguf; ONNX keeps the student's float32 weights")

    if is_detection_job(student):
        _export_detector(student, onnx, peer, min(check_batch, DETECTION_CHECK_BATCH))
        return
    from kdistill.classic.saved import example_inputs, load_job_student
    from kdistill.export.onnx import check_onnx, export_onnx
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
        f"wrote {onnx} ({size_kb:.1f} kB): {saved.arch} student of job {saved.job}",
        highlight=False,
        soft_wrap=True,  # a path is never cut across lines, whatever the terminal's width
        markup=False,
    )
    _report(check, f"{check_batch} inputs")


def _export_detector(student: Path, onnx: Path, peer: int, check_batch: int) -> None:
    """The detection half of `export`: the same export and check, on seeded images of the run's size."""
    import torch

    from kdistill.detection.saved import example_images, load_detection_student
    from kdistill.export.onnx import check_onnx, export_onnx, output_tensors
    from kdistill.runs.threads import torch_threads

    if peer != 0:
        raise fail(
            f"--peer {peer}: {student} is a detection job; --peer applies to classic mutual-learning runs"
        )
    try:
        saved = load_detection_student(student)
    except ValueError as err:
        raise fail(str(err)) from None
    if not onnx.parent.is_dir():
        raise fail(f"--onnx {onnx}: no folder {onnx.parent}")
    example = example_images(saved, 2)
    with torch_threads(1):  # the setting students are timed in on small CPUs
        export_onnx(saved.model, example, onnx)
        check = check_onnx(saved.model, onnx, example_images(saved, check_batch, seed=1))
        with torch.inference_mode():
            outputs = len(list(output_tensors(saved.model(example[:1]))))
    size_kb = onnx.stat().st_size / 1024
    height, width = saved.image_size
    console.print(
        f"wrote {onnx} ({size_kb:.1f} kB): {saved.arch} student of job {saved.job} "
        f"({height}x{width} images, {saved.num_classes} classes)",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
    _report(check, f"{check_batch} images, {outputs} outputs")


def _export_gguf(student: Path, gguf: Path, gguf_type: str) -> None:
    """The GGUF half of `export`: write the file, load it back, compare logits with the model folder's."""
    from kdistill.export.gguf import GGUF_PARITY_RTOL, GGUF_TYPES, check_gguf, export_gguf
    from kdistill.runs.threads import torch_threads

    if gguf_type not in GGUF_TYPES:
        raise fail(f"--type {gguf_type}: expected one of {', '.join(GGUF_TYPES)}")
    if not gguf.parent.is_dir():
        raise fail(f"--gguf {gguf}: no folder {gguf.parent}")
    with torch_threads(1):
        try:
            export_gguf(student, gguf, type=gguf_type)
            check = check_gguf(student, gguf, type=gguf_type)
        except ValueError as err:
            raise fail(str(err)) from None
    size_kb = gguf.stat().st_size / 1024
    console.print(
        f"wrote {gguf} ({size_kb:.1f} kB, {gguf_type}): Llama student of {student}",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
    verdict = "equal" if check.within_tolerance else "NOT equal"
    console.print(
        f"GGUF (transformers' loader) vs Hugging Face on {check.tokens} tokens: max |logit diff| "
        f"{check.max_abs_diff:.2e} ({verdict} within {check.tolerance:.2e} = {GGUF_PARITY_RTOL[gguf_type]:g} "
        "x max |logit|)",
        soft_wrap=True,
        highlight=False,
    )
    if not check.within_tolerance:
        raise typer.Exit(code=1)


def _report(check: OnnxCheck, compared: str) -> None:
    """The parity and latency line; exit 1 when onnxruntime and PyTorch disagree."""
    from kdistill.export.onnx import PARITY_ATOL, PARITY_RTOL

    verdict = "equal" if check.within_tolerance else "NOT equal"
    console.print(
        f"onnxruntime vs PyTorch on {compared}: max |diff| {check.max_abs_diff:.2e} ({verdict} within "
        f"atol {PARITY_ATOL:g} + rtol {PARITY_RTOL:g}); batch 1, 1 thread: PyTorch {check.torch_ms:.3f} ms, "
        f"onnxruntime {check.onnxruntime_ms:.3f} ms (median of {check.rounds} rounds)",
        soft_wrap=True,
        highlight=False,
    )
    if not check.within_tolerance:
        raise typer.Exit(code=1)
