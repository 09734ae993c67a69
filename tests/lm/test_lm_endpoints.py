"""`teacher.endpoint.endpoints` of a `task: lm` run: several servers of the teacher, validated, passed to
`kdistill generate` as its `teacher.endpoints` (a pool), and the dump of a one-server config unchanged."""

from __future__ import annotations

import json

import pytest
from tests.fixtures.openai_server import ScriptedServer

from kdistill.config import parse_config
from kdistill.generate.run import generate
from kdistill.lm.recipe import generation_config
from kdistill.schema import ConfigError


def _run_config(**endpoint):
    return parse_config(
        {"task": "lm", "teacher": {"endpoint": {"model": "scripted", **endpoint}}}, "run.yaml"
    )


def _prompts(path, n):
    path.write_text("".join(json.dumps({"id": str(i), "prompt": f"prompt {i}"}) + "\n" for i in range(n)))
    return path


def test_endpoints_become_generates_pool_and_both_servers_answer(tmp_path):
    with ScriptedServer(latency=0.02) as a, ScriptedServer(latency=0.02) as b:
        cfg = _run_config(
            endpoints=[a.base_url, {"base_url": b.base_url, "concurrency": 2, "weight": 2.0}], concurrency=4
        )
        gen = generation_config(cfg, _prompts(tmp_path / "p.jsonl", 8), tmp_path / "gens")
        servers = [(e.base_url, e.concurrency, e.weight) for e in gen.teacher.endpoints]
        assert servers == [(a.base_url, None, 1.0), (b.base_url, 2, 2.0)]
        assert "base_url" not in gen.teacher.model_fields_set and gen.concurrency == 4
        assert gen.sampling.top_logprobs == cfg.teacher.endpoint.top_logprobs
        summary = generate(gen)
        assert summary.committed == 8
        assert a.count() > 0 and b.count() > 0 and a.count() + b.count() == 8


def test_one_server_keeps_base_url_and_dumps_as_before_the_field_existed(tmp_path):
    cfg = _run_config(base_url="http://gpu:8000/v1")
    gen = generation_config(cfg, _prompts(tmp_path / "p.jsonl", 2), tmp_path / "gens")
    assert gen.teacher.base_url == "http://gpu:8000/v1" and gen.teacher.endpoints is None
    # the run's cache of teacher answers is keyed by this dump: no new key for one-server configs
    assert "endpoints" not in cfg.teacher.endpoint.model_dump(mode="json")
    assert "endpoints" in _run_config(endpoints=["http://a/v1"]).teacher.endpoint.model_dump(mode="json")


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ({}, "teacher.endpoint: give exactly one of base_url (one server) and endpoints"),
        (
            {"base_url": "http://a/v1", "endpoints": ["http://b/v1"]},
            "teacher.endpoint: give exactly one of base_url",
        ),
        ({"endpoints": []}, "endpoints: expected at least one server"),
        ({"endpoints": ["http://a/v1", "http://a/v1/"]}, "a server is listed twice: http://a/v1"),
        ({"endpoints": [{"base_url": "http://a/v1", "weight": 0}]}, "teacher.endpoint.endpoints.0.weight"),
    ],
)
def test_bad_endpoints_name_the_field(endpoint, expected):
    with pytest.raises(ConfigError, match="run.yaml") as err:
        _run_config(**endpoint)
    assert expected in str(err.value), str(err.value)
