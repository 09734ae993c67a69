import json

import numpy as np
import torch

from kdistill.runs.checkpoint import (
    flatten_state,
    load_latest_checkpoint,
    save_checkpoint,
    unflatten_state,
)


def test_optimizer_and_rng_state_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "opt": opt.state_dict(),
        "rng": torch.get_rng_state(),
        "np": np.random.get_state(),
        "hist": [{"step": 1, "loss": 0.5}],
        "t": (1, "a", None),
    }
    save_checkpoint(tmp_path, 7, state)
    step, loaded = load_latest_checkpoint(tmp_path)
    assert step == 7
    assert torch.equal(loaded["rng"], state["rng"])
    assert loaded["hist"] == state["hist"] and loaded["t"] == state["t"]
    np_state = loaded["np"]
    assert np_state[0] == "MT19937" and np.array_equal(np_state[1], state["np"][1])
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    opt2.load_state_dict(loaded["opt"])  # int keys of the optimizer state survive
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_nothing_is_pickled():
    skeleton, tensors = flatten_state({"w": torch.ones(2), 3: [1.5, (2, 3)]})
    json.dumps(skeleton)  # the structure is plain JSON
    assert list(tensors) == ["t0"]
    again = unflatten_state(skeleton, tensors)
    assert torch.equal(again["w"], torch.ones(2)) and again[3] == [1.5, (2, 3)]


def test_latest_points_to_the_newest_complete_checkpoint_and_old_ones_are_pruned(tmp_path):
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, {"x": torch.tensor([step])}, keep=2)
    step, state = load_latest_checkpoint(tmp_path)
    assert step == 30 and state["x"].item() == 30
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-000000020", "step-000000030"]
    # a crash mid-write leaves a temp dir that is never read
    (tmp_path / ".tmp-step-000000040-1").mkdir()
    assert load_latest_checkpoint(tmp_path)[0] == 30


def test_no_checkpoint_gives_none(tmp_path):
    assert load_latest_checkpoint(tmp_path) is None
