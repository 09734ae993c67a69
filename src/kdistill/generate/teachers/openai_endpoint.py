"""A teacher behind any OpenAI-compatible HTTP endpoint (vLLM, llama.cpp server, Ollama, OpenAI, ...).

Requests go through the official async `openai` client with `max_retries=0`: retrying is the pipeline's
job (`teachers/retry.py`), so that exactly the documented failure classes are retried. The body of a
successful response is read raw (`client.post(..., cast_to=httpx2.Response)`) and parsed here, tolerant
of the extra fields servers add but strict about what a row needs; anything unusable comes back as a `problem` code rather
than an exception, because a malformed answer is a reject, not a failure to retry.

Chat (`/chat/completions`) sends a plain prompt as one user message; completions (`/completions`) sends
the prompt text as is and needs plain prompts. Logprobs are asked for with `top_logprobs` (chat:
`logprobs=true, top_logprobs=k`; completions: `logprobs=k`) and normalised to the row format
`[{"token", "logprob", "bytes"?, "top": [{"token", "logprob", "bytes"?}, ...]}, ...]`, one entry per
generated token. `bytes` (the token's UTF-8 bytes, possibly part of a character) is kept when the server
sends it (chat logprobs, llama.cpp's completions): it is what names a token exactly across tokenizers
(`kdistill.lm.endpoint_bytes`), where the text of a partial character is only a replacement character.

**Prompt rendering.** The signal a student learns from is conditioned on the prompt the teacher saw.
Through the chat API the server applies *its own* chat template, which we cannot see; `template_tokenizer`
renders the chat template of a tokenizer we have here instead (the way `kdistill.lm.sft_data.encode_prompt`
does for the student: a plain prompt becomes one user message) and sends the text through /completions.
`rendering` says which happened, and is written with every row: `{"api": "chat"}`, `{"api":
"completions", "kind": "plain"}` or `{"api": "completions", "kind": "chat_template", "template_sha256"}`.

**Organization headers.** The openai client reads `OPENAI_ORG_ID` and `OPENAI_PROJECT_ID` from the
environment and sends them as `OpenAI-Organization` / `OpenAI-Project` headers to whatever base URL it
is given. They name the user's OpenAI account, so a vLLM or Ollama server (or whoever runs it) has no
business receiving them: by default they go to OpenAI's own API only (`is_openai_api`);
`send_org_headers=True` sends them anywhere (a proxy in front of OpenAI), `False` never.

**A query in the base URL** (`http://h:8000/v1?api-version=2024`, as Azure-style proxies want) is sent
with every request (the client's `default_query`): left in the base URL, the client would join request
paths after it (`/v1/?api-version=2024chat/completions`). It is never written into rows (`public_url`).
"""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx2

from kdistill.generate.teachers import Choice, CompletionRequest, SamplingParams, TeacherResponse

#: What `api_key` is replaced with when no key is configured: local servers ignore it, and an explicit
#: placeholder stops the openai client from falling back to $OPENAI_API_KEY behind the user's back.
NO_KEY = "no-key"


class OpenAIEndpointTeacher:
    max_in_flight: int | None = None

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None,
        sampling: SamplingParams,
        api: Literal["chat", "completions"] = "chat",
        timeout_s: float = 600.0,
        send_org_headers: bool | None = None,
        template_tokenizer: Any = None,
    ) -> None:
        self.template_tokenizer = template_tokenizer
        if template_tokenizer is not None:
            if template_tokenizer.chat_template is None:
                raise ValueError("the tokenizer to render prompts with has no chat template")
            from kdistill.lm.capture import prompt_rendering

            api = "completions"  # the prompt is text once rendered
            self.rendering: dict[str, Any] = {"api": api, **prompt_rendering(template_tokenizer)}
        else:
            self.rendering = {"api": "chat"} if api == "chat" else {"api": api, "kind": "plain"}
        self.api = api
        self.model = model
        self.sampling = sampling
        base_url = base_url.rstrip("/")
        self.identity: dict[str, Any] = {
            "kind": "openai",
            "base_url": public_url(base_url),
            "model": model,
            "api": api,
        }
        if template_tokenizer is not None:
            # our choice of template changes the answers, so it is part of every record id; the server's
            # own template (the default) is not, which keeps the ids of existing rows
            self.identity["rendering"] = self.rendering
        self._client = endpoint_client(
            base_url, api_key=api_key, timeout_s=timeout_s, send_org_headers=send_org_headers
        )

    async def complete(self, request: CompletionRequest) -> TeacherResponse:
        s = self.sampling
        params: dict[str, Any] = {
            "model": self.model,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
        }
        if request.n > 1:
            params["n"] = request.n
        if request.seed is not None:
            params["seed"] = request.seed
        if s.stop:
            params["stop"] = list(s.stop)
        if self.api == "chat":
            if s.top_logprobs is not None:
                params["logprobs"] = True
                params["top_logprobs"] = s.top_logprobs
            params["messages"] = request.messages or [{"role": "user", "content": request.prompt or ""}]
            path = "/chat/completions"
        else:
            if request.prompt is None and self.template_tokenizer is None:
                raise ValueError("the completions API needs a plain prompt, not messages")
            if s.top_logprobs is not None:
                params["logprobs"] = s.top_logprobs
            params["prompt"] = self.render(request) if self.template_tokenizer is not None else request.prompt
            path = "/completions"
        # The client's generic `post` (its documented way to reach any endpoint) sends exactly these
        # fields, with the client's auth, timeouts and error classes, and skips the typed-parameter
        # transform that costs ~1 ms of CPU per request, a limit at hundreds of requests per second.
        response = await self._client.post(path, body=params, cast_to=httpx2.Response)
        return parse_body(response.content, chat=self.api == "chat")

    def render(self, request: CompletionRequest) -> str:
        """The prompt text `template_tokenizer`'s chat template makes of the request, ready for the answer."""
        messages = request.messages or [{"role": "user", "content": request.prompt or ""}]
        return self.template_tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )

    async def aclose(self) -> None:
        await self._client.close()


def endpoint_client(
    base_url: str, *, api_key: str | None, timeout_s: float, send_org_headers: bool | None = None
) -> Any:
    """The async openai client for `base_url`: no retries of its own (the pipeline retries), the URL's
    query sent with every request (module docstring), account headers only where they belong."""
    import openai

    url, query = split_query(base_url.rstrip("/"))
    client = openai.AsyncOpenAI(
        base_url=url,
        api_key=api_key or NO_KEY,
        max_retries=0,
        timeout=timeout_s,
        default_query=query or None,
    )
    if not (is_openai_api(url) if send_org_headers is None else send_org_headers):
        # the client took these from the environment; it reads the attributes for every request
        client.organization = None
        client.project = None
    return client


def split_query(url: str) -> tuple[str, dict[str, str]]:
    """`url` without its query string (and fragment), and the query's parameters."""
    from urllib.parse import parse_qsl, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", "")), query


def v1_hint(url: str) -> str | None:
    """ "did you mean http://host:port/v1?" for a base URL whose path has no /v1 (servers answer 404 there)."""
    from urllib.parse import urlsplit

    base = public_url(url).rstrip("/")
    if "v1" in urlsplit(base).path.split("/"):
        return None
    return f"did you mean {base}/v1?"


def is_openai_api(url: str) -> bool:
    """Whether `url` is OpenAI's own API: https on api.openai.com or one of its regional hosts."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme == "https" and (host == "api.openai.com" or host.endswith(".api.openai.com"))


def public_url(url: str) -> str:
    """`url` without credentials or query string: what may be written into rows and record ids."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def parse_body(body: bytes, *, chat: bool) -> TeacherResponse:
    """Parse a 200 response body of /chat/completions (`chat`) or /completions into a TeacherResponse."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return TeacherResponse(problem="unparsable_body", detail=f"body is not JSON: {err}")
    if not isinstance(data, dict):
        return TeacherResponse(problem="unparsable_body", detail="body is not a JSON object")
    if "error" in data and "choices" not in data:
        return TeacherResponse(problem="unparsable_body", detail="error object in a 200 response")
    choices = data.get("choices")
    if not isinstance(choices, list):
        return TeacherResponse(problem="unparsable_body", detail="no 'choices' list")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    response = TeacherResponse(
        prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
        completion_tokens=_int_or_none(usage.get("completion_tokens")),
    )
    if not choices:
        response.problem, response.detail = "empty_choices", "the response has no choices"
        return response
    if all(isinstance(c, dict) and isinstance(c.get("index"), int) for c in choices):
        choices = sorted(choices, key=lambda c: c["index"])  # n > 1: servers may answer out of order
    response.choices = [_parse_choice(c, chat=chat) for c in choices]
    return response


def _parse_choice(raw: Any, *, chat: bool) -> Choice:
    if not isinstance(raw, dict):
        return Choice(text=None, finish_reason=None, problem="unparsable_body")
    if chat:
        message = raw.get("message")
        text = message.get("content") if isinstance(message, dict) else None
    else:
        text = raw.get("text")
    finish = raw.get("finish_reason")
    choice = Choice(
        text=text if isinstance(text, str) else None,
        finish_reason=finish if isinstance(finish, str) else None,
    )
    if raw.get("logprobs") is not None:
        try:
            choice.logprobs = (
                _chat_logprobs(raw["logprobs"]) if chat else _completion_logprobs(raw["logprobs"])
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            choice.problem = "unparsable_logprobs"
    return choice


def _chat_logprobs(raw: dict[str, Any]) -> list[dict[str, Any]] | None:
    content = raw.get("content")
    if content is None:
        return None
    return [
        {
            **_token(item),
            "top": [_token(t) for t in (item.get("top_logprobs") or [])],
        }
        for item in content
    ]


def _token(item: dict[str, Any]) -> dict[str, Any]:
    """{"token", "logprob"} of one token, plus its "bytes" when the server sent them."""
    out: dict[str, Any] = {"token": str(item["token"]), "logprob": float(item["logprob"])}
    if item.get("bytes") is not None:
        data = [int(b) for b in item["bytes"]]
        if any(not 0 <= b < 256 for b in data):
            raise ValueError("a token byte outside 0..255")
        out["bytes"] = data
    return out


def _completion_logprobs(raw: dict[str, Any]) -> list[dict[str, Any]] | None:
    if raw.get("content") is not None:
        return _chat_logprobs(raw)  # llama.cpp answers /completions with the chat form (token bytes included)
    tokens, logprobs = raw.get("tokens"), raw.get("token_logprobs")
    if tokens is None or logprobs is None:
        return None
    tops = raw.get("top_logprobs") or [None] * len(tokens)
    if not (len(tokens) == len(logprobs) == len(tops)):
        raise ValueError("logprob lists of different lengths")
    out = []
    for token, logprob, top in zip(tokens, logprobs, tops, strict=True):
        alternatives = sorted((top or {}).items(), key=lambda kv: -float(kv[1]))
        out.append(
            {
                "token": str(token),
                "logprob": float(logprob),
                "top": [{"token": str(t), "logprob": float(lp)} for t, lp in alternatives],
            }
        )
    return out


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
