import os

# Tiny models run fastest on one thread, and one thread per test process keeps a busy machine (or pytest-xdist's
# workers) from oversubscribing its cores; runs and subprocesses read OMP_NUM_THREADS as their default.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets the same session-wide teacher cache, never the user's ~/.cache."""
    monkeypatch.setenv("KDISTILL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kdistill-cache"))


TINY = {
    "name": "tiny",
    "seeds": [0],
    "device": "cpu",
    "data": {"dataset": "digits", "labeled_fraction": 0.2},
    "teacher": {
        "arch": "cnn_s",
        "train": {"steps": 60, "batch_size": 64, "lr": 0.005, "eval_every": 30, "checkpoint_every": 30},
    },
    "student": {"arch": "cnn_xs"},
    "train": {"steps": 40, "batch_size": 32, "lr": 0.01, "eval_every": 20, "checkpoint_every": 10},
}


@pytest.fixture
def tiny_config():
    import copy

    return copy.deepcopy(TINY)
