"""The `generation:` section of a YAML file (or the `kdistill generate` flags): typed, validated models.

Every field has a default and a one-line description; unknown keys and wrong types are errors naming the
field path (`my.yaml: generation.teacher.model: ...`). `load_generation_config` reads a file, merges the
command-line overrides and validates once. A config is data: teachers are built from it by
`kdistill.generate.run.build_teacher`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from kdistill.schema import ConfigError, Strict, format_validation_errors, parse_yaml, read_config_text


class EndpointConfig(Strict):
    """One server of a teacher served by several (`teacher.endpoints`); a plain URL string is accepted too."""

    base_url: str = Field(description="the server's base URL, up to and including /v1")
    concurrency: int | None = Field(
        None, ge=1, description="most requests in flight on this server (null = no cap of its own)"
    )
    weight: float = Field(
        1.0, gt=0, description="share of the load: requests go where outstanding / weight is least"
    )

    @model_validator(mode="before")
    @classmethod
    def _url_alone(cls, data: Any) -> Any:
        return {"base_url": data} if isinstance(data, str) else data


class EndpointHealthConfig(Strict):
    """When a server of `teacher.endpoints` is taken out of rotation and probed back."""

    failures_to_eject: int = Field(
        3,
        ge=1,
        description="consecutive timeouts or 5xx that take a server out (a connection error: at once)",
    )
    backoff_s: float = Field(
        1.0, gt=0, description="first time out of rotation; doubles with each ejection in a row"
    )
    max_backoff_s: float = Field(60.0, gt=0, description="longest time out of rotation before a probe")

    @model_validator(mode="after")
    def _ordered(self) -> EndpointHealthConfig:
        if self.max_backoff_s < self.backoff_s:
            raise ValueError(f"max_backoff_s: expected at least backoff_s ({self.backoff_s})")
        return self


class OpenAITeacherConfig(Strict):
    kind: Literal["openai"] = Field("openai", description="an OpenAI-compatible HTTP endpoint")
    base_url: str = Field(
        "http://127.0.0.1:8000/v1", description="the endpoint's base URL, up to and including /v1"
    )
    endpoints: list[EndpointConfig] | None = Field(
        None,
        description="several servers of the same model instead of base_url: each a URL or {base_url, "
        "concurrency, weight}; record ids then name no server (null = the one base_url)",
    )
    endpoint_health: EndpointHealthConfig = Field(
        default_factory=EndpointHealthConfig, description="with endpoints: ejection and probing of a server"
    )
    model: str | None = Field(None, description="model name the endpoint serves (required)")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY",
        description="name of the environment variable holding the API key (never the key itself); "
        "if it is unset no key is sent",
    )
    api: Literal["auto", "chat", "completions"] = Field(
        "auto", description="chat (/chat/completions), completions (/completions, plain prompts); auto = chat"
    )
    timeout_s: float = Field(600.0, gt=0, description="seconds before one request times out (then retried)")
    samples_per_request: int = Field(
        1,
        ge=1,
        description="samples asked for in one request (the `n` parameter); 1 for servers that ignore n",
    )
    send_org_headers: bool | None = Field(
        None,
        description="send $OPENAI_ORG_ID / $OPENAI_PROJECT_ID as OpenAI-Organization / OpenAI-Project "
        "headers; null = only to OpenAI's own API (https://api.openai.com and its regional hosts)",
    )
    render_with: str | None = Field(
        None,
        description="render prompts here with this tokenizer's chat template (directory, hub id or "
        "pkg:<name>) and send the text through /completions, so that the prompt the teacher answered is "
        "known (the student's, for distillation); null = the server applies its own template",
    )

    @field_validator("endpoints")
    @classmethod
    def _distinct_endpoints(cls, endpoints: list[EndpointConfig] | None) -> list[EndpointConfig] | None:
        if endpoints is None:
            return None
        if not endpoints:
            raise ValueError("expected at least one endpoint (or leave endpoints out and set base_url)")
        urls = [e.base_url.rstrip("/") for e in endpoints]
        twice = sorted({u for u in urls if urls.count(u) > 1})
        if twice:
            raise ValueError(f"a server is listed twice: {', '.join(twice)}")
        return endpoints

    @model_validator(mode="after")
    def _base_url_or_endpoints(self) -> OpenAITeacherConfig:
        if self.endpoints is not None and "base_url" in self.model_fields_set:
            raise ValueError("endpoints: give either base_url (one server) or endpoints (several), not both")
        return self

    @model_validator(mode="after")
    def _render_needs_completions(self) -> OpenAITeacherConfig:
        if self.render_with is not None and self.api == "chat":
            raise ValueError(
                "render_with sends the rendered text through the completions API: set api to completions "
                "or auto, or drop render_with to let the server apply its own template"
            )
        return self


class WatermarkConfig(Strict):
    """A green-list watermark on the sampled tokens (see kdistill.provenance.watermark)."""

    key_env: str = Field(
        "KDISTILL_WATERMARK_KEY",
        description="name of the environment variable holding the secret key (never the key itself)",
    )
    gamma: float = Field(0.25, gt=0, lt=1, description="fraction of the vocabulary that is green per context")
    delta: float = Field(2.0, ge=0, description="added to the green tokens' logits before sampling")
    context_width: int = Field(1, ge=1, description="previous tokens that seed the green list")


class HFTeacherConfig(Strict):
    kind: Literal["hf_local"] = Field("hf_local", description="a local Hugging Face causal LM")
    model: str | None = Field(None, description="local directory or hub id (required)")
    gguf_file: str | None = Field(None, description="a GGUF file inside `model` to load (dequantised)")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="weights dtype")
    device: str = Field("auto", description="torch device; auto = cuda when available, else cpu")
    batch_size: int = Field(8, ge=1, description="sequences per generate() call")
    trust_remote_code: bool = Field(False, description="run the model repository's own code (off: safer)")
    api: Literal["auto", "chat", "completions"] = Field(
        "auto", description="chat = apply the chat template; auto = chat when the tokenizer has one"
    )
    watermark: WatermarkConfig | None = Field(
        None, description="mark the sampled tokens with a green-list watermark (null = off)"
    )


class SamplingConfig(Strict):
    samples: int = Field(1, ge=1, description="answers per prompt (sample indices 0..samples-1)")
    max_tokens: int = Field(512, ge=1, description="most new tokens per answer")
    temperature: float = Field(1.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    seed: int | None = Field(None, description="base seed; a request for sample i sends seed + i")
    stop: list[str] | None = Field(None, description="strings that end an answer (not included)")
    top_logprobs: int | None = Field(
        None,
        ge=0,
        le=20,
        description="store logprobs with the top-k alternatives (0 = the chosen token's only)",
    )


class RetryConfig(Strict):
    max_attempts: int = Field(6, ge=1, description="attempts per request in all, the first included")
    base_delay_s: float = Field(0.5, gt=0, description="backoff after the first failure (doubles each time)")
    max_delay_s: float = Field(30.0, gt=0, description="longest backoff between attempts")
    retry_after_cap_s: float = Field(
        60.0, ge=0, description="longest wait honoured from a Retry-After header"
    )


class GenerationConfig(Strict):
    """The `generation:` section of a YAML file (or the `kdistill generate` flags)."""

    prompts: Path | None = Field(
        None, description="prompt file (.jsonl, .csv, .parquet) or dataset directory (required)"
    )
    out: Path | None = Field(
        None, description="output directory; rerun the same command to resume (required)"
    )
    teacher: Annotated[OpenAITeacherConfig | HFTeacherConfig, Field(discriminator="kind")] = Field(
        default_factory=OpenAITeacherConfig, description="who answers: kind openai or hf_local"
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="decoding parameters")
    concurrency: int = Field(16, ge=1, description="requests in flight at once")
    requests_per_minute: float | None = Field(None, gt=0, description="client-side request rate limit")
    tokens_per_minute: float | None = Field(
        None, gt=0, description="client-side token rate limit (prompt + completion, estimated then settled)"
    )
    retry: RetryConfig = Field(default_factory=RetryConfig, description="retry policy for transient failures")
    allow_length: bool = Field(False, description="keep answers cut off by max_tokens as rows")
    retry_rejects: bool = Field(False, description="ask again for records that have a reject line")
    allow_mixed: bool = Field(
        False, description="let one output dir hold rows of different teachers or sampling parameters"
    )
    max_consecutive_errors: int | None = Field(
        50, ge=1, description="stop the run after this many requests in a row end in errors (null = never)"
    )
    shard_rows: int = Field(10_000, ge=1, description="rows per immutable shard")
    shard: str | None = Field(
        None,
        description="'i/N' (from 0): request only the records of part i of N (by a hash of the record id), "
        "for N jobs of a cluster array; give each job its own `out` (null = every record)",
    )
    price_input_per_1m: float | None = Field(
        None, ge=0, description="price per 1M prompt tokens (for the cost)"
    )
    price_output_per_1m: float | None = Field(
        None, ge=0, description="price per 1M completion tokens (for the cost)"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("teacher"), dict) and "kind" not in data["teacher"]:
            data = {**data, "teacher": {"kind": "openai", **data["teacher"]}}
        return data

    @model_validator(mode="after")
    def _shard_spec(self) -> GenerationConfig:
        from kdistill.runs.sharding import parse_shard

        parse_shard(self.shard, flag="shard")  # a ShardSpecError is a ValueError: a validation error
        return self

    @model_validator(mode="after")
    def _required(self) -> GenerationConfig:
        if self.prompts is None:
            raise ValueError("prompts: required (a prompt file or dataset directory)")
        if self.out is None:
            raise ValueError("out: required (the output directory)")
        if not self.teacher.model:
            raise ValueError("teacher.model: required")
        return self


def load_generation_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> GenerationConfig:
    """The `generation:` section of a YAML file (or nothing), with `overrides` merged in, validated.

    `overrides` is nested like the YAML (`{"sampling": {"samples": 4}}`); a `teacher` override with
    another `kind` replaces the file's teacher instead of merging into it. Raises `ConfigError` with one
    line per problem, each naming the file and the field path (`my.yaml: generation.teacher.model: ...`).
    """
    data: dict[str, Any] = {}
    source = "command line"
    if path is not None:
        source = str(path)
        text = read_config_text(Path(path))  # UTF-8, at most 1 MiB: else one ConfigError line
        loaded = parse_yaml(text, str(path))
        if not isinstance(loaded, dict) or "generation" not in loaded:
            raise ConfigError(f"{path}: expected a mapping with a 'generation:' section")
        if not isinstance(loaded["generation"], dict):
            raise ConfigError(f"{path}: generation: expected a mapping of generation settings")
        data = loaded["generation"]
    data = _merge(data, overrides or {})
    try:
        return GenerationConfig.model_validate(data)
    except ValidationError as err:
        message = format_validation_errors(err, source, prefix=("generation",), hide=("openai", "hf_local"))
        raise ConfigError(message) from None


#: the teacher keys that name its servers: an override of one replaces all of them
SERVER_KEYS = frozenset({"base_url", "endpoints"})


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if key == "teacher" and isinstance(old, dict) and isinstance(value, dict):
            if value.get("kind", old.get("kind", "openai")) != old.get("kind", "openai"):
                merged[key] = dict(value)  # another kind of teacher: the file's settings do not apply
                continue
            if SERVER_KEYS & value.keys():  # servers given (--base-url) replace the file's, not add to them
                old = {k: v for k, v in old.items() if k not in SERVER_KEYS}
        if isinstance(old, dict) and isinstance(value, dict):
            merged[key] = _merge(old, value)
        else:
            merged[key] = value
    return merged
