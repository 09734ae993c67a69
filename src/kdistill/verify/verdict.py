"""What every verifier returns: a pass/fail decision with a stable reason code and a readable detail.

`reason` is a short snake_case code (`match`, `tests_failed`, `timeout`, ...) that scripts and the verdict
store can count and filter on; `detail` is one human sentence, cut to `DETAIL_CHARS` so that a verdict
stays small however much the answer or the program printed.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

#: longest `detail` kept (characters): a verdict is a record, not a log
DETAIL_CHARS = 300

_REASON = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class Verdict:
    """`ok`: the answer is accepted; `extracted`: the part of the answer that was judged (if any)."""

    ok: bool
    reason: str
    extracted: str | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        if not _REASON.fullmatch(self.reason):
            raise ValueError(f"Verdict.reason must be a snake_case code, got {self.reason!r}")
        object.__setattr__(self, "detail", shorten(self.detail))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        return cls(**data)


def shorten(text: str, limit: int = DETAIL_CHARS) -> str:
    """`text` on one line, cut to `limit` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
