"""`task: detection` end to end on tiny detectors: every loss family trains, the run resumes to the same
weights, the teacher is cached, COCO folders work as data, and bad configs are refused by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from kdistill.classic.loop import Batch
from kdistill.classic.methods.base import JobInterrupted
from kdistill.config import ConfigError, parse_config
from kdistill.detection import make_scenes, write_coco
from kdistill.detection.config import DetectionRunConfig
from kdistill.detection.distill import TeacherOutputs, response_distillation, teacher_outputs
from kdistill.detection.fcos import flatten_levels, giou_loss_ltrb
from kdistill.detection.models import build_detector
from kdistill.detection.recipe import load_detection_data, run_detection
from kdistill.detection.saved import load_detection_student
from kdistill.preflight import config_problems

ARMS = [
    {"name": "scratch"},
    {"name": "response", "losses": [{"name": "response", "params": {"temperature": 2.0, "box_weight": 0.5}}]},
    {"name": "pkd", "losses": [{"name": "pkd"}]},
    {"name": "imitation", "losses": [{"name": "imitation"}]},
    {"name": "fgd", "losses": [{"name": "fgd", "weight": 10.0}]},
    {"name": "combined", "losses": [{"name": "response"}, {"name": "pkd"}], "pseudo_labels": True},
]


def tiny(**changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "task": "detection",
        "name": "tiny",
        "seeds": [0],
        "threads": 1,
        "data": {
            "image_size": 64,
            "labeled": 6,
            "teacher_extra": 4,
            "extra_unlabeled": 6,
            "test": 4,
            "seed": 3,
        },
        "teacher": {"arch": "fcos_s", "train": {"steps": 3, "batch_size": 4, "warmup_steps": 1}},
        "student": {"arch": "fcos_s"},
        "train": {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "eval_every": 2, "warmup_steps": 1},
        "arms": ARMS,
        "evaluation": {"onnx": False, "latency_rounds": 3},
    }
    config.update(changes)
    return config


def test_every_loss_family_trains_two_steps_and_the_report_compares_them(tmp_path: Path) -> None:
    cfg = parse_config(tiny(train={"steps": 2, "batch_size": 4, "warmup_steps": 1}))
    result = run_detection(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    metrics = result.metrics
    assert metrics["task"] == "detection"
    models = {m["name"]: m for m in metrics["models"]}
    assert list(models) == ["teacher", *(a["name"] for a in ARMS)]
    assert models["scratch"]["role"] == "scratch"
    assert {models[a["name"]]["role"] for a in ARMS[1:]} == {"distilled"}
    for model in models.values():
        assert 0.0 <= model["map"] <= 1.0 and 0.0 <= model["map_50"] <= 1.0
        assert model["params"] == sum(p.numel() for p in build_detector(model["arch"], 6).parameters())
    # every term the arm names is logged, weighted, beside the detection loss
    terms = {(h["model"]): set(h["terms"]) for h in metrics["history"]}
    assert terms["scratch"] == {"det"}
    assert terms["response"] == {"det", "response"}
    assert terms["fgd"] == {"det", "fgd"}
    assert terms["combined"] == {"det", "response", "pkd"}
    assert (result.run_dir / "report.html").is_file() and (result.run_dir / "metrics.json").is_file()
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["data"]["image_size"] == [64, 64] and manifest["data"]["num_classes"] == 6
    assert manifest["teacher"]["source"] == "trained"
    # a job's student reads back for export with exactly the weights the run evaluated
    saved = load_detection_student(result.run_dir / "jobs" / "pkd-s0")
    weights = load_file(str(result.run_dir / "jobs" / "pkd-s0" / "model.safetensors"))
    for name, tensor in saved.model.state_dict().items():
        assert torch.equal(tensor, weights[f"student.{name}"])
    assert any(k.startswith("adapters.") for k in weights)  # the loss's learned parts are saved beside it


def test_a_killed_run_resumes_to_the_same_weights_and_reuses_the_cached_teacher(tmp_path: Path) -> None:
    arms = [ARMS[0], ARMS[4], ARMS[5]]  # scratch, fgd (learned context blocks), pseudo labels + two terms
    cfg = parse_config(tiny(arms=arms))
    cache = tmp_path / "cache"
    reference = run_detection(cfg, runs_dir=tmp_path / "reference", cache_root=cache)
    with pytest.raises(JobInterrupted):
        run_detection(cfg, runs_dir=tmp_path / "killed", cache_root=cache, stop_after=3)  # checkpoint at 2
    resumed = run_detection(cfg, runs_dir=tmp_path / "killed", cache_root=cache)
    assert resumed.resumed
    for arm in ("scratch", "fgd", "combined"):
        a = load_file(str(reference.run_dir / "jobs" / f"{arm}-s0" / "model.safetensors"))
        b = load_file(str(resumed.run_dir / "jobs" / f"{arm}-s0" / "model.safetensors"))
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), f"{arm}: {name} differs after resume"
    manifest = json.loads((resumed.run_dir / "manifest.json").read_text())
    assert manifest["teacher"]["source"] == "cache"
    assert [m["map"] for m in resumed.metrics["models"]] == [m["map"] for m in reference.metrics["models"]]


def test_coco_folders_are_data_and_onnx_latency_is_reported(tmp_path: Path) -> None:
    write_coco(tmp_path / "train", make_scenes(8, seed=5, size=64))
    write_coco(tmp_path / "test", make_scenes(3, seed=6, size=64))
    config = tiny(
        data={
            "source": "coco",
            "train_folder": str(tmp_path / "train"),
            "test_folder": str(tmp_path / "test"),
        },
        arms=[ARMS[0], ARMS[1]],
        evaluation={"onnx": True, "latency_rounds": 3},
    )
    cfg = parse_config(config)
    data = load_detection_data(cfg)
    assert len(data.labeled) == 8 and len(data.test) == 3 and len(data.unlabeled) == 0
    result = run_detection(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    for model in result.metrics["models"]:
        assert model["onnx_latency_ms"] > 0 and model["latency_ms"] > 0
        assert model["onnx_latency_ms_min"] <= model["onnx_latency_ms"] <= model["onnx_latency_ms_max"]
        assert model["onnx_within_tolerance"] is True
    timing = result.metrics["timing"]  # PyTorch and onnxruntime, teacher and student, in one phase
    assert set(timing["models"]) == {"teacher/torch", "teacher/onnx", "student/torch", "student/onnx"}
    assert timing["repeats"] == 3 and timing["batch_size"] == 1 and timing["image_size"] == [64, 64]
    assert (result.run_dir / "export" / "student.onnx").is_file()


def test_scene_parts_are_separate_streams_and_the_labelled_images_lead_the_teachers() -> None:
    cfg = parse_config(tiny())
    data = load_detection_data(cfg)
    assert len(data.teacher_train) == 10 and len(data.labeled) == 6
    assert torch.equal(data.teacher_train.images[:6], data.labeled.images)
    bigger = load_detection_data(parse_config(tiny(data={**tiny()["data"], "extra_unlabeled": 9})))
    assert torch.equal(bigger.test.images, data.test.images)  # one part's size leaves the others alone
    assert not torch.equal(data.unlabeled.images[0], data.test.images[0])


def test_response_distillation_is_the_normalised_binary_kl_plus_weighted_giou() -> None:
    torch.manual_seed(0)
    student = build_detector("fcos_s", 3)(torch.rand(2, 3, 64, 64))
    teacher_model = build_detector("fcos_s", 3)
    teacher = teacher_outputs(teacher_model, torch.rand(2, 3, 64, 64), [])
    temperature, box_weight = 2.0, 0.7
    got = response_distillation(student, teacher, temperature=temperature, box_weight=box_weight)
    # independent computation on flattened positions
    s = flatten_levels(student.cls_logits).double() / temperature
    t = flatten_levels(teacher.cls_logits).double() / temperature
    p, q = torch.sigmoid(t), torch.sigmoid(s)
    kl = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum() * temperature**2
    weight = torch.sigmoid(flatten_levels(teacher.cls_logits).double()).amax(-1)  # (B, P)
    cls = kl / weight.sum().clamp_min(1.0)
    giou = giou_loss_ltrb(flatten_levels(student.box_ltrb), flatten_levels(teacher.box_ltrb)).double()
    box = (giou * weight).sum() / weight.sum()
    assert got.item() == pytest.approx((cls + box_weight * box).item(), rel=1e-5)
    same = TeacherOutputs(student.cls_logits, student.box_ltrb, {})
    assert response_distillation(student, same).item() == pytest.approx(0.0, abs=1e-5)


def test_the_teacher_cache_key_reads_the_teachers_data_not_the_students(tmp_path: Path) -> None:
    from kdistill.detection.recipe import teacher_key

    cfg = parse_config(tiny())
    key = teacher_key(cfg.teacher, load_detection_data(cfg))
    more_unlabeled = parse_config(tiny(data={**tiny()["data"], "extra_unlabeled": 2}))
    assert teacher_key(more_unlabeled.teacher, load_detection_data(more_unlabeled)) == key
    more_teacher_data = parse_config(tiny(data={**tiny()["data"], "teacher_extra": 5}))
    assert teacher_key(more_teacher_data.teacher, load_detection_data(more_teacher_data)) != key


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"arms": [{"name": "x", "losses": [{"name": "ld"}]}]}, "arms.0.losses.0.name: ld distils box-edge"),
        (
            {"arms": [{"name": "x", "losses": [{"name": "pkd", "params": {"temperature": 2}}]}]},
            "arms.0.losses.0.params.temperature: loss 'pkd' has no such parameter",
        ),
        (
            {"arms": [{"name": "x", "losses": [{"name": "response", "params": {"temperature": 0}}]}]},
            "params.temperature: must be > 0",
        ),
        (
            {"arms": [{"name": "x", "losses": [{"name": "fgd", "student_layers": ["fpn.outputs.0"]}]}]},
            "teacher_layers: 3 teacher layers for 1 student layers",
        ),
        ({"arms": [{"name": "teacher"}]}, "arms: 'teacher' names the teacher's row"),
        ({"arms": [{"name": "a"}, {"name": "a"}]}, "arm names must be unique"),
        ({"teacher": {"arch": "fcos_xl"}}, "teacher.arch: unknown detector 'fcos_xl'"),
        ({"data": {"source": "coco"}}, "source coco needs train_folder and test_folder"),
        ({"train": {"warmup_steps": -1}}, "train.warmup_steps"),
    ],
)
def test_bad_configs_are_refused_naming_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        parse_config(tiny(**change))
    assert message in str(caught.value)


def test_preflight_names_a_missing_layer_a_wrong_checkpoint_and_a_missing_coco_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"
    save_file({"student.head.cls_logits.weight": torch.zeros(1)}, str(wrong))
    arms = [
        {
            "name": "x",
            "losses": [
                {"name": "pkd", "student_layers": ["fpn.nothing"], "teacher_layers": ["fpn.outputs.0"]}
            ],
        }
    ]
    cfg = parse_config(tiny(arms=arms, teacher={"arch": "fcos_m", "checkpoint": str(wrong)}))
    problems = config_problems(cfg)
    assert any(
        p.startswith("arms.0.losses.0.student_layers.0: no module 'fpn.nothing' in fcos_s") for p in problems
    )
    assert any(p.startswith(f"teacher.checkpoint: {wrong} does not fit detector 'fcos_m'") for p in problems)
    (tmp_path / "empty").mkdir()
    coco = parse_config(
        tiny(
            data={
                "source": "coco",
                "train_folder": str(tmp_path / "empty"),
                "test_folder": str(tmp_path / "empty"),
            }
        )
    )
    assert f"data.train_folder: {tmp_path / 'empty'} has no instances.json" in "\n".join(
        config_problems(coco)
    )


def test_a_teacher_checkpoint_is_loaded_instead_of_training_one(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(7)
    teacher = build_detector("fcos_s", 6)
    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(path))
    cfg = parse_config(tiny(arms=[ARMS[0]], teacher={"arch": "fcos_s", "checkpoint": str(path)}))
    assert isinstance(cfg, DetectionRunConfig) and not config_problems(cfg)
    result = run_detection(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["teacher"] == {"source": "checkpoint", "path": str(path)}
    assert not (tmp_path / "cache").exists()  # nothing trained, nothing cached


def test_a_batch_without_labelled_images_has_no_detection_loss_unless_pseudo_labelled() -> None:
    from kdistill.detection.config import DetectionArm
    from kdistill.detection.distill import DetectionDistiller

    torch.manual_seed(0)
    images = torch.rand(4, 3, 64, 64)
    boxes = [torch.tensor([[8.0, 8.0, 40.0, 40.0]])] * 4
    labels = [torch.tensor([1])] * 4
    outputs = teacher_outputs(build_detector("fcos_s", 3), images, [])

    def det_loss(pseudo: bool) -> float:
        arm = DetectionArm(name="a", losses=[{"name": "response"}], pseudo_labels=pseudo)
        module = DetectionDistiller(
            build_detector("fcos_s", 3),
            arm,
            teacher=outputs,
            boxes=boxes,
            labels=labels,
            labeled=2,
            example=images[:1],
        )
        index = torch.tensor([2, 3])  # transfer images only
        return module(Batch(index, images[index], index))["det"].item()

    assert det_loss(False) == 0.0
    assert det_loss(True) > 0.0


def test_a_detection_run_logs_each_jobs_terms_to_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from kdistill.runs.trackers import TENSORBOARD_DIR

    cfg = parse_config(tiny(arms=[ARMS[0], ARMS[2]], report_to=["tensorboard"]))
    result = run_detection(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    events = EventAccumulator(str(result.run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0})
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    history = {(h["model"], h["step"]): h for h in result.metrics["history"]}
    # the same numbers as metrics.json's history (float32 in TensorBoard), at the same steps
    assert [s for s, _ in scalars["pkd-s0/terms/pkd"]] == [2, 4]
    for step, value in scalars["pkd-s0/terms/pkd"]:
        assert value == pytest.approx(history[("pkd", step)]["terms"]["pkd"], rel=1e-6)
    assert {s for s, _ in scalars["scratch-s0/terms/det"]} == {2, 4}
    assert "teacher/loss" in scalars  # the teacher's own training, trained in this run


def test_kdistill_methods_lists_every_detection_term_the_config_accepts() -> None:
    from typer.testing import CliRunner

    from kdistill.cli import app
    from kdistill.detection.config import DetectionLossTerm

    rows = json.loads(CliRunner().invoke(app, ["methods", "--json"]).output)
    listed = {r["name"] for r in rows if r["kind"] == "detection loss"}
    assert listed == {"response", "pkd", "imitation", "fgd", "ld"}
    accepted = set()
    for name in listed:
        try:
            DetectionLossTerm(name=name)
            accepted.add(name)
        except ValueError:
            pass
    assert accepted == listed - {"ld"}  # listed to say why it is refused
