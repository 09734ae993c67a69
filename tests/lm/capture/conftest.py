"""Fixtures of the capture tests: a tiny saved model, its tokenizer, a generations directory."""

from __future__ import annotations

import pytest
import torch
from tests.lm.capture.helpers import write_generations


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny Llama (hidden 32, 2 layers, vocab 512) and its byte-level BPE, saved with save_pretrained."""
    from tests.fixtures.tiny_lm import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("capture-model") / "model")


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    from kdistill.lm.models import load_tokenizer

    return load_tokenizer(model_dir)


@pytest.fixture(scope="session")
def teacher(model_dir):
    from kdistill.lm.models import load_causal_lm

    return load_causal_lm(model_dir)


@pytest.fixture
def gens_dir(tmp_path):
    """A `kdistill generate` directory of 14 rows (plain prompts and chats, answers of 1 to 27 words)."""
    return write_generations(tmp_path / "gens", 14)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these models are too small to gain from more (see tests/lm/conftest.py)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
