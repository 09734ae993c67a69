"""A detector (structured, multi-level output) through the same ONNX export and onnxruntime check."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from kdistill.detection import build_detector  # noqa: E402
from kdistill.export.onnx import PARITY_ATOL, check_onnx, export_onnx, output_tensors  # noqa: E402


def test_an_fcos_student_exports_with_every_level_and_onnxruntime_agrees(tmp_path):
    torch.manual_seed(0)
    model = build_detector("fcos_s", num_classes=6).eval()
    example = torch.rand(1, 3, 128, 128)
    with torch.inference_mode():
        out = model(example)
    tensors = list(output_tensors(out))
    # per level: class logits, box distances, centerness, FPN features (P3-P5); strides (ints) are left out
    assert len(tensors) == 4 * len(out.strides)
    assert (
        tensors[0] is out.cls_logits[0] and tensors[3] is out.box_ltrb[0] and tensors[-1] is out.features[-1]
    )

    path = export_onnx(model, example, tmp_path / "fcos.onnx")
    import onnx

    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == [f"output_{i}" for i in range(len(tensors))]

    x = torch.rand(3, 3, 128, 128)  # another batch size than exported with
    check = check_onnx(model, path, x, rounds=1, repeats=1)
    assert check.within_tolerance and check.max_abs_diff <= PARITY_ATOL


def test_time_alternating_takes_turns_and_discards_the_warm_up_round(monkeypatch) -> None:
    import kdistill.export.onnx as onnx_module

    clock = [0.0]
    order: list[str] = []
    first_call = {"a": True}

    def call(key: str, cost_ms: float):
        def run() -> None:
            order.append(key)
            # the first call of `a` is a slow warm-up (lazy initialisation): it must not count
            clock[0] += (1000.0 if first_call.get(key) else cost_ms) / 1000
            first_call[key] = False

        return run

    monkeypatch.setattr(onnx_module.time, "perf_counter", lambda: clock[0])
    times = onnx_module.time_alternating({"a": call("a", 2.0), "b": call("b", 5.0)}, rounds=3, repeats=2)
    assert times == {"a": pytest.approx(2.0), "b": pytest.approx(5.0)}
    # round 0 a then b, round 1 reversed, round 2 as round 0, ...; each turn `repeats` calls
    assert order == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b", "b", "b", "a", "a"]
    with pytest.raises(ValueError, match="rounds >= 1"):
        onnx_module.time_alternating({"a": call("a", 1.0)}, rounds=0)
