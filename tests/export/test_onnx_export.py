"""`kdistill export JOB --onnx F`: a classic student out of its run folder; onnxruntime computes what PyTorch does."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from kdistill.classic.recipe import run  # noqa: E402
from kdistill.classic.saved import example_inputs, load_job_student  # noqa: E402
from kdistill.cli.app import app  # noqa: E402
from kdistill.config import parse_config  # noqa: E402
from kdistill.export.onnx import PARITY_ATOL, check_onnx, export_onnx  # noqa: E402


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny finished classic run: the scratch and the distilled student of one seed."""
    import copy

    from tests.conftest import TINY

    cfg = copy.deepcopy(TINY)
    cfg["train"].update(steps=10, eval_every=10, checkpoint_every=10)
    cfg["teacher"]["train"].update(steps=10, eval_every=10, checkpoint_every=10)
    runs = tmp_path_factory.mktemp("runs")
    return run(parse_config(cfg), runs_dir=runs, cache_root=runs / "cache").run_dir


@pytest.mark.parametrize(("job", "prefix"), [("scratch-s0", "model."), ("distilled-s0", "student.")])
def test_a_saved_student_is_the_trained_one_and_its_onnx_file_computes_the_same(
    finished_run, tmp_path, job, prefix
):
    from safetensors.torch import load_file

    saved = load_job_student(finished_run / "jobs" / job)
    assert saved.prefix == prefix and saved.arch == "cnn_xs" and saved.input_shape == (1, 8, 8)
    weights = load_file(str(finished_run / "jobs" / job / "model.safetensors"))
    for name, tensor in saved.model.state_dict().items():  # the student's tensors, exactly
        assert torch.equal(tensor, weights[prefix + name])

    path = export_onnx(saved.model, example_inputs(saved, 2), tmp_path / "s.onnx")
    assert path.is_file() and not list(tmp_path.glob(".s.onnx.*"))  # no temporary file left behind
    x = example_inputs(saved, 33, seed=5)  # another batch size than exported with: the batch is dynamic
    check = check_onnx(saved.model, path, x, rounds=1, repeats=2)
    assert check.within_tolerance and check.max_abs_diff <= PARITY_ATOL
    # and independently of check_onnx: onnxruntime's logits and predicted classes equal PyTorch's
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.inference_mode():
        expected = saved.model(x)
    torch.testing.assert_close(got, expected, atol=PARITY_ATOL, rtol=1e-4)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert check.torch_ms > 0 and check.onnxruntime_ms > 0


def test_the_command_writes_the_file_and_reports_parity_and_latency(finished_run, tmp_path):
    out = tmp_path / "student.onnx"
    result = CliRunner().invoke(
        app, ["export", str(finished_run / "jobs" / "distilled-s0"), "--onnx", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.is_file()
    assert f"wrote {out}" in result.stdout and "cnn_xs student of job distilled-s0" in result.stdout
    assert "onnxruntime vs PyTorch on 64 inputs" in result.stdout and "(equal within" in result.stdout


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("nowhere", "no such folder; expected a job folder of a run"),
        ("jobs", "no model.safetensors; expected a finished job folder"),
    ],
)
def test_a_folder_that_is_not_a_finished_job_is_one_line(finished_run, tmp_path, where, message):
    target = tmp_path / "nowhere" if where == "nowhere" else finished_run / "jobs"
    result = CliRunner().invoke(app, ["export", str(target), "--onnx", str(tmp_path / "s.onnx")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {target}: {message}")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
