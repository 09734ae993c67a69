"""`kdistill run` for `task: detection`: a large FCOS teacher distilled into a small student, one arm per method.

    scenes (or COCO folders) ──> labelled images the student may use, the teacher's larger labelled set,
        unlabelled transfer images, held-out test images
    teacher ──> trained once and cached by (arch, training, seed, data) (or a user's checkpoint)
        ──> its outputs on every training image, once per run; its confident boxes on the transfer images
    each arm x seed ──> the student trained with the FCOS loss (+ the arm's distillation terms), resumable
    teacher and every student ──> COCO mAP on the test images, agreement with the teacher's detections,
        parameters, bytes, batch-1 latency in PyTorch and (exported to ONNX) in onnxruntime

The run directory is the one of the other tasks (config.yaml, manifest.json, jobs/<arm>-s<seed>/, metrics.json,
report.html); restarting the same command continues an interrupted run: finished jobs are loaded, the
interrupted one resumes from its last checkpoint to the same weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from safetensors.torch import load_file

from kdistill.classic.methods.base import run_job
from kdistill.classic.teacher import record_teacher
from kdistill.detection.coco import DetectionData, load_coco_folder
from kdistill.detection.config import DetectionRunConfig, DetectionTeacherConfig
from kdistill.detection.distill import FEATURE_TERMS, DetectionDistiller, DetectorTraining, teacher_outputs
from kdistill.detection.fcos import postprocess
from kdistill.detection.metrics import Detections, GroundTruth, coco_map, teacher_agreement
from kdistill.detection.models import FCOSDetector, build_detector
from kdistill.detection.scenes import make_scenes
from kdistill.detection.transfer import teacher_labelled
from kdistill.evaluation.metrics import count_parameters, mean_std, size_on_disk_bytes
from kdistill.runs.locations import default_cache_root
from kdistill.runs.logger import RunLogger
from kdistill.runs.markers import read_done
from kdistill.runs.run_dir import (
    RunResult,
    claim_run_dir,
    pick_device,
    run_record,
    start_manifest,
    write_config,
    write_manifest,
    write_metrics,
)
from kdistill.runs.threads import torch_threads
from kdistill.runs.timing import time_models
from kdistill.schema import stable_hash

__all__ = ["DetectionSplits", "load_detection_data", "run_detection"]

TIMING_ROUNDS = 5  # kept rounds of the timing phase, after one warm-up round
STUDENT_PREFIX = "student."  # every job saves its detector under this prefix (beside loss modules)


@dataclass
class DetectionSplits:
    labeled: DetectionData  # images whose boxes the student may learn
    teacher_train: DetectionData  # what the teacher is trained on (labeled + the owner's further images)
    unlabeled: DetectionData  # transfer images: their boxes are never read
    test: DetectionData

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.test.images.shape[2], self.test.images.shape[3])

    def fingerprint(self, part: DetectionData) -> str:
        h = hashlib.sha256(part.images.contiguous().numpy().tobytes())
        for boxes, labels in zip(part.boxes, part.labels, strict=True):
            h.update(boxes.contiguous().numpy().tobytes())
            h.update(labels.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def _part(data: DetectionData, start: int, stop: int) -> DetectionData:
    return DetectionData(
        data.images[start:stop], data.boxes[start:stop], data.labels[start:stop], data.class_names
    )


def load_detection_data(cfg: DetectionRunConfig) -> DetectionSplits:
    """The four parts of the data. Scenes: each part is its own generator stream of `data.seed`, so changing one
    part's size leaves the others' images as they were; the labelled images are the first of the teacher's."""
    d = cfg.data
    if d.source == "coco":
        assert d.train_folder is not None and d.test_folder is not None
        train = load_coco_folder(d.train_folder)
        test = load_coco_folder(d.test_folder, size=train.images.shape[-1])
        if d.unlabeled_folder is not None:
            unlabeled = load_coco_folder(d.unlabeled_folder, size=train.images.shape[-1])
        else:
            unlabeled = _part(train, 0, 0)
        if test.class_names != train.class_names:
            raise ValueError(
                f"data.test_folder: categories {list(test.class_names)} differ from data.train_folder's "
                f"{list(train.class_names)}"
            )
        return DetectionSplits(train, train, unlabeled, test)
    stream = 4 * d.seed
    teacher_train = make_scenes(d.labeled + d.teacher_extra, stream, d.image_size)
    unlabeled = make_scenes(d.extra_unlabeled, stream + 1, d.image_size)
    test = make_scenes(d.test, stream + 2, d.image_size)
    return DetectionSplits(_part(teacher_train, 0, d.labeled), teacher_train, unlabeled, test)


def run_detection(
    cfg: DetectionRunConfig,
    *,
    runs_dir: Path = Path("runs"),
    cache_root: Path | None = None,
    fresh: bool = False,
    console: Console | None = None,
    stop_after: int | None = None,
    wait: bool = False,
) -> RunResult:
    """Run (or continue) the detection distillation `cfg` describes; `stop_after` stops each job after that
    many steps (tests simulate a kill with it). One process at a time runs a config in `runs_dir`."""
    with (
        torch_threads(cfg.torch_threads()),
        flush_denormals(),
        claim_run_dir(cfg, runs_dir, fresh=fresh, wait=wait) as claim,
    ):
        if claim.finished:
            return claim.finished_result()
        t0 = time.perf_counter()
        run_dir, resumed = claim.run_dir, claim.resumed
        device = pick_device(cfg.device)
        data = load_detection_data(cfg)
        manifest = start_manifest(cfg, run_dir, resumed=resumed, seeds=cfg.seeds)
        manifest |= {"device": str(device), "data": data_record(data)}
        write_config(run_dir, cfg)
        write_manifest(run_dir, manifest)
        logger = RunLogger.for_run(run_dir, cfg, console=console)
        with logger.shown():
            teacher, manifest["teacher"] = load_detection_teacher(
                cfg.teacher, data, device, cache_root=cache_root, logger=logger
            )
            write_manifest(run_dir, manifest)
            session = StudentSession.start(cfg, data, teacher, device, run_dir, logger, stop_after)
            manifest["transfer_set"] = session.transfer_record
            write_manifest(run_dir, manifest)
            students = {
                (arm.name, seed): session.train(arm.name, seed) for arm in cfg.arms for seed in cfg.seeds
            }
        metrics = evaluate_detection(cfg, data, teacher, students, session.histories, run_dir)
        metrics["run"] = run_record(
            cfg, run_dir, manifest["started"], t0, seeds=cfg.seeds, device=str(device)
        )
        from kdistill.evaluation import write_report

        write_report(run_dir, metrics, config_yaml=cfg.to_yaml(), manifest=manifest)
        write_metrics(run_dir, metrics)  # last: marks the run finished
    return RunResult(run_dir, metrics, resumed)


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Treat denormal floats as zero while the run trains: a detector's small feature-distillation gradients
    leave denormal values in its convolutions, which x86 CPUs compute many times slower (measured: a PKD step
    2.2x slower). The values lost are below 1e-38."""
    before = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if before:  # the call returns whether the CPU supports the mode: only then is there anything to undo
            torch.set_flush_denormal(False)


def data_record(data: DetectionSplits) -> dict[str, Any]:
    """The manifest's record of the data (export reads image_size and num_classes from it)."""
    return {
        "image_size": list(data.image_size),
        "num_classes": data.test.num_classes,
        "class_names": list(data.test.class_names),
        "labeled": len(data.labeled),
        "teacher_train": len(data.teacher_train),
        "unlabeled": len(data.unlabeled),
        "test": len(data.test),
        "test_objects": sum(len(labels) for labels in data.test.labels),
        "fingerprint": {
            "teacher_train": data.fingerprint(data.teacher_train),
            "test": data.fingerprint(data.test),
        },
    }


# ------------------------------------------------------------------------------------------------ teacher


def teacher_key(cfg: DetectionTeacherConfig, data: DetectionSplits) -> str:
    """Same architecture, training, seed and training data -> the same cached teacher."""
    return stable_hash(
        {
            "arch": cfg.arch,
            "train": cfg.train.model_dump(mode="json"),
            "seed": cfg.seed,
            "data": data.fingerprint(data.teacher_train),
            "kdistill_detection_teacher_format": 1,
        }
    )


def load_detection_teacher(
    cfg: DetectionTeacherConfig,
    data: DetectionSplits,
    device: torch.device,
    *,
    cache_root: Path | None = None,
    logger: RunLogger | None = None,
) -> tuple[FCOSDetector, dict[str, Any]]:
    """The frozen teacher in eval mode and where it came from: a user's checkpoint, or trained once and cached."""
    num_classes = data.test.num_classes
    if cfg.checkpoint is not None:
        from kdistill.preflight import check_detector_checkpoint

        model = build_detector(cfg.arch, num_classes).to(device)
        check_detector_checkpoint(cfg.checkpoint, model, cfg.arch, "teacher.checkpoint")
        state = load_file(str(cfg.checkpoint), device=str(device))
        model.load_state_dict({k.removeprefix(STUDENT_PREFIX): v for k, v in state.items()})
        origin: dict[str, Any] = {"source": "checkpoint", "path": str(cfg.checkpoint)}
    else:
        key = teacher_key(cfg, data)
        job_dir = (cache_root or default_cache_root()) / "detection-teachers" / key
        cached = read_done(job_dir) is not None
        torch.manual_seed(cfg.seed)
        model = build_detector(cfg.arch, num_classes).to(device)
        wrapper = DetectorTraining(model, data.teacher_train.boxes, data.teacher_train.labels)
        images = data.teacher_train.images.to(device)
        started = time.perf_counter()
        history = run_job(
            job_dir,
            wrapper,
            wrapper,
            x=images,
            target=torch.arange(len(images), device=device),
            seed=cfg.seed,
            cfg=cfg.train,
            log=logger.job("teacher", "teacher", total=cfg.train.steps)
            if logger is not None and not cached
            else None,
        )
        origin = {"source": "cache" if cached else "trained", "path": str(job_dir), "key": key}
        if not cached:
            origin["train_seconds"] = round(time.perf_counter() - started, 1)
        origin["final_loss"] = history[-1]["loss"] if history else None
        record_teacher(job_dir, {"arch": cfg.arch, "key": key, "task": "detection"})
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), origin


# ----------------------------------------------------------------------------------------------- students


@dataclass
class StudentSession:
    """What every arm's jobs share: the training images (labelled first, then transfer images), their boxes
    (ground truth, then the teacher's), the teacher's cached outputs, and where jobs go."""

    cfg: DetectionRunConfig
    images: torch.Tensor
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    labeled: int
    num_classes: int
    outputs: Any  # TeacherOutputs on `images`, or None when no arm distils
    device: torch.device
    run_dir: Path
    logger: RunLogger | None
    stop_after: int | None
    transfer_record: dict[str, Any]
    histories: dict[tuple[str, int], list[dict[str, Any]]]

    @classmethod
    def start(
        cls,
        cfg: DetectionRunConfig,
        data: DetectionSplits,
        teacher: FCOSDetector,
        device: torch.device,
        run_dir: Path,
        logger: RunLogger | None,
        stop_after: int | None,
    ) -> StudentSession:
        transfer = teacher_labelled(
            teacher,
            data.unlabeled.images.to(device),
            data.test.class_names,
            score_threshold=cfg.evaluation.pseudo_label_threshold,
        )
        images = torch.cat([data.labeled.images, data.unlabeled.images]).to(device)
        boxes = [b.to(device) for b in [*data.labeled.boxes, *transfer.boxes]]
        labels = [lab.to(device) for lab in [*data.labeled.labels, *transfer.labels]]
        layers = sorted(
            {p for arm in cfg.arms for t in arm.losses if t.name in FEATURE_TERMS for p in t.teacher_layers}
        )
        distils = any(arm.losses for arm in cfg.arms)
        outputs = teacher_outputs(teacher, images, layers) if distils else None
        record = {
            "images": len(data.unlabeled),
            "teacher_boxes": sum(len(b) for b in transfer.boxes),
            "score_threshold": cfg.evaluation.pseudo_label_threshold,
        }
        return cls(
            cfg,
            images,
            boxes,
            labels,
            len(data.labeled),
            data.test.num_classes,
            outputs,
            device,
            run_dir,
            logger,
            stop_after,
            record,
            {},
        )

    def train(self, arm_name: str, seed: int) -> FCOSDetector:
        """The arm's student for `seed`: trained as job `<arm>-s<seed>`, or loaded if that job finished."""
        arm = next(a for a in self.cfg.arms if a.name == arm_name)
        torch.manual_seed(seed)
        student = build_detector(self.cfg.student.arch, self.num_classes).to(self.device)
        uses_transfer = bool(arm.losses) or arm.pseudo_labels
        count = len(self.images) if uses_transfer else self.labeled
        module = DetectionDistiller(
            student,
            arm,
            teacher=self.outputs,
            boxes=self.boxes,
            labels=self.labels,
            labeled=self.labeled,
            example=self.images[:2],
        )
        job_id = f"{arm.name}-s{seed}"
        train_cfg = self.cfg.train
        self.histories[(arm_name, seed)] = run_job(
            self.run_dir / "jobs" / job_id,
            module,
            module,
            x=self.images[:count],
            target=torch.arange(count, device=self.device),
            seed=seed,
            cfg=train_cfg,
            log=self.logger.job(job_id, job_id, total=train_cfg.steps) if self.logger is not None else None,
            stop_after=self.stop_after,
        )
        return student.eval()


# --------------------------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def predict(model: FCOSDetector, images: torch.Tensor, *, batch_size: int = 50) -> list[Detections]:
    model.eval()
    size = (images.shape[2], images.shape[3])
    found = []
    for start in range(0, len(images), batch_size):
        output = model(images[start : start + batch_size])
        found += [
            Detections(b.cpu(), s.cpu(), lab.cpu()) for b, s, lab in postprocess(output, image_size=size)
        ]
    return found


def evaluate_detection(
    cfg: DetectionRunConfig,
    data: DetectionSplits,
    teacher: FCOSDetector,
    students: dict[tuple[str, int], FCOSDetector],
    histories: dict[tuple[str, int], list[dict[str, Any]]],
    run_dir: Path,
) -> dict[str, Any]:
    """mAP per model (mean and std over seeds), agreement with the teacher, and size and latency per
    architecture (PyTorch, and onnxruntime when `evaluation.onnx`)."""
    device = next(teacher.parameters()).device
    images = data.test.images.to(device)
    truth = [GroundTruth(b, lab) for b, lab in zip(data.test.boxes, data.test.labels, strict=True)]
    num_classes = data.test.num_classes
    size = data.image_size
    teacher_found = predict(teacher, images)
    threshold = cfg.evaluation.score_threshold

    def quality(found: list[Detections]) -> dict[str, Any]:
        scores = coco_map(found, truth, num_classes=num_classes, image_size=size)
        agreement = teacher_agreement(found, teacher_found, score_threshold=threshold)
        return {
            "map": scores["map"],
            "map_50": scores["map_50"],
            "agreement_f1": agreement["f1"],
            "coco": scores,
        }

    first = next(iter(students.values()))  # every arm's student has one architecture: timed once
    speed, timing = model_speeds({"teacher": teacher, "student": first}, cfg, run_dir / "export", size)
    teacher_quality = quality(teacher_found)
    models: list[dict[str, Any]] = [
        {
            "name": "teacher",
            "role": "teacher",
            "arch": cfg.teacher.arch,
            "map": teacher_quality["map"],
            "map_std": 0.0,
            "map_per_seed": [teacher_quality["map"]],
            "map_50": teacher_quality["map_50"],
            "map_50_std": 0.0,
            "agreement_f1": 1.0,
            "agreement_f1_std": 0.0,
            "per_class_ap50": teacher_quality["coco"]["per_class_ap50"],
            **speed["teacher"],
        }
    ]
    student_speed = speed["student"]
    history: list[dict[str, Any]] = []
    for arm in cfg.arms:
        per_seed = [quality(predict(students[(arm.name, seed)], images)) for seed in cfg.seeds]
        row: dict[str, Any] = {
            "name": arm.name,
            "role": "distilled" if arm.losses or arm.pseudo_labels else "scratch",
            "arch": cfg.student.arch,
            "losses": [t.name for t in arm.losses] + (["pseudo_labels"] if arm.pseudo_labels else []),
        }
        for key in ("map", "map_50", "agreement_f1"):
            values = [q[key] if q[key] is not None else float("nan") for q in per_seed]
            row[key], row[f"{key}_std"] = mean_std(values)
            row[f"{key}_per_seed"] = values
        models.append(row | student_speed)
        for seed in cfg.seeds:
            history += [{"model": arm.name, "seed": seed, **h} for h in histories.get((arm.name, seed), [])]
    return {
        "task": "detection",
        "models": models,
        "history": history,
        "summary": summarise_detection(models),
        "data": data_record(data),
        "timing": timing,
    }


def model_speeds(
    models: dict[str, FCOSDetector], cfg: DetectionRunConfig, export_dir: Path, size: tuple[int, int]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per model: parameters, bytes and latency per image at batch 1 in PyTorch and (exported to ONNX,
    its outputs checked against PyTorch's) in onnxruntime, median and spread; and the timing phase's record.
    All models and runtimes are timed in one phase, in turns (kdistill.runs.timing), so a busy moment of
    the machine falls on all of them alike, and a busy machine is noted."""
    from kdistill.export.onnx import check_onnx, export_onnx, onnx_session

    models = {name: model.float().cpu().eval() for name, model in models.items()}
    example = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    records: dict[str, dict[str, Any]] = {
        name: {
            "params": count_parameters(model),
            "size_bytes": size_on_disk_bytes(model),
            "onnx_latency_ms": None,
        }
        for name, model in models.items()
    }
    calls = {f"{name}/torch": (lambda m=model: m(example)) for name, model in models.items()}
    if cfg.evaluation.onnx:
        export_dir.mkdir(parents=True, exist_ok=True)
        for name, model in models.items():
            path = export_dir / f"{name}.onnx"
            export_onnx(model, torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1)), path)
            check = check_onnx(
                model,
                path,
                torch.rand(4, 3, *size, generator=torch.Generator().manual_seed(2)),
                rounds=1,
                repeats=1,
            )
            records[name] |= {
                "onnx_max_abs_diff": check.max_abs_diff,
                "onnx_within_tolerance": check.within_tolerance,
                "onnx_file": str(path),
            }
            session, x = onnx_session(path), example.numpy()
            calls[f"{name}/onnx"] = lambda s=session, x=x: s.run(None, {s.get_inputs()[0].name: x})
    with torch.inference_mode():
        phase = time_models(
            calls, rounds=TIMING_ROUNDS, repeats=cfg.evaluation.latency_rounds, threads=cfg.torch_threads()
        )
    for name in models:
        for runtime, key in (("torch", "latency_ms"), ("onnx", "onnx_latency_ms")):
            timing = phase.models.get(f"{name}/{runtime}")
            if timing is not None:
                records[name] |= {
                    key: 1000 * timing.median_s,
                    f"{key}_min": 1000 * timing.min_s,
                    f"{key}_max": 1000 * timing.max_s,
                }
    return records, phase.record(batch_size=1, image_size=list(size), device="cpu")


def summarise_detection(models: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline: the best distilled arm against the scratch arm and the teacher."""
    teacher = models[0]
    scratch = next((m for m in models if m["role"] == "scratch"), None)
    distilled = [m for m in models if m["role"] == "distilled" and m["map"] == m["map"]]
    best = max(distilled, key=lambda m: m["map"]) if distilled else scratch
    if best is None:
        return {"headline": f"teacher mAP {teacher['map']:.3f}"}
    speedup = teacher["latency_ms"] / best["latency_ms"] if best["latency_ms"] else float("nan")
    ratio = teacher["params"] / best["params"]
    headline = (
        f"{best['name']}: mAP {100 * best['map']:.1f} (teacher {100 * teacher['map']:.1f}) with 1/{ratio:.0f} of "
        f"its parameters, {speedup:.1f}x faster per image"
    )
    summary: dict[str, Any] = {
        "headline": headline,
        "best": best["name"],
        "speedup": speedup,
        "params_ratio": ratio,
    }
    if distilled and scratch is not None:
        gain = best["map"] - scratch["map"]
        summary["map_gain_over_scratch"] = gain
        summary["headline"] += f"; {100 * gain:+.1f} mAP points over the same student from scratch"
    return summary
