"""A detection student read back from its job folder, and `kdistill export` of it: onnxruntime computes what
PyTorch does on images of the run's size, every output."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from typer.testing import CliRunner

from kdistill.classic.config import RunConfig
from kdistill.cli import app
from kdistill.detection import build_detector
from kdistill.detection.config import DetectionRunConfig, DetectionStudentConfig
from kdistill.detection.saved import example_images, load_detection_student

IMAGE_SIZE, CLASSES = (64, 64), 3


class Trained(nn.Module):
    """What a detection job saves: the student beside a loss term's own module."""

    def __init__(self, arch: str = "fcos_s", classes: int = CLASSES) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.student = build_detector(arch, classes)
        for p in self.student.parameters():  # away from the init, so a wrong load cannot pass for a right one
            nn.init.normal_(p, std=0.1)
        for name, b in self.student.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                b.normal_(std=0.1)
        self.adapters = nn.ModuleList([nn.Conv2d(64, 128, 1)])


def make_run(root, *, data: dict | None = None):
    """runs/<run>/{config.yaml, manifest.json, jobs/response-s0/model.safetensors}; returns the job folder."""
    run_dir = root / "detection-20261202-101500"
    job = run_dir / "jobs" / "response-s0"
    job.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(
        DetectionRunConfig(student=DetectionStudentConfig(arch="fcos_s")).to_yaml()
    )
    if data is None:
        data = {
            "image_size": list(IMAGE_SIZE),
            "num_classes": CLASSES,
            "class_names": ["car", "person", "sign"],
        }
    (run_dir / "manifest.json").write_text(json.dumps({"config_hash": "x", "data": data}))
    save_file(Trained().state_dict(), str(job / "model.safetensors"))
    (job / "done.json").write_text("{}")
    return job


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs"))


def test_the_loaded_student_holds_exactly_the_saved_weights(job):
    saved = load_detection_student(job)
    weights = load_file(str(job / "model.safetensors"))
    state = saved.model.state_dict()
    assert set(state) == {n.removeprefix("student.") for n in weights if n.startswith("student.")}
    for name, tensor in state.items():
        assert tensor.dtype == weights["student." + name].dtype and torch.equal(
            tensor, weights["student." + name]
        )
    assert (saved.arch, saved.image_size, saved.num_classes, saved.job) == (
        "fcos_s",
        (64, 64),
        3,
        "response-s0",
    )
    assert saved.class_names == ("car", "person", "sign")
    assert not saved.model.training and next(saved.model.parameters()).device.type == "cpu"


def test_example_images_are_seeded_uniform_images_of_the_run_size(job):
    saved = load_detection_student(job)
    x = example_images(saved, 5, seed=3)
    assert x.shape == (5, 3, 64, 64) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() < 1
    assert torch.equal(x, example_images(saved, 5, seed=3))
    assert torch.equal(x, torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(3)))


def _other_state(prefix: str = "student.", arch: str = "fcos_s", classes: int = CLASSES) -> dict:
    """A job's weights with its student under `prefix`, of another size or another number of classes."""
    state = Trained(arch, classes).state_dict()
    return {
        (prefix + n.removeprefix("student.") if n.startswith("student.") else n): t for n, t in state.items()
    }


def _write_manifest(job, content) -> None:
    (job.parent.parent / "manifest.json").write_text(json.dumps(content))


# case -> (what breaks a good job folder: returns the folder to load, the start of the one-line error)
BROKEN = {
    "no folder": (
        lambda job: job.parent / "missing-s0",
        "{job}: no such folder; expected a job folder of a run",
    ),
    "no weights": (
        lambda job: (job / "model.safetensors").unlink() or job,
        "{job}: no model.safetensors; expected a finished job folder",
    ),
    "not in a run": (
        lambda job: (job.parent.parent / "config.yaml").unlink() or job,
        "{job}: not inside a run folder (expected {run}/config.yaml beside its jobs/ folder)",
    ),
    "classic run": (
        lambda job: (job.parent.parent / "config.yaml").write_text(RunConfig().to_yaml()) and job,
        "{job}: the run is a `task: classify` run; expected a detection run (`task: detection`)",
    ),
    "no manifest": (
        lambda job: (job.parent.parent / "manifest.json").unlink() or job,
        "{run}/manifest.json: no such file",
    ),
    "no data": (
        lambda job: _write_manifest(job, {"config_hash": "x"}) or job,
        "{run}/manifest.json: no `data` object; expected data.image_size [H, W] and data.num_classes",
    ),
    "no image size": (
        lambda job: _write_manifest(job, {"data": {"num_classes": 3}}) or job,
        "{run}/manifest.json: data.image_size: expected [H, W], two positive integers, got None",
    ),
    "one side": (
        lambda job: _write_manifest(job, {"data": {"image_size": [64], "num_classes": 3}}) or job,
        "{run}/manifest.json: data.image_size: expected [H, W], two positive integers, got [64]",
    ),
    "no classes": (
        lambda job: _write_manifest(job, {"data": {"image_size": [64, 64]}}) or job,
        "{run}/manifest.json: data.num_classes: expected a positive integer, got None",
    ),
    "class names": (
        lambda job: (
            _write_manifest(job, {"data": {"image_size": [64, 64], "num_classes": 3, "class_names": ["car"]}})
            or job
        ),
        "{run}/manifest.json: data.class_names: expected 3 names, got ['car']",
    ),
    "no student": (
        lambda job: save_file(_other_state("model."), str(job / "model.safetensors")) or job,
        "{weights}: no student.-prefixed fcos_s student with 3 classes; it holds adapters. (2 tensors), "
        "model. ({tensors} tensors)",
    ),
    "other size": (
        lambda job: save_file(_other_state(arch="fcos_m"), str(job / "model.safetensors")) or job,
        "{weights}: no student.-prefixed fcos_s student with 3 classes; its student. tensors differ: ",
    ),
    "other classes": (
        lambda job: save_file(_other_state(classes=5), str(job / "model.safetensors")) or job,
        "{weights}: no student.-prefixed fcos_s student with 3 classes; its student. tensors differ: 2 of "
        "another shape (first student.head.cls_logits.bias: (5,), expected (3,)); "
        "they fit fcos_s with 5 classes",
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_job_that_holds_no_detection_student_is_one_line_naming_the_path(tmp_path, case):
    breaking, message = BROKEN[case]
    good = make_run(tmp_path)
    job, run = breaking(good), good.parent.parent
    tensors = len(build_detector("fcos_s", CLASSES).state_dict())
    with pytest.raises(ValueError) as err:
        load_detection_student(job)
    text = str(err.value)
    assert text.startswith(
        message.format(job=job, run=run, weights=job / "model.safetensors", tensors=tensors)
    )
    assert "\n" not in text
    if case == "other size":  # the header alone tells which detector the weights hold
        assert text.endswith("; they fit fcos_m with 3 classes")


def test_the_command_exports_a_detector_whose_onnx_outputs_equal_pytorchs(job, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "detector.onnx"
    result = CliRunner().invoke(app, ["export", str(job), "--onnx", str(out), "--check-batch", "64"])
    assert result.exit_code == 0, result.output
    saved = load_detection_student(job)
    assert (
        f"wrote {out}" in result.stdout
        and "fcos_s student of job response-s0 (64x64 images, 3 classes)" in result.stdout
    )
    levels = len(saved.model.strides)
    # detectors check on at most 8 images; 4 tensors per level (class logits, boxes, centerness, FPN features)
    assert f"onnxruntime vs PyTorch on 8 images, {4 * levels} outputs:" in result.stdout
    assert "(equal within" in result.stdout

    import onnxruntime as ort

    from kdistill.export.onnx import PARITY_ATOL, PARITY_RTOL, output_tensors

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, *IMAGE_SIZE, generator=torch.Generator().manual_seed(11))  # a batch never seen
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.inference_mode():
        expected = list(output_tensors(saved.model(x)))
    assert len(got) == len(expected) == 4 * levels
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(torch.from_numpy(g), e, atol=PARITY_ATOL, rtol=PARITY_RTOL)


def test_the_command_fails_in_one_line_for_a_detection_job_it_cannot_export(job, tmp_path):
    result = CliRunner().invoke(app, ["export", str(job), "--onnx", str(tmp_path / "d.onnx"), "--peer", "1"])
    assert result.exit_code == 2 and "--peer applies to classic mutual-learning runs" in result.stderr
    broken = make_run(tmp_path, data={"image_size": [64, 64]})
    result = CliRunner().invoke(app, ["export", str(broken), "--onnx", str(tmp_path / "d.onnx")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {broken.parent.parent / 'manifest.json'}: data.num_classes")
    assert result.stderr.count("\n") == 1 and not (tmp_path / "d.onnx").exists()


def test_the_command_exits_1_when_onnxruntime_disagrees(job, tmp_path, monkeypatch):
    import kdistill.export.onnx as onnx_export

    def fake_export(model, example, path):
        path.write_bytes(b"onnx")
        return path

    def disagreeing(model, path, inputs):
        assert inputs.shape == (2, 3, 64, 64)  # --check-batch 2: below the detector's cap of 8
        return onnx_export.OnnxCheck(0.5, False, 1.0, 1.0, 5)

    monkeypatch.setattr(onnx_export, "export_onnx", fake_export)
    monkeypatch.setattr(onnx_export, "check_onnx", disagreeing)
    out = tmp_path / "d.onnx"
    result = CliRunner().invoke(app, ["export", str(job), "--onnx", str(out), "--check-batch", "2"])
    assert result.exit_code == 1, result.output
    outputs = 4 * len(build_detector("fcos_s", CLASSES).strides)  # 4 tensors per level
    assert f"on 2 images, {outputs} outputs: max |diff| 5.00e-01 (NOT equal within" in result.stdout
