"""Run options of the classic recipe: `method: none`, `threads`, the tracker fields, the shared schedule."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

import kdistill.classic.methods.base as base
from kdistill.classic.config import TrainConfig
from kdistill.classic.loop import make_optimizer, make_scheduler
from kdistill.classic.recipe import run
from kdistill.cli import app
from kdistill.config import ConfigError, parse_config
from kdistill.evaluation import results_table
from kdistill.runs.schedule import lr_multiplier
from kdistill.schema import default_threads


def test_method_none_gives_the_teacher_and_the_scratch_student_only(tmp_path, tiny_config):
    tiny_config["method"] = {"name": "none"}
    baseline = run(parse_config(tiny_config), runs_dir=tmp_path / "offline-default").metrics
    for compare_scratch in (True, False):  # the scratch row is listed once either way
        tiny_config["evaluation"] = {"compare_scratch": compare_scratch}
        result = run(parse_config(tiny_config), runs_dir=tmp_path / f"none-{compare_scratch}")
        metrics = result.metrics
        assert [(m["name"], m["role"]) for m in metrics["models"]] == [
            ("teacher", "teacher"),
            ("student (scratch)", "scratch"),
        ]
        assert metrics["models"][1]["accuracy_per_seed"] == baseline["models"][1]["accuracy_per_seed"]
        assert {h["model"] for h in metrics["history"]} == {"student (scratch)"}
        assert [d.name for d in (result.run_dir / "jobs").iterdir()] == ["scratch-s0"]
        assert (result.run_dir / "jobs/scratch-s0/done.json").is_file()
        summary = metrics["summary"]
        assert summary["headline"].startswith("student (scratch) keeps ")
        assert "best_distilled" not in summary and "distilled_minus_scratch" not in summary
        assert summary["params_ratio"] == metrics["models"][0]["params"] / metrics["models"][1]["params"]
        assert results_table(metrics).title is not None  # the CLI table renders
        assert metrics["run"]["method"] == "none"


def test_method_none_scratch_equals_the_offline_runs_scratch_baseline(tmp_path, tiny_config):
    tiny_config["train"]["steps"] = 10
    offline = run(parse_config(tiny_config), runs_dir=tmp_path / "offline").metrics
    tiny_config["method"] = {"name": "none"}
    none = run(parse_config(tiny_config), runs_dir=tmp_path / "none").metrics
    assert none["models"][1]["accuracy_per_seed"] == offline["models"][1]["accuracy_per_seed"]
    assert [m["role"] for m in offline["models"]] == ["teacher", "scratch", "distilled"]


@pytest.mark.parametrize("threads", [1, 2, None])
def test_threads_apply_inside_every_job_and_are_restored(tmp_path, tiny_config, monkeypatch, threads):
    seen = []
    real_train = base.train

    def recording_train(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_train(*args, **kwargs)

    monkeypatch.setattr(base, "train", recording_train)
    tiny_config["train"]["steps"] = 5
    tiny_config["threads"] = threads
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        run(parse_config(tiny_config), runs_dir=tmp_path)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert len(seen) >= 2 and set(seen) == {threads or default_threads()}  # scratch and distilled jobs
    assert after == 3


def test_threads_must_be_positive_and_none_means_every_core():
    assert parse_config({}).threads == 1
    assert parse_config({"threads": None}).torch_threads() == default_threads()
    with pytest.raises(ConfigError, match="threads: Input should be greater than or equal to 1"):
        parse_config({"threads": 0}, "cfg.yaml")


def test_unknown_tracker_sink_is_a_config_error_and_trackers_do_not_change_the_hash():
    with pytest.raises(ConfigError) as info:
        parse_config({"report_to": ["tensorboard", "wandb"]}, "cfg.yaml")
    assert str(info.value) == "cfg.yaml: report_to: unknown sink 'wandb'; known: tensorboard, mlflow"
    plain = parse_config({})
    tracked = parse_config({"report_to": ["mlflow"], "tracking_uri": "file:///tmp/mlruns"})
    assert tracked.config_hash() == plain.config_hash()
    assert list(json.loads(json.dumps(tracked.model_dump(mode="json"))))[-2:] == ["report_to", "tracking_uri"]


@pytest.mark.parametrize("scheduler", ["cosine", "constant"])
def test_the_loop_uses_the_shared_schedule_which_matches_the_old_one_to_rounding(scheduler):
    cfg = TrainConfig(steps=2000, lr=0.01, scheduler=scheduler)
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched = make_scheduler(optimizer, cfg)
    lrs = []
    for _ in range(cfg.steps):
        lrs.append(sched.get_last_lr()[0])
        optimizer.step()
        sched.step()
    lrs.append(sched.get_last_lr()[0])
    shared = [
        0.01 * lr_multiplier(s, warmup_steps=0, total_steps=2000, schedule=scheduler) for s in range(2001)
    ]
    assert lrs == shared
    # the classic loop's former LambdaLR, 0.5 * (1 + cos(pi * step / steps)) or 1: the same up to the
    # rounding of pi * (step / steps) vs (pi * step) / steps (a few 1e-13 relative), same end points
    old = [
        0.01 * (0.5 * (1 + math.cos(math.pi * s / 2000)) if scheduler == "cosine" else 1.0)
        for s in range(2001)
    ]
    assert lrs == pytest.approx(old, rel=1e-12, abs=1e-20)
    assert lrs[0] == old[0] and lrs[1000] == old[1000] and lrs[-1] == old[-1]


def test_methods_command_lists_the_crd_module_loss_and_method_none():
    rows = json.loads(CliRunner().invoke(app, ["methods", "--json"]).output)
    listed = {(r["kind"], r["name"], r["role"]) for r in rows}
    assert {("loss", "crd", "module"), ("method", "none", "scheme")} <= listed
