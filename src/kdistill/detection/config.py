"""`task: detection`: a large FCOS detector distilled into a small one, each student an arm of one run.

Every arm trains the same student architecture for the same steps and seeds; they differ only in their
distillation terms (none for the `scratch` baseline) and in whether the teacher-labelled transfer set is used,
so the report compares loss families on equal terms.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from kdistill.classic.config import TrainConfig
from kdistill.detection.models import DETECTOR_SIZES
from kdistill.schema import (
    LOSS_WEIGHT_MAX,
    LR_MAX,
    TEMPERATURE_MAX,
    PathValue,
    ReportTo,
    RunConfigBase,
    RunName,
    Seed,
    Strict,
    TrackingURI,
    nested_error,
    one_error,
)

# The FPN outputs P3-P5 of kdistill's detectors: where feature terms tap both models by default.
FPN_LEVELS = ("fpn.outputs.0", "fpn.outputs.1", "fpn.outputs.2")

LossParam = Annotated[float | int, one_error("a finite number")]


class DetectionDataConfig(Strict):
    source: Literal["scenes", "coco"] = Field(
        "scenes", description="scenes = the built-in driving-scene generator; coco = your COCO folders"
    )
    image_size: int = Field(128, ge=32, le=1024, description="scenes: side of the square images, pixels")
    labeled: int = Field(
        400, ge=1, description="scenes: labelled training scenes the student (and the scratch baseline) use"
    )
    teacher_extra: int = Field(
        1600,
        ge=0,
        description="scenes: further labelled scenes only the teacher trains on (its owner's larger data set)",
    )
    extra_unlabeled: int = Field(
        2000, ge=0, description="scenes: unlabelled scenes for the transfer set (the teacher's signals only)"
    )
    test: int = Field(300, ge=1, description="scenes: held-out scenes every model is scored on")
    seed: Seed = Field(0, description="scenes: generator seed (each part of the data draws its own stream)")
    train_folder: PathValue | None = Field(
        None, description="coco: folder with images and instances.json the student learns from"
    )
    test_folder: PathValue | None = Field(None, description="coco: held-out folder every model is scored on")
    unlabeled_folder: PathValue | None = Field(
        None, description="coco: optional folder of unlabelled images (its instances.json may list no boxes)"
    )

    @model_validator(mode="after")
    def _source_fields(self) -> DetectionDataConfig:
        if self.source == "coco":
            if self.train_folder is None or self.test_folder is None:
                raise ValueError("source coco needs train_folder and test_folder")
        elif any(f is not None for f in (self.train_folder, self.test_folder, self.unlabeled_folder)):
            raise ValueError("train_folder, test_folder and unlabeled_folder apply to source coco only")
        return self


class DetectionTrainConfig(TrainConfig):
    """The shared loop's settings with a detector's defaults, plus a warm-up: FCOS's focal loss at full
    learning rate from step 0 can throw an untrained head off (the FCOS schedule warms up too)."""

    steps: int = Field(1000, ge=1, description="optimizer steps")
    batch_size: int = Field(16, ge=1, description="images per step")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adamw", description="torch optimizer")
    lr: float = Field(2e-3, gt=0, le=LR_MAX, description=f"peak learning rate (at most {LR_MAX:g})")
    weight_decay: float = Field(1e-4, ge=0, description="weight decay")
    eval_every: int = Field(250, ge=1, description="steps between logged history entries")
    warmup_steps: int = Field(100, ge=0, description="steps of linear learning-rate warm-up")


class DetectionTeacherConfig(Strict):
    arch: str = Field("fcos_l", description="detector size of the teacher (fcos_s, fcos_m, fcos_l)")
    checkpoint: PathValue | None = Field(
        None, description="safetensors weights of a trained teacher; unset: trained once and cached"
    )
    seed: Seed = Field(0, description="seed of the teacher's own training")
    train: DetectionTrainConfig = Field(
        default_factory=lambda: DetectionTrainConfig(steps=3000), description="how the teacher is trained"
    )

    @field_validator("arch")
    @classmethod
    def _known(cls, v: str) -> str:
        return _known_detector(v)


class DetectionStudentConfig(Strict):
    arch: str = Field("fcos_s", description="detector size of the student (fcos_s, fcos_m, fcos_l)")

    @field_validator("arch")
    @classmethod
    def _known(cls, v: str) -> str:
        return _known_detector(v)


def _known_detector(name: str) -> str:
    if name not in DETECTOR_SIZES:
        raise ValueError(f"unknown detector {name!r}; known: {', '.join(sorted(DETECTOR_SIZES))}")
    return name


DetectionLossName = Literal["response", "pkd", "imitation", "fgd", "ld"]

# name -> the parameters it takes (checked here so a typo is an error before any training)
LOSS_PARAMS: dict[str, frozenset[str]] = {
    "response": frozenset({"temperature", "box_weight"}),
    "pkd": frozenset(),
    "imitation": frozenset({"thresh_factor"}),
    "fgd": frozenset({"temperature", "alpha", "beta", "gamma", "lambda_"}),
    "ld": frozenset({"temperature"}),
}


# name -> what it distils, for `kdistill methods`
LOSS_SUMMARIES: dict[str, str] = {
    "response": "dense-head classification KD (binary KL per class and position) + teacher-box GIoU",
    "pkd": "Pearson-correlation feature distillation on FPN levels (Cao et al. 2022)",
    "imitation": "fine-grained feature imitation near objects (Wang et al. 2019)",
    "fgd": "focal and global feature distillation (Yang et al. 2022)",
    "ld": "box-edge distribution distillation (Zheng et al. 2022); not for FCOS, which has no distributions",
}


class DetectionLossTerm(Strict):
    name: DetectionLossName = Field(
        description="response (dense-head KD), pkd, imitation (fine-grained), fgd, ld (box-edge distributions)"
    )
    weight: float = Field(
        1.0, gt=0, le=LOSS_WEIGHT_MAX, description=f"multiplier (at most {LOSS_WEIGHT_MAX:g})"
    )
    params: dict[str, LossParam] = Field(default_factory=dict, description="the loss's own arguments")
    student_layers: list[str] = Field(
        default_factory=lambda: list(FPN_LEVELS),
        min_length=1,
        description="feature terms: student module paths tapped, one per FPN level",
    )
    teacher_layers: list[str] = Field(
        default_factory=lambda: list(FPN_LEVELS),
        min_length=1,
        description="feature terms: teacher module paths tapped, paired with student_layers in order",
    )

    @model_validator(mode="after")
    def _check(self) -> DetectionLossTerm:
        if self.name == "ld":
            raise nested_error(
                "name",
                "ld distils box-edge distributions, and FCOS regresses the four edge distances directly: "
                "there is nothing for it to distil here (use response with box_weight for the boxes)",
            )
        allowed = LOSS_PARAMS[self.name]
        for key, value in self.params.items():
            if key not in allowed:
                raise nested_error(
                    f"params.{key}",
                    f"loss {self.name!r} has no such parameter; its parameters: {', '.join(sorted(allowed)) or 'none'}",
                )
            if key == "temperature" and not 0 < value <= TEMPERATURE_MAX:
                raise nested_error(f"params.{key}", f"must be > 0 and <= {TEMPERATURE_MAX:g} (got {value})")
            if key == "thresh_factor" and not 0 <= value <= 1:
                raise nested_error(f"params.{key}", f"must be in [0, 1] (got {value})")
            if key != "temperature" and key != "thresh_factor" and not 0 <= value <= LOSS_WEIGHT_MAX:
                raise nested_error(f"params.{key}", f"must be in [0, {LOSS_WEIGHT_MAX:g}] (got {value})")
        if len(self.student_layers) != len(self.teacher_layers):
            raise nested_error(
                "teacher_layers",
                f"{len(self.teacher_layers)} teacher layers for {len(self.student_layers)} student layers "
                "(they pair up in order)",
            )
        if self.name in ("fgd", "imitation") and len(self.student_layers) != len(FPN_LEVELS):
            raise nested_error(
                "student_layers",
                f"{self.name} maps boxes onto each tapped level by its stride: tap the {len(FPN_LEVELS)} FPN "
                f"levels ({', '.join(FPN_LEVELS)})",
            )
        return self


class DetectionArm(Strict):
    name: RunName = Field(description="the arm's name in tables and job folders (letters, digits, _.-)")
    losses: list[DetectionLossTerm] = Field(
        default_factory=list, description="distillation terms added to the detection loss (none: scratch)"
    )
    pseudo_labels: bool = Field(
        False, description="also learn the teacher's confident boxes on the unlabelled transfer images"
    )


class DetectionEvaluationConfig(Strict):
    score_threshold: float = Field(
        0.3, gt=0, lt=1, description="agreement: detections above this score count (both models)"
    )
    pseudo_label_threshold: float = Field(
        0.5, gt=0, le=1, description="transfer set: teacher detections at least this confident become boxes"
    )
    latency_rounds: int = Field(
        30, ge=1, description="batch-1 forward passes per model and runtime in each of 5 timing rounds"
    )
    onnx: bool = Field(True, description="export each model to ONNX and time it in onnxruntime too")


class DetectionRunConfig(RunConfigBase):
    task: Literal["detection"] = Field("detection", description="object-detection distillation")
    name: RunName = Field("detection", description="run name, prefix of the run directory")
    seeds: list[Seed] = Field(
        default_factory=lambda: [0], min_length=1, max_length=1000, description="student seeds"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available")
    threads: int | None = Field(None, ge=1, description="torch threads (null = every core)")
    data: DetectionDataConfig = Field(default_factory=DetectionDataConfig)
    teacher: DetectionTeacherConfig = Field(default_factory=DetectionTeacherConfig)
    student: DetectionStudentConfig = Field(default_factory=DetectionStudentConfig)
    arms: list[DetectionArm] = Field(
        default_factory=lambda: [
            DetectionArm(name="scratch"),
            DetectionArm(name="response", losses=[DetectionLossTerm(name="response")]),
        ],
        min_length=1,
        description="students trained side by side: the same architecture, steps and seeds, different losses",
    )
    train: DetectionTrainConfig = Field(default_factory=DetectionTrainConfig, description="student training")
    evaluation: DetectionEvaluationConfig = Field(default_factory=DetectionEvaluationConfig)
    report_to: ReportTo
    tracking_uri: TrackingURI

    @model_validator(mode="after")
    def _rules(self) -> DetectionRunConfig:
        if len(set(self.seeds)) != len(self.seeds):
            raise nested_error("seeds", "must be distinct")
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise nested_error("arms", f"arm names must be unique, got {names}")
        if "teacher" in names:
            raise nested_error("arms", "'teacher' names the teacher's row: give the arm another name")
        return self
