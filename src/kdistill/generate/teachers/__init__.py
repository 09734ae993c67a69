"""Where knowledge comes from: teachers that answer prompts.

A teacher turns one `CompletionRequest` (a prompt or a chat, `n` samples, a seed) into one
`TeacherResponse` (the choices as the teacher sent them, plus token usage). Teachers do not judge the
answers: whether a choice becomes a training row or a reject is decided in one place,
`kdistill.generate.run`, so every teacher is held to the same rules. Teachers never read a config; the
generation pipeline builds them from one.

- `OpenAIEndpointTeacher` (`openai_endpoint.py`): any OpenAI-compatible HTTP server through the official
  async `openai` client (vLLM, llama.cpp server, Ollama, OpenAI, ...).
- `HFLocalTeacher` (`hf_local.py`): a local Hugging Face causal LM, batched left-padded `generate`.

`identity` is a JSON-able description of the teacher (kind, base_url or model path, model, API style) that
goes into every record id and row; it never holds a secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings shared by every request of a run (the seed is per request)."""

    max_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] | None = None
    top_logprobs: int | None = None  # None: no logprobs; 0: the sampled token's only; k: also the top k


@dataclass(frozen=True)
class CompletionRequest:
    """One request: `n` samples of one prompt (exactly one of `prompt` / `messages` is set)."""

    prompt: str | None
    messages: list[dict[str, str]] | None
    n: int = 1
    seed: int | None = None


@dataclass
class Choice:
    """One sample as the teacher returned it; `logprobs` already in the row format (see generate/store.py)."""

    text: str | None
    finish_reason: str | None
    logprobs: list[dict[str, Any]] | None = None
    problem: str | None = None  # a reject reason code found while parsing this choice
    completion_tokens: int | None = None  # when the teacher knows this choice's own count


@dataclass
class TeacherResponse:
    """A teacher's answer. `problem` is a reject reason code when the whole body is unusable."""

    choices: list[Choice] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    problem: str | None = None  # e.g. "unparsable_body"
    detail: str = ""


class TeacherError(Exception):
    """A failure of the teacher itself (not of one answer) that retrying will not fix."""


class Teacher(Protocol):
    identity: dict[str, Any]
    max_in_flight: int | None  # the concurrency this teacher needs to be efficient (a local batch size)

    async def complete(self, request: CompletionRequest) -> TeacherResponse: ...

    async def aclose(self) -> None: ...


__all__ = [
    "Choice",
    "CompletionRequest",
    "SamplingParams",
    "Teacher",
    "TeacherError",
    "TeacherResponse",
]
