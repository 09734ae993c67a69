"""`--shard i/N`: which part of a job one of N machines does, decided without talking to the others.

N jobs of a cluster scheduler (a Slurm array, a Kubernetes indexed job) each get their index and the
count, and nothing else: the rule must be a pure function of what every job sees alike.

- **Records** (`Shard.holds(record_id)`): record `r` belongs to shard `int(sha256(r)[:16 hex]) mod N`.
  sha256, not Python's `hash()`, which is salted per process. A record's shard depends on its id only,
  so a prompt file that grows later keeps every old record in its shard (`kdistill generate`).
- **Ordered work** (`Shard.positions(n)`): position j of a list every job builds alike belongs to shard
  `j mod N` (round robin). `kdistill capture` shards its fixed, length-sorted batches this way, so that
  every batch is run whole by one job, the shards get about equal token counts, and the tensors are
  those of the unsharded capture bit for bit (see `kdistill.lm.capture`).

`Shard.split(rank, world)` is the part of one process of a torchrun group inside a shard job: position
j goes to rank r of shard i when j mod (N * world) == i + N * r, i.e. the shard's own positions dealt
round robin to its ranks.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class ShardSpecError(ValueError):
    """A `--shard` / `shard:` value that is not `i/N` with 0 <= i < N; the message names the flag."""


def shard_of(record_id: str, count: int) -> int:
    """The shard (0 .. count-1) of a record id: the first 64 bits of its sha256, mod count."""
    if count < 1:
        raise ValueError(f"shard count must be at least 1, got {count}")
    return int(hashlib.sha256(str(record_id).encode()).hexdigest()[:16], 16) % count


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based: the shards of 4 are 0/4 .. 3/4)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ShardSpecError(f"shard: expected 0 <= i < N in 'i/N', got {self.index}/{self.count}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def name(self) -> str:
        """A path-safe name: `shard-0-of-4`."""
        return f"shard-{self.index}-of-{self.count}"

    def holds(self, record_id: str) -> bool:
        """Whether the record with this id is this shard's (by the hash of the id)."""
        return shard_of(record_id, self.count) == self.index

    def select(self, items: Iterable[T], record_id: Callable[[T], str]) -> list[T]:
        """The items whose `record_id(item)` this shard holds, in their order."""
        return [item for item in items if self.holds(record_id(item))]

    def positions(self, n: int) -> range:
        """This shard's positions of an ordered list of `n` items (round robin: j mod count == index)."""
        return range(self.index, n, self.count)

    def split(self, rank: int, world: int) -> Shard:
        """The part of rank `rank` of `world` processes working on this shard's positions."""
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} of world size {world}: expected 0 <= rank < world")
        return Shard(self.index + self.count * rank, self.count * world)


WHOLE = Shard(0, 1)
"""All of it: what an unsharded job does."""


def parse_shard(text: str | Shard | None, *, flag: str = "--shard") -> Shard | None:
    """'i/N' -> Shard(i, N); None -> None. Errors name `flag` (the option or config field it came from)."""
    if text is None or isinstance(text, Shard):
        return text
    match = _SPEC.match(str(text))
    if match is None:
        raise ShardSpecError(f"{flag}: expected 'i/N' (e.g. 0/4: the first of 4 parts), got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ShardSpecError(
            f"{flag}: expected 0 <= i < N in 'i/N' (shards are numbered from 0), got {text!r}"
        )
    return Shard(index, count)


__all__ = ["WHOLE", "Shard", "ShardSpecError", "parse_shard", "shard_of"]
