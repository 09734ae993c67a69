"""save_training_state / restore_training_state: a loop stopped at step k and restored into fresh objects
continues exactly like the uninterrupted loop (same parameters, lr, next random numbers)."""

from __future__ import annotations

import torch

from kdistill.runs.checkpoint import restore_training_state, save_training_state
from kdistill.runs.schedule import lr_scheduler

STEPS, STOP = 8, 3


def make(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
    scheduler = lr_scheduler(optimizer, total_steps=STEPS, warmup_steps=2, schedule="cosine")
    return model, optimizer, scheduler


def step(model, optimizer, scheduler) -> float:
    """One training step on a batch drawn from torch's RNG (so a wrong RNG state changes the result)."""
    x = torch.randn(5, 4)
    noise = torch.rand(())  # dropout-like randomness inside the step
    loss = (model(x) ** 2).mean() * (1 + noise)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.item()


def test_a_restored_loop_continues_exactly_like_the_uninterrupted_one(tmp_path):
    model, optimizer, scheduler = make(0)
    torch.manual_seed(123)
    straight = [step(model, optimizer, scheduler) for _ in range(STEPS)]
    straight_params = {k: v.clone() for k, v in model.state_dict().items()}
    straight_next = torch.rand(3)

    model, optimizer, scheduler = make(0)
    torch.manual_seed(123)
    history = [{"step": i + 1, "loss": step(model, optimizer, scheduler)} for i in range(STOP)]
    save_training_state(
        tmp_path, STOP, model=model.state_dict(), optimizer=optimizer, scheduler=scheduler, history=history
    )
    torch.rand(100)  # whatever happens after the save must not matter

    model, optimizer, scheduler = make(99)  # a new process: other initial weights, fresh optimizer
    found = restore_training_state(tmp_path, optimizer=optimizer, scheduler=scheduler)
    assert found is not None
    start, state = found
    model.load_state_dict(state["model"])
    assert start == STOP and state["history"] == history
    assert optimizer.param_groups[0]["lr"] == scheduler.get_last_lr()[0]
    resumed = [h["loss"] for h in state["history"]] + [
        step(model, optimizer, scheduler) for _ in range(STEPS - STOP)
    ]

    assert resumed == straight
    assert all(torch.equal(model.state_dict()[k], v) for k, v in straight_params.items())
    assert torch.equal(torch.rand(3), straight_next)


def test_nothing_to_restore_gives_none(tmp_path):
    _, optimizer, scheduler = make(0)
    assert restore_training_state(None, optimizer=optimizer, scheduler=scheduler) is None
    assert restore_training_state(tmp_path / "none", optimizer=optimizer, scheduler=scheduler) is None


def test_each_process_gets_its_own_rng_state_and_another_process_count_reuses_the_first(tmp_path):
    states = []
    for seed in (10, 11):
        torch.manual_seed(seed)
        states.append(torch.get_rng_state())
    expected = []
    for s in states:
        torch.set_rng_state(s)
        expected.append(torch.rand(4))
    model, optimizer, scheduler = make(0)
    save_training_state(
        tmp_path, 1, model=model.state_dict(), optimizer=optimizer, scheduler=scheduler, rng=states
    )

    for rank, world, which in [(0, 2, 0), (1, 2, 1), (2, 3, 0)]:
        torch.manual_seed(0)
        restore_training_state(tmp_path, optimizer=optimizer, scheduler=scheduler, rank=rank, world=world)
        assert torch.equal(torch.rand(4), expected[which]), (rank, world)
