"""Students out of kdistill, into the runtimes they are deployed with: ONNX (onnxruntime), GGUF (llama.cpp,
Ollama)."""

from kdistill.export.gguf import GgufCheck, check_gguf, export_gguf
from kdistill.export.onnx import OnnxCheck, check_onnx, export_onnx

__all__ = ["GgufCheck", "OnnxCheck", "check_gguf", "check_onnx", "export_gguf", "export_onnx"]
