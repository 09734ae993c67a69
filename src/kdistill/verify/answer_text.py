"""The part of a teacher's answer that a verifier looks at: the text after its reasoning, and its fenced
code blocks.

Reasoning models (DeepSeek-R1 and its kin) think inside `<think>...</think>` before they answer, and the
thinking is full of drafts: a verifier must judge the answer that follows it, not a number or a code block
tried along the way. An answer whose `<think>` never closes ran out of tokens while thinking and has no final
answer at all, so its final text is empty.
"""

from __future__ import annotations

import re

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# ``` or ~~~ fences of three or more, an optional info string (its first word is the language), and the
# body up to a closing fence of the same kind on its own line
_FENCE = re.compile(
    r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n(?P<body>.*?)^[ \t]*(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


def final_text(answer: str) -> str:
    """The answer after its last `</think>`; "" when a `<think>` is never closed; else the whole answer."""
    if THINK_CLOSE in answer:
        return answer.rsplit(THINK_CLOSE, 1)[1]
    if THINK_OPEN in answer:
        return ""
    return answer


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced code block, in order; language is lower case, "" when untagged."""
    blocks = []
    for m in _FENCE.finditer(text):
        info = m.group("info").strip().split()
        blocks.append((info[0].lower() if info else "", m.group("body")))
    return blocks


def last_block(text: str, languages: frozenset[str]) -> str | None:
    """Body of the last block tagged with one of `languages`, else of the last untagged block, else None."""
    blocks = fenced_blocks(text)
    tagged = [body for lang, body in blocks if lang in languages]
    if tagged:
        return tagged[-1]
    untagged = [body for lang, body in blocks if lang == ""]
    return untagged[-1] if untagged else None
