"""Prompts built offline from Python's own reference documentation (`pydoc_data.topics`, ships with CPython).

The language recipes need a few hundred realistic prompts without a download. Each prompt quotes one prose
paragraph of a reference topic and asks for an explanation, a summary or an example, so a teacher's answers
carry real knowledge that a student can be measured on. The file shipped in `recipes/` was written by
`python -m kdistill.generate.builtin_prompts`; regenerating it with another Python version changes its content.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

TASKS = (
    "Explain the following passage from the Python reference in two or three plain sentences.",
    "Summarise this excerpt of the Python documentation in one sentence.",
    "Give a short Python code example that illustrates this passage from the Python reference.",
    "What is the key rule stated in this passage of the Python reference? Answer briefly.",
)


def prose_paragraphs(text: str, min_chars: int = 200, max_chars: int = 700) -> list[str]:
    """Paragraphs of running text: no headings, grammar rules or code blocks."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.splitlines()
        if not lines or any(line.startswith("   ") for line in lines):  # indented = grammar/code
            continue
        if any(set(line.strip()) <= set("*=-^") for line in lines):  # heading underline
            continue
        para = " ".join(line.strip() for line in lines)
        if min_chars <= len(para) <= max_chars and "::=" not in para:
            out.append(para)
    return out


def python_docs_prompts(per_topic: int = 6, seed: int = 0) -> list[dict[str, str]]:
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    prompts = []
    for topic in sorted(topics):
        paragraphs = prose_paragraphs(topics[topic])
        for i, para in enumerate(rng.sample(paragraphs, min(per_topic, len(paragraphs)))):
            task = TASKS[(len(prompts) + i) % len(TASKS)]
            prompts.append({"id": f"{topic}-{i}", "prompt": f"{task}\n\n{para}"})
    return prompts


def main() -> None:
    out = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).parents[1] / "recipes" / "python_docs_prompts.jsonl"
    )
    rows = python_docs_prompts()
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} prompts to {out}")


if __name__ == "__main__":
    main()
