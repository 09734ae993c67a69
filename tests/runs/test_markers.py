"""The job-finished marker and cached_json: written atomically, read back equal, computed once."""

from __future__ import annotations

import json

from kdistill.runs.markers import DONE, cached_json, mark_done, read_done


def test_a_job_is_done_exactly_when_its_marker_exists_and_the_marker_round_trips(tmp_path):
    job = tmp_path / "jobs" / "kd-s0"
    assert read_done(job) is None
    info = {"history": [{"step": 10, "loss": 1.25, "terms": {"ce": 1.0}}], "steps": 10, "seconds": 0.5}
    mark_done(job, info)  # creates the job directory
    assert read_done(job) == info
    assert sorted(p.name for p in job.iterdir()) == [DONE]  # no temporary file left behind
    mark_done(job, {"steps": 20})  # a re-mark replaces the marker
    assert read_done(job) == {"steps": 20}


def test_cached_json_computes_once_and_reads_the_result_back(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"accuracy": 0.875, "per_class": [1, 2, 3], "name": "teacher"}

    path = tmp_path / "eval" / "teacher.json"
    first = cached_json(path, compute)
    second = cached_json(path, compute)
    assert first == second == {"accuracy": 0.875, "per_class": [1, 2, 3], "name": "teacher"}
    assert calls == [1]
    assert json.loads(path.read_text()) == first
    assert sorted(p.name for p in path.parent.iterdir()) == ["teacher.json"]


def test_cached_json_does_not_cache_a_failed_computation(tmp_path):
    path = tmp_path / "x.json"

    def fail():
        raise RuntimeError("interrupted")

    try:
        cached_json(path, fail)
    except RuntimeError:
        pass
    assert not path.exists()
    assert cached_json(path, lambda: [1.5]) == [1.5]
