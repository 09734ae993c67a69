"""Before a run: is the server there, and does it serve the model asked for? One `GET /models`, seconds.

Without it a server that is not listening costs the whole retry policy of every request (minutes)
before the run says so, and without naming the URL; and llama.cpp answers whatever `model` a request
names, so a mistyped name would be written into every row as the teacher's identity. One `GET
{base_url}/models` (a short timeout, one quick retry) settles both:

- no connection (refused, unknown host, no answer in time): `ServerCheck.unreachable` says why
  ("cannot reach http://127.0.0.1:9/v1: connection refused").
- a list of models (`{"data": [{"id": ...}, ...]}`): `ServerCheck.models`; a name not in it is refused
  by the caller (`model_problem`), naming what the server does serve.
- anything else (404 from a server without /models, 401, a body of another shape): a `note`, and the
  run goes on without the model check. A 404 at a base URL without /v1 whose `/v1/models` answers is
  the common slip of leaving /v1 out: `wrong_path` then says "did you mean http://host:port/v1?".
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass
from typing import Any

from kdistill.generate.teachers.openai_endpoint import endpoint_client, public_url, v1_hint

#: seconds one GET /models may take: a server that is up answers it at once
CHECK_TIMEOUT_S = 5.0
CHECK_ATTEMPTS = 2  # a server restarting may refuse once
RETRY_DELAY_S = 0.5


@dataclass(frozen=True)
class ServerCheck:
    """What `GET {url}/models` found out about one server."""

    url: str  # the base URL as it may be written down (no credentials, no query)
    unreachable: str | None = None  # why a run cannot use it: "cannot reach URL: connection refused"
    wrong_path: str | None = None  # it answers, but at another path: "... did you mean URL/v1?"
    models: tuple[str, ...] | None = None  # the models it lists (None: it listed none we could read)
    note: str | None = None  # why the model name was not checked


def model_problem(check: ServerCheck, model: str) -> str | None:
    """Why `model` is the wrong name for this server (it lists others), or None."""
    if check.models is None or model in check.models:
        return None
    listed = ", ".join(repr(m) for m in check.models[:20]) or "none"
    more = f" (and {len(check.models) - 20} more)" if len(check.models) > 20 else ""
    return f"{check.url} does not serve the model {model!r}; it lists {listed}{more}"


async def check_server(
    base_url: str,
    *,
    api_key: str | None,
    send_org_headers: bool | None = None,
    timeout_s: float = CHECK_TIMEOUT_S,
    attempts: int = CHECK_ATTEMPTS,
) -> ServerCheck:
    """`GET {base_url}/models` (module docstring); never raises for what the server does."""
    url = public_url(base_url).rstrip("/")
    client = endpoint_client(
        base_url, api_key=api_key, timeout_s=timeout_s, send_org_headers=send_org_headers
    )
    try:
        status, body, why = await _get_models(client, attempts, timeout_s)
        if why is not None:
            return ServerCheck(url, unreachable=f"cannot reach {url}: {why}")
        if status == 404 and v1_hint(url) is not None:
            v1 = url + "/v1"
            v1_client = endpoint_client(
                v1, api_key=api_key, timeout_s=timeout_s, send_org_headers=send_org_headers
            )
            try:
                v1_status, _, _ = await _get_models(v1_client, 1, timeout_s)
            finally:
                await v1_client.close()
            if v1_status == 200:
                return ServerCheck(
                    url, wrong_path=f"{url}/models: HTTP 404, but {v1}/models answers: did you mean {v1}?"
                )
        models = _model_ids(body) if status == 200 else None
        if models is None:
            said = f"HTTP {status}" if status != 200 else "not a list of models"
            hint = f"; {v1_hint(url)}" if status == 404 and v1_hint(url) else ""
            return ServerCheck(url, note=f"{url}/models: {said}, so the model name is not checked{hint}")
        return ServerCheck(url, models=models)
    finally:
        await client.close()


async def _get_models(client: Any, attempts: int, timeout_s: float) -> tuple[int | None, bytes, str | None]:
    """(HTTP status, body, None) of GET /models, or (None, b"", why no answer came) after `attempts`."""
    import httpx2
    import openai

    why = "no attempt made"
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(RETRY_DELAY_S)
        try:
            response = await client.get("/models", cast_to=httpx2.Response)
            return response.status_code, response.content, None
        except openai.APIStatusError as err:
            return err.status_code, b"", None
        except openai.APITimeoutError:
            why = f"no answer within {timeout_s:g} s"
        except openai.APIConnectionError as err:
            why = connection_problem(err)
    return None, b"", why


def connection_problem(err: BaseException) -> str:
    """Why a connection failed, in words: "connection refused", "unknown host", or the OS's own words."""
    cause: BaseException | None = err
    innermost = err
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return f"unknown host ({cause.strerror})"
        innermost = cause
        cause = cause.__cause__ or cause.__context__
    if isinstance(innermost, OSError) and innermost.strerror:
        return innermost.strerror.lower()
    return str(innermost) or type(innermost).__name__


def _model_ids(body: bytes) -> tuple[str, ...] | None:
    """The ids of an OpenAI model list `{"data": [{"id": ...}, ...]}`; None for any other body."""
    try:
        data = json.loads(body).get("data")
    except (ValueError, AttributeError):
        return None
    if not isinstance(data, list) or not all(
        isinstance(m, dict) and isinstance(m.get("id"), str) for m in data
    ):
        return None
    return tuple(m["id"] for m in data)


__all__ = ["ServerCheck", "check_server", "connection_problem", "model_problem"]
