"""What a distilled student is judged on: accuracy, fidelity to the teacher, size and speed.

Pure helpers on tensors and modules; they never read the config, so recipes, benchmarks and tests can
all call them the same way.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from safetensors.torch import save as safetensors_save
from torch import Tensor, nn


def _top1(logits: Tensor) -> Tensor:
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"expected logits of shape (N, C) with N >= 1, got {tuple(logits.shape)}")
    return logits.argmax(dim=-1)  # (N, C) -> (N,)


def accuracy(logits: Tensor, target: Tensor) -> float:
    """Fraction of samples whose argmax class equals the target; logits (N, C), target (N,) class indices."""
    predicted = _top1(logits)
    if target.shape != predicted.shape:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    return (predicted == target.to(predicted.device)).float().mean().item()


def agreement(logits_a: Tensor, logits_b: Tensor) -> float:
    """Fraction of samples on which two models pick the same top-1 class (fidelity, needs no labels)."""
    if logits_a.shape != logits_b.shape:
        raise ValueError(f"logit shapes differ: {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}")
    return (_top1(logits_a) == _top1(logits_b).to(logits_a.device)).float().mean().item()


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters; tied (shared) parameters are counted once, buffers not at all."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def size_on_disk_bytes(module: nn.Module) -> int:
    """Bytes of the module's state dict (parameters and persistent buffers) saved as safetensors.

    This is what shipping the model costs, dtype included (a float16 model is half the size). Tied
    weights are stored once, as `safetensors.torch.save_model` would; every other tensor is copied to a
    contiguous CPU tensor of its own, because safetensors refuses views that share storage.
    """
    tensors: dict[str, Tensor] = {}
    seen_views: set[tuple[object, ...]] = set()
    for name, tensor in module.state_dict().items():
        view = (tensor.device, tensor.dtype, tensor.data_ptr(), tuple(tensor.shape), tensor.stride())
        if tensor.numel() > 0 and view in seen_views:
            continue  # the same tensor under a second name (tied weights)
        seen_views.add(view)
        tensors[name] = tensor.detach().to("cpu", copy=True).contiguous()
    return len(safetensors_save(tensors))


def latency_ms_per_sample(
    module: nn.Module, example_batch: Tensor, *, warmup: int = 5, repeats: int = 30
) -> float:
    """Median wall time of one forward pass on `example_batch`, divided by its batch size, in ms.

    Measured on whatever device `example_batch` and the module live on and with the current
    `torch.get_num_threads()`, so figures are only comparable within one machine and one setting.
    Batch size matters: larger batches amortise per-call overhead, so compare models at the same batch
    size. The module runs in eval mode under `torch.inference_mode()`; each submodule's train/eval flag
    is restored afterwards. The median, not the mean, so one scheduler hiccup does not move the result.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if example_batch.ndim == 0 or example_batch.shape[0] == 0:
        raise ValueError(f"example_batch needs a non-empty batch dimension, got {tuple(example_batch.shape)}")
    batch_size = example_batch.shape[0]

    def synchronize() -> None:
        # CUDA kernels run asynchronously; without a sync we would time the launch, not the work.
        if example_batch.is_cuda:
            torch.cuda.synchronize(example_batch.device)

    previous_modes = {submodule: submodule.training for submodule in module.modules()}
    module.eval()
    try:
        seconds: list[float] = []
        with torch.inference_mode():
            for _ in range(warmup):
                module(example_batch)
            synchronize()
            for _ in range(repeats):
                start = time.perf_counter()
                module(example_batch)
                synchronize()
                seconds.append(time.perf_counter() - start)
    finally:
        for submodule, was_training in previous_modes.items():
            submodule.training = was_training
    return statistics.median(seconds) * 1000.0 / batch_size


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) over seeds; the std is 0.0 for a single value."""
    if len(values) == 0:
        raise ValueError("mean_std needs at least one value")
    mean = statistics.fmean(values)
    std = statistics.stdev(values, xbar=mean) if len(values) > 1 else 0.0
    return mean, std
