"""torch_threads: the block runs with n threads, and the previous count comes back, also after an error."""

from __future__ import annotations

import pytest
import torch

from kdistill.runs.threads import torch_threads


def test_threads_are_set_inside_the_block_and_restored_after():
    before = torch.get_num_threads()
    target = 2 if before != 2 else 1
    with torch_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before


def test_threads_are_restored_when_the_block_raises():
    before = torch.get_num_threads()
    target = 2 if before != 2 else 1
    with pytest.raises(RuntimeError, match="boom"), torch_threads(target):
        assert torch.get_num_threads() == target
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
