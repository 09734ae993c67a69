"""Students out of kdistill, into the runtimes they are deployed with: ONNX (onnxruntime) today."""

from kdistill.export.onnx import OnnxCheck, check_onnx, export_onnx

__all__ = ["OnnxCheck", "check_onnx", "export_onnx"]
