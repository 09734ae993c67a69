"""Import paths that the README and docs named before the layout moved keep working, as the same objects."""

from __future__ import annotations

import importlib

import pytest

MOVED = [
    ("kdistill.data", "load_generations", "kdistill.generate.store"),
    ("kdistill.data", "load_prompts", "kdistill.generate.prompts"),
    ("kdistill.data.teacher_signal", "TeacherSignal", "kdistill.lm.signal_store"),
    ("kdistill.data.teacher_signal", "TeacherSignalWriter", "kdistill.lm.signal_store"),
    ("kdistill.generation", "generate", "kdistill.generate.run"),
    ("kdistill.generation", "GenerationConfig", "kdistill.generate.config"),
    ("kdistill.runner", "run", "kdistill.classic.recipe"),
    ("kdistill.config", "parse_config", "kdistill.config"),
    ("kdistill.losses", "forward_kl", "kdistill.losses.token"),
    ("kdistill.losses.token_sparse", "sparse_forward_kl", "kdistill.losses.token_sparse"),
    ("kdistill.losses.chunked", "chunked_distill_loss", "kdistill.losses.chunked"),
    ("kdistill.lm.capture", "capture_topk", "kdistill.lm.capture"),
    ("kdistill.lm.tokenizers", "assert_same_tokenizer", "kdistill.lm.tokenizers"),
]


@pytest.mark.parametrize(("old", "name", "new"), MOVED, ids=lambda v: str(v))
def test_old_public_import_is_the_moved_object(old, name, new):
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)


def test_package_level_distill_is_the_api():
    import kdistill
    from kdistill.api import distill

    assert kdistill.distill is distill
