"""The one LR schedule, against its closed forms: warmup (s+1)/W, then cosine / linear / constant down to
min_lr_ratio at total_steps."""

from __future__ import annotations

import math

import pytest
import torch

from kdistill.runs.schedule import lr_multiplier, lr_scheduler


def mult(step: int, schedule: str, *, warmup: int = 4, total: int = 20, floor: float = 0.0) -> float:
    return lr_multiplier(step, warmup_steps=warmup, total_steps=total, schedule=schedule, min_lr_ratio=floor)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_warmup_rises_linearly_to_the_peak(schedule):
    assert [mult(s, schedule) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert mult(4, schedule) == 1.0  # the first step after warmup is at the peak


@pytest.mark.parametrize("floor", [0.0, 0.1])
def test_cosine_follows_half_a_cosine_from_the_peak_to_the_floor(floor):
    # decay over total - warmup = 16 steps: progress p = (s - 4) / 16
    for step in range(4, 21):
        p = (step - 4) / 16
        assert mult(step, "cosine", floor=floor) == pytest.approx(
            floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)), abs=1e-12
        )
    assert mult(12, "cosine", floor=floor) == pytest.approx(floor + (1 - floor) / 2)  # halfway
    assert mult(20, "cosine", floor=floor) == pytest.approx(floor)
    assert mult(500, "cosine", floor=floor) == pytest.approx(floor)  # past the end: stays at the floor


@pytest.mark.parametrize("floor", [0.0, 0.2])
def test_linear_falls_in_equal_steps_to_the_floor(floor):
    assert [mult(s, "linear", floor=floor) for s in (4, 8, 12, 16, 20, 30)] == pytest.approx(
        [floor + (1 - floor) * f for f in (1.0, 0.75, 0.5, 0.25, 0.0, 0.0)]
    )


def test_constant_stays_at_the_peak_and_ignores_the_floor():
    assert {mult(s, "constant", floor=0.5) for s in range(4, 40)} == {1.0}


def test_no_warmup_starts_at_the_peak_and_a_single_step_schedule_does_not_divide_by_zero():
    assert mult(0, "cosine", warmup=0) == 1.0
    # total == warmup: max(1, total - warmup) steps of decay, no division by zero
    assert [mult(s, "linear", warmup=1, total=1) for s in range(3)] == [1.0, 1.0, 0.0]


def test_the_scheduler_sets_the_optimizer_lr_step_by_step_and_resumes_from_its_state():
    def make():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        return opt, lr_scheduler(opt, total_steps=10, warmup_steps=2, schedule="linear", min_lr_ratio=0.1)

    opt, sched = make()
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.1 * mult(s, "linear", warmup=2, total=10, floor=0.1) for s in range(10)]
    assert lrs == pytest.approx(expected, abs=1e-15)

    opt, sched = make()
    for _ in range(6):
        opt.step()
        sched.step()
    opt2, sched2 = make()  # a resume loads both: the optimizer holds the current lr, the scheduler the step
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(expected[6], abs=1e-15)
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(expected[7], abs=1e-15)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"schedule": "step"}, "schedule must be cosine, linear or constant, got 'step'"),
        ({"warmup_steps": -1}, "need warmup_steps >= 0 and 0 <= min_lr_ratio <= 1"),
        ({"min_lr_ratio": 1.5}, "need warmup_steps >= 0 and 0 <= min_lr_ratio <= 1"),
    ],
)
def test_bad_schedule_arguments_are_clear_errors(kwargs, message):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=f"^{message}$"):
        lr_scheduler(opt, total_steps=10, **kwargs)
