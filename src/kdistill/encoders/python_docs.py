"""Offline distillation text and retrieval pairs for encoders, from Python's own documentation.

Two sources ship with every CPython, so nothing is downloaded: the reference manual's topics
(`pydoc_data.topics`) and the docstrings of the standard library's source files, read with `ast` (no module
is imported, so nothing runs). Both are cut into paragraphs (blank-line separated, whitespace collapsed);
short ones and doctest-only ones are dropped, duplicates keep their first occurrence.

Evaluation pairs come from *held-out* paragraphs: the first sentence is the query, the rest of the paragraph
the document it should retrieve. A held-out paragraph never appears in the training text, not even as a
query: the split is decided per paragraph, by a seeded shuffle.
"""

from __future__ import annotations

import ast
import functools
import random
import re
import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "QueryDocumentPairs",
    "held_out_pairs",
    "python_docs_paragraphs",
    "split_paragraphs",
    "split_query",
]

# Folders of the standard library whose docstrings are not documentation (tests, demos, the IDE, vendored).
_SKIP_DIRS = frozenset(
    {
        "test",
        "tests",
        "idlelib",
        "tkinter",
        "turtledemo",
        "lib2to3",
        "site-packages",
        "ensurepip",
        "pydoc_data",
    }
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(`\"'])")


def split_paragraphs(text: str, *, min_chars: int = 150) -> list[str]:
    """Blank-line separated paragraphs of `text`, whitespace collapsed, at least `min_chars` long, not
    starting with a doctest prompt."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        paragraph = " ".join(block.split())
        if len(paragraph) >= min_chars and not paragraph.startswith(">>>"):
            out.append(paragraph)
    return out


@functools.cache
def _stdlib_docstrings(root: Path) -> tuple[str, ...]:
    """Every docstring of the stdlib's documentation modules (parsed once per process: ~5 s)."""
    return tuple(_read_docstrings(root))


def _read_docstrings(root: Path) -> Iterable[str]:
    for path in sorted(root.rglob("*.py")):
        if _SKIP_DIRS & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a file this interpreter cannot parse has no docstrings for us
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    yield doc


def python_docs_paragraphs(
    *, min_chars: int = 150, docstrings: bool = True, limit: int | None = None
) -> list[str]:
    """Paragraphs of the reference manual's topics, then (optionally) of the stdlib docstrings, deduplicated,
    in a fixed order (topics by name, files by path, nodes in ast.walk order); the first `limit` only
    (the stdlib is not even parsed when the topics give enough)."""
    from pydoc_data.topics import topics

    def texts() -> Iterator[str]:
        yield from (topics[name] for name in sorted(topics))
        if docstrings:
            yield from _stdlib_docstrings(Path(sysconfig.get_paths()["stdlib"]))

    seen: dict[str, None] = {}
    for text in texts():
        for paragraph in split_paragraphs(text, min_chars=min_chars):
            seen.setdefault(paragraph, None)
            if limit is not None and len(seen) >= limit:
                return list(seen)
    return list(seen)


def split_query(
    paragraph: str, *, min_query_chars: int = 20, min_document_chars: int = 60
) -> tuple[str, str] | None:
    """(first sentence, rest of the paragraph), or None when either part is too short to be a fair pair."""
    parts = _SENTENCE_END.split(paragraph, maxsplit=1)
    if len(parts) != 2:
        return None
    query, document = parts[0].strip(), parts[1].strip()
    if len(query) < min_query_chars or len(document) < min_document_chars:
        return None
    return query, document


@dataclass(frozen=True)
class QueryDocumentPairs:
    """Held-out retrieval pairs (queries[i] should retrieve documents[i]) and the paragraphs left to train on."""

    queries: list[str]
    documents: list[str]
    train_paragraphs: list[str]


def _occurs_elsewhere(query: str, paragraphs: Sequence[str], index: int) -> bool:
    return any(query in p for i, p in enumerate(paragraphs) if i != index)


def held_out_pairs(paragraphs: Sequence[str], count: int, *, seed: int = 0) -> QueryDocumentPairs:
    """Hold out `count` paragraphs that split into a (query, document) pair whose query appears in no other
    paragraph, chosen by a seeded shuffle; every other paragraph (in the original order) is training text."""
    if count < 1:
        raise ValueError(f"held-out pair count must be >= 1, got {count}")
    order = list(range(len(paragraphs)))
    random.Random(seed).shuffle(order)
    chosen: dict[int, tuple[str, str]] = {}
    for index in order:
        pair = split_query(paragraphs[index])
        if pair is None or _occurs_elsewhere(pair[0], paragraphs, index):
            continue  # a query that also opens another text would have two right answers, one of them trained on
        chosen[index] = pair
        if len(chosen) == count:
            break
    if len(chosen) < count:
        raise ValueError(
            f"only {len(chosen)} of {len(paragraphs)} paragraphs split into a query (first sentence) and a "
            f"document; asked to hold out {count}"
        )
    held = sorted(chosen)
    return QueryDocumentPairs(
        queries=[chosen[i][0] for i in held],
        documents=[chosen[i][1] for i in held],
        train_paragraphs=[p for i, p in enumerate(paragraphs) if i not in chosen],
    )
