"""The classifier task's config: data, teacher, student, loss terms, method, training, evaluation."""

from __future__ import annotations

import inspect
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from kdistill.classic.zoo import MODELS
from kdistill.losses import LOSSES
from kdistill.schema import (
    LOSS_WEIGHT_MAX,
    LR_MAX,
    NAME_MAX_LENGTH,
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

# Arguments the engine feeds a loss itself (tensors, or for a "module" loss the shapes and data-set size):
# never config params.
ENGINE_ARGUMENTS = frozenset(
    {"student_logits", "teacher_logits", "target", "student_feature", "teacher_feature", "student_emb"}
    | {"teacher_emb", "student_shape", "teacher_shape", "num_samples"}
)

# Loss parameters whose meaning the config checks before any training, by name (whichever loss takes them):
# name -> (low, high, whether each bound itself is allowed). Every parameter must also be finite, and a whole
# number where the loss function's signature says int.
PARAM_BOUNDS: dict[str, tuple[float, float, bool, bool]] = {
    "temperature": (0, TEMPERATURE_MAX, False, True),  # softmax temperature (hinton_kd, dkd, crd)
    "alpha": (0, LOSS_WEIGHT_MAX, True, True),  # dkd: weight of the target-class term
    "beta": (0, LOSS_WEIGHT_MAX, True, True),  # dkd: weight of the non-target term
    "momentum": (0, 1, True, False),  # crd: memory-bank momentum (at 1 the bank never moves)
    "p": (0, 16, False, True),  # attention_transfer: power of the attention map
    "dim": (1, 65536, True, True),  # crd: embedding size of the contrast heads
    "negatives": (1, 1_000_000, True, True),  # crd: negatives drawn per sample
}

# One loss parameter: a finite number (a string such as "4" from YAML is read as one).
LossParam = Annotated[float | int, one_error("a finite number")]


class DataConfig(Strict):
    dataset: Literal["digits", "mnist1d"] = Field("digits", description="built-in offline dataset")
    test_fraction: float = Field(0.3, gt=0, lt=1, description="share of the data held out for evaluation")
    labeled_fraction: float = Field(
        1.0, gt=0, le=1, description="share of the training split whose labels the student may use"
    )
    extra_unlabeled: int = Field(
        0, ge=0, description="extra unlabeled samples the teacher labels for the transfer set (mnist1d only)"
    )
    num_samples: int | None = Field(
        None, ge=20, description="mnist1d only: total samples generated (default: the package's 5000)"
    )
    split_seed: Seed = Field(0, description="seed of the train/test split and of the labeled subset")

    @model_validator(mode="after")
    def _extra_needs_generator(self) -> DataConfig:
        if self.extra_unlabeled and self.dataset != "mnist1d":
            raise ValueError("extra_unlabeled needs a dataset that can generate samples (mnist1d)")
        if self.num_samples is not None and self.dataset != "mnist1d":
            raise ValueError("num_samples applies to mnist1d only")
        return self


class TrainConfig(Strict):
    steps: int = Field(1000, ge=1, description="optimizer steps")
    batch_size: int = Field(64, ge=1, description="samples per step")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="torch optimizer")
    lr: float = Field(1e-3, gt=0, le=LR_MAX, description=f"peak learning rate (at most {LR_MAX:g})")
    weight_decay: float = Field(0.0, ge=0, description="weight decay")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    scheduler: Literal["constant", "cosine"] = Field(
        "cosine", description="learning-rate schedule over steps"
    )
    grad_clip: float | None = Field(5.0, gt=0, description="max global gradient norm (null = no clipping)")
    eval_every: int = Field(100, ge=1, description="steps between evaluations logged to the history")
    checkpoint_every: int = Field(100, ge=1, description="steps between checkpoints (resume points)")


class TeacherConfig(Strict):
    arch: str = Field(
        "cnn_m", max_length=NAME_MAX_LENGTH, description="model-zoo name of the teacher (`kdistill models`)"
    )
    checkpoint: PathValue | None = Field(
        None, description="safetensors weights to load; if unset the teacher is trained and cached"
    )
    seed: Seed = Field(0, description="seed of the teacher's own training")
    train: TrainConfig = Field(default_factory=TrainConfig, description="how the teacher is trained")
    cache_outputs: bool = Field(
        True, description="run the frozen teacher once over the training data and reuse its outputs"
    )

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        if v not in MODELS:
            raise ValueError(MODELS.unknown_message(v))
        return v


class StudentConfig(Strict):
    arch: str = Field("cnn_xs", max_length=NAME_MAX_LENGTH, description="model-zoo name of the student")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        if v not in MODELS:
            raise ValueError(MODELS.unknown_message(v))
        return v


class LossTerm(Strict):
    name: str = Field(max_length=NAME_MAX_LENGTH, description="registered loss name (`kdistill methods`)")
    weight: float = Field(
        1.0,
        ge=0,
        le=LOSS_WEIGHT_MAX,
        description=f"multiplier of this term in the summed loss (0 to {LOSS_WEIGHT_MAX:g})",
    )
    params: dict[str, LossParam] = Field(
        default_factory=dict,
        description="the loss function's own arguments, e.g. temperature (> 0, at most "
        f"{TEMPERATURE_MAX:g}); finite numbers only",
    )
    student_layer: str | None = Field(
        None, description="student module path tapped (feature/relation/module terms)"
    )
    teacher_layer: str | None = Field(
        None, description="teacher module path tapped (feature/relation/module terms)"
    )

    @model_validator(mode="after")
    def _check_against_registry(self) -> LossTerm:
        if self.name not in LOSSES:
            raise ValueError(LOSSES.unknown_message(self.name))
        spec = LOSSES.get(self.name)
        signature = inspect.signature(spec.fn)
        allowed = [p for p in signature.parameters if p not in ENGINE_ARGUMENTS]
        for key, value in self.params.items():
            if key not in allowed:
                raise ValueError(
                    f"loss {self.name!r} has no parameter {key!r}; its parameters: {', '.join(allowed) or 'none'}"
                )
            problem = _param_problem(key, value, str(signature.parameters[key].annotation))
            if problem:
                raise nested_error(f"params.{key}", f"{problem} (got {value!r})")
        if spec.role in ("feature", "module") and not (self.student_layer and self.teacher_layer):
            raise ValueError(f"{spec.role} loss {self.name!r} needs student_layer and teacher_layer")
        if spec.role in ("label", "response") and (self.student_layer or self.teacher_layer):
            raise ValueError(f"loss {self.name!r} works on logits; remove student_layer/teacher_layer")
        if (self.student_layer is None) != (self.teacher_layer is None):
            raise ValueError("give both student_layer and teacher_layer, or neither (= the logits)")
        return self


def _param_problem(key: str, value: float, annotation: str) -> str | None:
    """What is wrong with one loss parameter (None: nothing), checked at config time so the error names it."""
    if annotation in ("int", "<class 'int'>") and value != int(value):
        return "must be a whole number"
    if key not in PARAM_BOUNDS:
        return None
    low, high, low_allowed, high_allowed = PARAM_BOUNDS[key]
    if value < low or (value == low and not low_allowed):
        return f"must be {'>=' if low_allowed else '>'} {low:g}"
    if value > high or (value == high and not high_allowed):
        return f"must be {'<=' if high_allowed else '<'} {high:g}"
    return None


class MethodConfig(Strict):
    name: Literal["offline", "mutual", "born_again", "none"] = Field(
        "offline",
        description="offline KD, mutual (online, DML), born_again (self-distillation) or none (the student "
        "on the labels alone, no distillation; the loss terms are not used)",
    )
    peers: int = Field(2, ge=2, description="mutual: number of peers learning together")
    generations: int = Field(2, ge=1, description="born_again: generations after the first")


class EvaluationConfig(Strict):
    compare_scratch: bool = Field(
        True, description="also train the student from scratch on the labels (method none always does)"
    )
    latency_batch_size: int = Field(1, ge=1, description="batch size of the latency measurement")


class RunConfig(RunConfigBase):
    name: RunName = Field(
        "run", description="run name, prefix of the run directory (letters, digits, _.-; at most 100)"
    )
    seeds: list[Seed] = Field(
        default_factory=lambda: [0],
        min_length=1,
        max_length=1000,
        description="student seeds, one student trained per seed (1 to 1000 of them, each in [0, 2**32))",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available")
    threads: int | None = Field(
        1,
        ge=1,
        description="torch intra-op threads for the run (null = every core); 1 suits the tiny zoo models, "
        "which run several times slower when threads oversubscribe a busy machine",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    loss: list[LossTerm] = Field(
        default_factory=lambda: [LossTerm(name="cross_entropy"), LossTerm(name="hinton_kd")],
        min_length=1,
        description="weighted terms summed into the student's loss",
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="how the student is trained")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    report_to: ReportTo
    tracking_uri: TrackingURI

    @model_validator(mode="after")
    def _method_rules(self) -> RunConfig:
        if len(set(self.seeds)) != len(self.seeds):
            raise nested_error("seeds", "must be distinct")
        if self.method.name != "none" and not any(term.weight > 0 for term in self.loss):
            raise nested_error("loss", "every loss weight is 0: nothing would train the student")
        if self.method.name == "mutual":
            for term in self.loss:
                if LOSSES.get(term.name).role not in ("label", "response"):
                    raise ValueError(
                        f"mutual learning exchanges logits only; loss {term.name!r} is "
                        f"{LOSSES.get(term.name).role}-based"
                    )
        if self.method.name == "born_again":
            for term in self.loss:
                if term.student_layer and LOSSES.get(term.name).role == "feature":
                    # teacher and student share an architecture, so layer names must match too
                    if term.student_layer != term.teacher_layer:
                        raise ValueError("born_again: teacher and student are the same architecture")
        return self
