"""Whole runs of each method on a tiny config: the run directory has what the issue promises."""

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from kdistill.classic.recipe import run
from kdistill.cli import app
from kdistill.config import parse_config

runner = CliRunner()


def test_offline_run_writes_everything(tmp_path, tiny_config):
    cfg = parse_config(tiny_config)
    result = run(cfg, runs_dir=tmp_path)
    d = result.run_dir
    assert d.parent == tmp_path and d.name.startswith("tiny-")
    for name in (
        "config.yaml",
        "metrics.json",
        "report.html",
        "manifest.json",
        "tradeoff.png",
        "learning_curves.png",
        "jobs/distilled-s0/model.safetensors",
    ):
        assert (d / name).is_file(), name
    assert parse_config(yaml.safe_load((d / "config.yaml").read_text())) == cfg
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["config_hash"] == cfg.config_hash() and manifest["seeds"] == [0]
    assert {"torch", "python", "kdistill"} <= set(manifest["versions"]) and len(manifest["data_hash"]) == 16
    metrics = json.loads((d / "metrics.json").read_text())
    roles = [m["role"] for m in metrics["models"]]
    assert roles == ["teacher", "scratch", "distilled"]
    for m in metrics["models"]:
        for key in ("name", "accuracy", "accuracy_std", "params", "latency_ms", "agreement_with_teacher"):
            assert key in m
        assert 0 <= m["accuracy"] <= 1 and m["latency_ms"] > 0
        assert m["latency_ms_min"] <= m["latency_ms"] <= m["latency_ms_max"]  # spread of the timing phase
    timing = metrics["timing"]  # one phase: teacher and students in turns, after training
    assert set(timing["models"]) == {m["name"] for m in metrics["models"]}
    assert timing["threads"] == cfg.torch_threads()
    assert timing["batch_size"] == cfg.evaluation.latency_batch_size
    assert timing["rounds"] >= 1 and timing["warmup_rounds"] == 1 and isinstance(timing["busy"], bool)
    assert metrics["models"][1]["params"] == metrics["models"][2]["params"] < metrics["models"][0]["params"]
    assert {h["model"] for h in metrics["history"]} == {"student (scratch)", "student (distilled)"}
    # a finished run is not resumed: the same call makes a new directory
    assert run(cfg, runs_dir=tmp_path).run_dir != d


def test_teacher_is_trained_once_and_cached(tmp_path, tiny_config):
    cfg = parse_config(tiny_config)
    first = run(cfg, runs_dir=tmp_path / "a")
    second = run(cfg, runs_dir=tmp_path / "b")
    origin1 = json.loads((first.run_dir / "manifest.json").read_text())["teacher"]
    origin2 = json.loads((second.run_dir / "manifest.json").read_text())["teacher"]
    assert origin2["source"] == "cache" and origin1["key"] == origin2["key"]
    assert first.metrics["models"][0]["accuracy"] == second.metrics["models"][0]["accuracy"]


def test_teacher_from_a_checkpoint(tmp_path, tiny_config, monkeypatch):
    """The run's teacher is the checkpoint: its state is the file's tensors, its logits are those of a model
    built and loaded by hand, and the reported teacher accuracy is that model's."""
    from safetensors.torch import load_file, save_file

    from kdistill.classic import recipe
    from kdistill.classic.zoo import build_model

    torch.manual_seed(5)
    path = tmp_path / "teacher.safetensors"
    save_file(build_model("cnn_s", (1, 8, 8), 10).state_dict(), str(path))
    loaded = []
    real_load_teacher = recipe.load_teacher

    def spy(*args, **kwargs):
        teacher, origin = real_load_teacher(*args, **kwargs)
        loaded.append(teacher)
        return teacher, origin

    monkeypatch.setattr(recipe, "load_teacher", spy)
    tiny_config["teacher"]["checkpoint"] = str(path)
    tiny_config["train"]["steps"] = 5
    cfg = parse_config(tiny_config)
    result = run(cfg, runs_dir=tmp_path / "runs")
    assert json.loads((result.run_dir / "manifest.json").read_text())["teacher"]["source"] == "checkpoint"

    (teacher,) = loaded
    checkpoint = load_file(str(path))
    state = teacher.state_dict()
    assert state.keys() == checkpoint.keys()
    for name, value in checkpoint.items():
        assert torch.equal(state[name], value), name
    torch.manual_seed(6)  # another initialisation, which the checkpoint must replace entirely
    by_hand = build_model("cnn_s", (1, 8, 8), 10).eval()
    data = recipe.load_data(cfg.data)
    with torch.no_grad():
        fresh = by_hand(data.x_test)
        by_hand.load_state_dict(checkpoint)
        expected = by_hand(data.x_test)
        logits = teacher(data.x_test)
    assert not torch.equal(fresh, expected)  # the comparison below can tell models apart
    assert torch.equal(logits, expected)
    accuracy = (expected.argmax(dim=1) == data.y_test).double().mean().item()
    assert result.metrics["models"][0]["accuracy"] == pytest.approx(accuracy, abs=1e-6)

    tiny_config["teacher"]["arch"] = "cnn_m"
    with pytest.raises(ValueError, match="does not fit arch 'cnn_m'"):
        run(parse_config(tiny_config), runs_dir=tmp_path / "runs2")


@pytest.mark.parametrize(
    "method, loss, names",
    [
        (
            {"name": "mutual", "peers": 3},
            [{"name": "cross_entropy"}, {"name": "hinton_kd", "params": {"temperature": 1}}],
            ["student (mutual, peer 1)"],
        ),
        (
            {"name": "born_again", "generations": 2},
            [{"name": "cross_entropy"}, {"name": "hinton_kd"}],
            ["student (born-again gen 1)", "student (born-again gen 2)"],
        ),
        (
            {"name": "offline"},
            [
                {"name": "cross_entropy"},
                {"name": "dkd"},
                {"name": "fitnet_hint", "student_layer": "block2", "teacher_layer": "block2"},
                {"name": "rkd_distance"},
                {"name": "rkd_angle"},
                {"name": "similarity_preserving", "student_layer": "pool", "teacher_layer": "pool"},
                {"name": "attention_transfer", "student_layer": "block1", "teacher_layer": "block1"},
            ],
            ["student (distilled)"],
        ),
    ],
)
def test_each_method_runs(tmp_path, tiny_config, method, loss, names):
    tiny_config.update(method=method, loss=loss)
    tiny_config["train"]["steps"] = 10
    metrics = run(parse_config(tiny_config), runs_dir=tmp_path).metrics
    distilled = [m["name"] for m in metrics["models"] if m["role"] == "distilled"]
    assert distilled == names
    history_terms = {k for h in metrics["history"] for k in h["terms"]}
    if method["name"] == "mutual":
        assert {"peer1/ce", "peer3/kd/hinton_kd"} <= history_terms
    if method["name"] == "offline":
        assert "feat/fitnet_hint@block2" in history_terms and "rel/rkd_angle" in history_terms
        assert metrics["models"][2]["extra_params"] == 16 * 32 + 32  # fitnet adapter, cnn_xs -> cnn_s block2


def test_divergence_is_a_clear_error(tmp_path, tiny_config):
    tiny_config["loss"] = [
        {"name": "cross_entropy"},
        {"name": "fitnet_hint", "weight": 1000, "student_layer": "block2", "teacher_layer": "block2"},
    ]
    # the largest weight and lr the config allows, and nothing to tame the explosion: inf within 10 steps
    tiny_config["train"]["steps"] = 20
    tiny_config["train"].update(grad_clip=None, optimizer="sgd", lr=10.0)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    res = runner.invoke(app, ["run", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 2
    assert "loss is not finite at step" in res.output and "feat/fitnet_hint@block2" in res.output


@pytest.mark.parametrize("command", [[], ["run"], ["validate"], ["methods"], ["models"], ["recipes"]])
def test_help_everywhere(command):
    res = runner.invoke(app, [*command, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output


def test_methods_lists_every_loss_and_method():
    res = runner.invoke(app, ["methods", "--json"])
    names = {row["name"] for row in json.loads(res.output)}
    assert {
        "hinton_kd",
        "dkd",
        "cross_entropy",
        "fitnet_hint",
        "attention_transfer",
        "rkd_distance",
        "rkd_angle",
        "similarity_preserving",
        "offline",
        "mutual",
        "born_again",
    } <= names
    rows = json.loads(res.output)
    encoder = {row["name"] for row in rows if row["kind"] == "embedding loss"}
    assert encoder == {"cosine", "mse", "similarity_matrix", "rkd_distance", "rkd_angle"}


def test_cli_run_prints_table_and_report_path(tmp_path, tiny_config):
    tiny_config["train"]["steps"] = 5
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    res = runner.invoke(app, ["run", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    assert "student (distilled)" in res.output and "report:" in res.output and "report.html" in res.output
