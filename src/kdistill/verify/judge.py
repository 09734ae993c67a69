"""Does a judge model grade the teacher's answer at least `threshold`? An LLM-as-a-judge verifier for answers
that no rule can check (explanations, summaries, open questions).

The judge is any OpenAI-compatible chat endpoint, asked with `temperature=0` through the official `openai`
client. The prompt (`judge_messages`) gives it the question, the reference answer if there is one, the
answer and the rubric, and asks it to reason briefly and end with a line `Score: <0-10>`. The score is on
a 0 to 10 scale (decimals allowed; a trailing "/10" is fine); the last such line of the reply counts, and
`ok` is `score >= threshold`. A reply without a score in [0, 10] is `judge_unparsable` (not a pass).

Transport failures are not verdicts: the client retries connection errors, timeouts, 408, 409, 429 and 5xx
up to `max_retries` times with backoff (honouring Retry-After), then `JudgeUnavailable` is raised, so that
nothing is recorded and the answer can be judged again later.

The API key is read from the environment variable named by `api_key_env` ("EMPTY" when it is not set:
local servers accept anything) and sent only in the Authorization header. It never appears in a Verdict or
an error message: any text quoted from the judge is scrubbed of it, in case a server echoes it. The
OpenAI-Organization/Project headers the client takes from the environment go only to OpenAI's own API
(as for teachers, `openai_endpoint.is_openai_api`).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from kdistill.generate.teachers.openai_endpoint import is_openai_api, public_url
from kdistill.verify.verdict import Verdict, shorten

SCALE_MAX = 10.0
NO_KEY = "EMPTY"

SYSTEM_PROMPT = (
    "You are a strict grader. Grade the answer to the question against the rubric. Think briefly, then end "
    f"your reply with a line of the form 'Score: <number from 0 to {SCALE_MAX:g}>' and nothing after it."
)

# a line "Score: 7", markdown decoration (**, _, #, >) and a trailing "/10" allowed
_SCORE = re.compile(
    r"^[\s*_#>-]*(?:final\s+)?score[\s*_]*[:=][\s*_]*"
    r"(?P<score>[+-]?\d+(?:\.\d+)?)\s*(?:/\s*10(?:\.0+)?)?[\s*_.]*$",
    re.IGNORECASE | re.MULTILINE,
)


class JudgeUnavailable(RuntimeError):
    """The judge could not be reached or kept failing: no verdict, try again later."""


def judge_messages(answer: str, *, question: str, rubric: str, reference: str | None = None) -> list[dict]:
    """The chat messages sent to the judge (public so that tests and users can see the exact prompt)."""
    parts = [f"## Question\n{question}"]
    if reference is not None:
        parts.append(f"## Reference answer\n{reference}")
    parts += [f"## Answer to grade\n{answer}", f"## Rubric\n{rubric}"]
    parts.append(f"End with 'Score: <0-{SCALE_MAX:g}>'.")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(parts)}]


def parse_score(reply: str) -> float | None:
    """The score of the last `Score: N` line of `reply`, if it is within [0, 10]; else None."""
    matches = _SCORE.findall(reply)
    if not matches:
        return None
    score = float(matches[-1])
    return score if math.isfinite(score) and 0.0 <= score <= SCALE_MAX else None


def judge_client(
    base_url: str, *, api_key_env: str = "OPENAI_API_KEY", max_retries: int = 3, timeout_s: float = 60.0
) -> Any:
    """An `openai.OpenAI` client for the judge, built once per verifier and reused for every answer."""
    import openai

    client = openai.OpenAI(
        base_url=base_url.rstrip("/"),
        api_key=os.environ.get(api_key_env) or NO_KEY,
        max_retries=max_retries,
        timeout=timeout_s,
    )
    if not is_openai_api(base_url):  # the user's OpenAI account names are no business of other servers
        client.organization = None
        client.project = None
    return client


def judge(
    answer: str,
    *,
    question: str,
    rubric: str,
    threshold: float,
    base_url: str,
    model: str,
    api_key_env: str = "OPENAI_API_KEY",
    reference: str | None = None,
    max_retries: int = 3,
    timeout_s: float = 60.0,
    client: Any = None,
) -> Verdict:
    """`judge_pass` when the judge's score is at least `threshold` (0-10), else `judge_fail`;
    `judge_unparsable` when the reply has no score."""
    if not (isinstance(threshold, int | float) and 0.0 <= threshold <= SCALE_MAX):
        raise ValueError(f"judge: threshold must be a number from 0 to {SCALE_MAX:g}, got {threshold!r}")
    secret = os.environ.get(api_key_env) or ""
    messages = judge_messages(answer, question=question, rubric=rubric, reference=reference)
    if client is not None:
        reply = _ask(client, model, messages, base_url, secret)
    else:  # a client of its own for this one call (the registry builds one per verifier instead)
        with judge_client(
            base_url, api_key_env=api_key_env, max_retries=max_retries, timeout_s=timeout_s
        ) as own:
            reply = _ask(own, model, messages, base_url, secret)
    score = parse_score(reply)
    if score is None:
        excerpt = _scrub(shorten(reply[-200:], 200), secret)
        return Verdict(
            False, "judge_unparsable", None, f"no 'Score: <0-10>' line in the judge's reply: {excerpt!r}"
        )
    passed = score >= threshold
    relation = ">=" if passed else "<"
    return Verdict(
        passed,
        "judge_pass" if passed else "judge_fail",
        None,
        f"score {score:g} {relation} threshold {threshold:g}",
    )


def _ask(client: Any, model: str, messages: list[dict], base_url: str, secret: str) -> str:
    import openai

    try:
        completion = client.chat.completions.create(model=model, messages=messages, temperature=0)
    except openai.APIError as err:
        status = getattr(err, "status_code", None)
        what = f"HTTP {status}" if status is not None else type(err).__name__
        message = f"judge at {public_url(base_url)} failed ({what}) after its retries"
        raise JudgeUnavailable(_scrub(message, secret)) from None  # the chained error holds the request
    choices = getattr(completion, "choices", None) or []
    content = choices[0].message.content if choices and choices[0].message is not None else None
    return content or ""


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret and secret != NO_KEY else text
