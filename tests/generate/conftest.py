"""Shared fixtures of the generation tests: a live scripted server, prompt files, the CLI as a process."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.fixtures.openai_server import ScriptedServer
from tests.generate.helpers import write_jsonl


@pytest.fixture
def server():
    with ScriptedServer() as s:
        yield s


@pytest.fixture
def prompts_file(tmp_path):
    """prompts_file(n) -> a JSONL file of n plain prompts "p0".."p{n-1}" without ids."""

    def make(n: int, name: str = "prompts.jsonl") -> Path:
        return write_jsonl(tmp_path / name, [{"prompt": f"p{i}"} for i in range(n)])

    return make


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    from tests.fixtures.tiny_lm import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm") / "model")
