import math

import numpy as np
import pytest
import torch
from safetensors.torch import load as safetensors_load
from torch import nn

from kdistill.evaluation.metrics import (
    accuracy,
    agreement,
    count_parameters,
    latency_ms_per_sample,
    mean_std,
    size_on_disk_bytes,
)


def test_accuracy_hand_computed():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [4.0, 0.0, 0.0]])
    # argmax: 0, 1, 2, 0
    assert accuracy(logits, torch.tensor([0, 1, 1, 2])) == pytest.approx(0.5)
    assert accuracy(logits, torch.tensor([0, 1, 2, 0])) == pytest.approx(1.0)
    assert accuracy(logits, torch.tensor([1, 0, 0, 1])) == pytest.approx(0.0)


def test_accuracy_rejects_mismatched_target():
    with pytest.raises(ValueError, match="target shape"):
        accuracy(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))


def test_agreement_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # 0 1 0 1 0
    b = torch.tensor([[9.0, 0.0], [5.0, 1.0], [0.0, 2.0], [0.0, 1.0], [3.0, 2.0]])  # 0 0 1 1 0
    assert agreement(a, b) == pytest.approx(3 / 5)
    assert agreement(a, a * 10) == pytest.approx(1.0)  # scale does not change the top-1 class


def _linear_conv_model() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, kernel_size=3), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))


def test_count_parameters_manual_count_and_frozen_part():
    model = _linear_conv_model()
    conv = 8 * 3 * 3 * 3 + 8
    linear = 8 * 4 * 4 * 10 + 10
    assert count_parameters(model) == conv + linear
    model[0].requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == linear
    assert count_parameters(model) == conv + linear


def test_count_parameters_counts_tied_weights_once():
    embedding = nn.Embedding(50, 16)
    head = nn.Linear(16, 50, bias=False)
    head.weight = embedding.weight
    assert count_parameters(nn.ModuleDict({"embed": embedding, "head": head})) == 50 * 16


def test_size_on_disk_grows_with_model_and_holds_float32_params():
    small = _linear_conv_model()
    big = nn.Sequential(nn.Conv2d(3, 32, kernel_size=3), nn.Flatten(), nn.Linear(32 * 4 * 4, 100))
    small_bytes, big_bytes = size_on_disk_bytes(small), size_on_disk_bytes(big)
    assert small_bytes >= 4 * count_parameters(small)
    assert big_bytes >= 4 * count_parameters(big)
    assert big_bytes > small_bytes
    # header overhead stays small: the payload dominates
    assert big_bytes < 4 * count_parameters(big) + 2000
    assert size_on_disk_bytes(small.half()) < small_bytes


def test_size_on_disk_handles_shared_and_non_contiguous_tensors():
    model = nn.Module()
    model.register_buffer("base", torch.arange(12, dtype=torch.float32).reshape(3, 4))
    model.register_buffer("transposed", model.base.t())  # shares storage, not contiguous
    model.register_buffer("first_row", model.base[0])  # shares storage, a view
    size = size_on_disk_bytes(model)
    assert size >= 4 * (12 + 12 + 4)  # distinct views are all stored


def test_size_on_disk_stores_tied_weights_once():
    tied = nn.Module()
    tied.embed = nn.Embedding(100, 32)
    tied.head = nn.Linear(32, 100, bias=False)
    tied.head.weight = tied.embed.weight
    untied = nn.Module()
    untied.embed = nn.Embedding(100, 32)
    untied.head = nn.Linear(32, 100, bias=False)
    assert size_on_disk_bytes(tied) < 4 * 100 * 32 * 2
    assert size_on_disk_bytes(untied) >= 4 * 100 * 32 * 2


def test_size_matches_actual_safetensors_payload():
    model = _linear_conv_model()
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in model.state_dict().items()})
    assert size_on_disk_bytes(model) == len(data)
    assert set(safetensors_load(data)) == set(model.state_dict())


class _ModeRecorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 4)
        self.dropout = nn.Dropout(0.5)
        self.modes_seen: list[bool] = []
        self.grad_enabled_seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes_seen.append(self.training)
        self.grad_enabled_seen.append(torch.is_grad_enabled())
        return self.dropout(self.linear(x))


def test_latency_positive_finite_eval_mode_and_mode_restored():
    model = _ModeRecorder()
    model.train()
    model.dropout.eval()  # a mixed-mode module must come back exactly as it was
    latency = latency_ms_per_sample(model, torch.randn(8, 16), warmup=2, repeats=5)
    assert latency > 0 and math.isfinite(latency)
    assert len(model.modes_seen) == 7
    assert not any(model.modes_seen) and not any(model.grad_enabled_seen)
    assert model.training is True and model.linear.training is True and model.dropout.training is False


def test_latency_is_per_sample():
    # A module whose forward costs a fixed time per call: per-sample latency must shrink with batch size.
    class FixedCost(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            import time

            time.sleep(0.002)
            return x

    model = FixedCost()
    one = latency_ms_per_sample(model, torch.zeros(1, 4), warmup=0, repeats=3)
    many = latency_ms_per_sample(model, torch.zeros(100, 4), warmup=0, repeats=3)
    assert one >= 2.0  # at least the sleep, in ms
    # per call the cost is the same, so per sample it is ~100x smaller; 4x leaves room for a loaded machine
    # stretching one call's sleep (a total-per-call latency would make many >= one)
    assert many < one / 4


def test_latency_rejects_bad_arguments():
    with pytest.raises(ValueError):
        latency_ms_per_sample(nn.Identity(), torch.zeros(0, 3))
    with pytest.raises(ValueError):
        latency_ms_per_sample(nn.Identity(), torch.zeros(2, 3), repeats=0)


@pytest.mark.parametrize("values", [[0.91, 0.93, 0.95], [1.0, 2.0], [3.5, -1.0, 2.25, 7.0, 0.0]])
def test_mean_std_matches_numpy_ddof1(values):
    mean, std = mean_std(values)
    assert mean == pytest.approx(np.mean(values))
    assert std == pytest.approx(np.std(values, ddof=1))


def test_mean_std_single_value_and_empty():
    assert mean_std([0.7]) == (0.7, 0.0)
    with pytest.raises(ValueError):
        mean_std([])
