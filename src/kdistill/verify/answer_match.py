"""Is the teacher's final answer the reference answer? Extraction, then comparison in one of five modes.

**Extraction** (`extract_answer`) looks at the answer's final text (after `</think>`, see `answer_text`). With
a `pattern` (a regex with exactly one group) it takes the group of the pattern's last match. Without, it
tries in order: the last `\\boxed{...}` (or `\\fbox{...}`, braces balanced, so `\\boxed{\\frac{1}{2}}` is
whole); the last line saying "Answer: ..." / "the (final) answer is ..."; the last number in the text.

**Modes** (`mode=`):

- `exact`: the extracted text equals `str(reference)` (surrounding whitespace aside).
- `normalized`: equal after `normalize`: lower case, whitespace collapsed, LaTeX wrappers `\\text{}`,
  `\\textbf{}`, `\\mathrm{}`, `\\mbox{}`, `\\operatorname{}` unwrapped, spacing (`\\,` `\\;` `\\!` `\\quad`
  `~`), `\\left`/`\\right`, `\\$` and degree signs removed, and surrounding `$ . , ; : ! ? * " ' `` ` ``
  stripped (so `**Paris**.` equals `paris`).
- `numeric`: `parse_number` of both, equal within `math.isclose(rel_tol, abs_tol)` (exact rationals that
  are equal always match). Numbers are integers, decimals, scientific notation (`1.5e3`), thousands
  separators without spaces (`1,234`, LaTeX `1{,}234`), fractions `3/4` and `\\frac{3}{4}`. A trailing
  percent sign is dropped: `50%` is 50, not 0.5, because datasets store the number the question asks for.
  When the extracted text is not a number as a whole, its last number is compared (`18 dollars` is 18), as
  GSM8K-style graders do.
- `set`: items (split at top-level commas, semicolons and the word "and"; one enclosing pair of brackets
  dropped) equal as sets: every answer item equals some reference item and vice versa, each pair compared
  as numbers when both parse, else normalized. Repeats do not count (`1, 1, 2` equals `{1, 2}`).
- `list`: the same items, same count, equal in order.

A comma between digits followed by exactly three digits is a thousands separator, never an item separator:
write sets of such numbers with a space (`100, 200`).

`auto` (the default) picks: `set` when the reference is a list, tuple or set; `numeric` when the
reference is a number (an int, a float or a string that parses as one); for a string reference with a
top-level comma, `list` when it is wrapped in `()` or `[]` (a point, a tuple, a vector: order matters)
and `set` otherwise; `normalized` for everything else.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Literal, get_args

from kdistill.verify.answer_text import final_text
from kdistill.verify.verdict import Verdict, shorten

Mode = Literal["auto", "exact", "normalized", "numeric", "set", "list"]
MODES: tuple[str, ...] = get_args(Mode)
Number = Fraction | float
Reference = str | int | float | list | tuple | set | frozenset

# -- extraction

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_LINE = re.compile(
    r"\b(?:final\s+)?answer\s*(?:is\b\s*:?|:)[ \t]*(?P<answer>[^\n]*?)[ \t]*$", re.IGNORECASE | re.MULTILINE
)
# a number inside text: thousands groups, decimals, a/b and \frac{a}{b}; a minus only where it is not a
# hyphen (not after a word character or a closing bracket: "pages 3-5" ends with 5, not -5)
_NUMBER_IN_TEXT = re.compile(
    r"(?:(?<![\w)\]}])[-\u2212])?"
    r"(?:\\[dt]?frac\{\d+\}\{\d+\}|(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|\.\d+)"
)


def extract_answer(answer: str, pattern: str | None = None) -> str | None:
    """The final answer in `answer`'s final text, or None (see the module docstring for the order)."""
    text = final_text(answer)
    if pattern is not None:
        matches = list(compile_pattern(pattern).finditer(text))
        return matches[-1].group(1).strip() if matches else None
    for find in (_last_boxed, _last_answer_line, _last_number):
        found = find(text)
        if found is not None and found.strip():
            return found.strip()
    return None


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """`pattern` compiled; a clear error unless it is a valid regex with exactly one group."""
    try:
        compiled = re.compile(pattern, re.MULTILINE)
    except re.error as err:
        raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {err}") from None
    if compiled.groups != 1:
        raise ValueError(
            f"pattern {pattern!r} must have exactly one group (the answer), it has {compiled.groups}"
        )
    return compiled


def _last_boxed(text: str) -> str | None:
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    closing = _matching_braces(text)  # one pass: adversarial "\boxed{\boxed{..." stays linear
    for start in reversed(starts):
        end = closing.get(start - 1)
        if end is not None:
            return text[start:end]
    return None


def _matching_braces(text: str) -> dict[int, int]:
    """Index of each `{` -> index of its `}` (unclosed ones are absent)."""
    stack: list[int] = []
    closing: dict[int, int] = {}
    for i, char in enumerate(text):
        if char == "{":
            stack.append(i)
        elif char == "}" and stack:
            closing[stack.pop()] = i
    return closing


def _last_answer_line(text: str) -> str | None:
    found = [m.group("answer") for m in _ANSWER_LINE.finditer(text) if _strip_noise(m.group("answer"))]
    return found[-1] if found else None


def _last_number(text: str) -> str | None:
    found = _NUMBER_IN_TEXT.findall(text)
    return found[-1] if found else None


# -- normalisation and numbers

_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_NOISE = re.compile(
    r"\\[,;:! ]|\\q?quad(?![a-z])|\\left(?![a-z])|\\right(?![a-z])|\\\$|\^\s*\{?\\circ\}?|°|~"
)
_SURROUNDING = " \t\n\r\f\v$.,;:!?*\"'`"


def normalize(text: str) -> str:
    """The comparable form of a short answer (see the module docstring); idempotent."""
    previous = None
    while text != previous:  # to a fixed point: removing one wrapper can expose another
        previous = text
        text = text.lower()
        text = _WRAPPERS.sub(r"\1", text)
        text = _NOISE.sub("", text)
        text = " ".join(text.split())
        text = text.strip(_SURROUNDING)
    return text


def _strip_noise(text: str) -> str:
    """`normalize` without the lower-casing and without stripping a leading "." (".5" is a number)."""
    previous = None
    while text != previous:
        previous = text
        text = _NOISE.sub("", _WRAPPERS.sub(r"\1", text))
        text = " ".join(text.split()).strip(" $*\"'`").rstrip(".,;:!?")
    return text


_PLAIN_NUMBER = re.compile(
    r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:e[+-]?\d+)?|[+-]?\.\d+(?:e[+-]?\d+)?"
)
_SLASH_FRACTION = re.compile(r"(?P<sign>[+-]?)(?P<num>[^/]+)/(?P<den>[^/]+)")
_LATEX_FRACTION = re.compile(r"(?P<sign>[+-]?)\\[dt]?frac\s*\{(?P<num>[^{}]+)\}\s*\{(?P<den>[^{}]+)\}")


def parse_number(text: str) -> Number | None:
    """The number `text` spells (see the module docstring), exact as a Fraction where it can be; else None."""
    text = _strip_noise(text.replace("{,}", ",").replace("\u2212", "-")).replace(" ", "")
    text = text.removesuffix("\\%").removesuffix("%").lower()
    for fraction in (_LATEX_FRACTION, _SLASH_FRACTION):
        m = fraction.fullmatch(text)
        if m:
            value = _ratio(_plain_number(m.group("num")), _plain_number(m.group("den")))
            return -value if value is not None and m.group("sign") == "-" else value
    return _plain_number(text)


def _ratio(num: Number | None, den: Number | None) -> Number | None:
    if num is None or den is None or den == 0:
        return None
    if isinstance(num, Fraction) and isinstance(den, Fraction):
        return num / den
    try:
        value = float(num) / float(den)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _plain_number(text: str) -> Number | None:
    if not _PLAIN_NUMBER.fullmatch(text):
        return None
    text = text.replace(",", "")
    if "e" in text:  # Fraction("1e999999999") would build a billion-digit integer
        value = float(text)
        return value if math.isfinite(value) else None
    try:
        return Fraction(text)
    except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
        return None


def numbers_equal(a: Number, b: Number, *, rel_tol: float, abs_tol: float) -> bool:
    """|a - b| <= max(rel_tol * max(|a|, |b|), abs_tol), as math.isclose; in exact rational arithmetic
    when both are exact (so 10**30 + 1 differs from 10**30 at zero tolerance). Symmetric in a and b."""
    if a == b:
        return True
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return abs(a - b) <= max(Fraction(rel_tol) * max(abs(a), abs(b)), Fraction(abs_tol))
    try:
        return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=abs_tol)
    except OverflowError:  # a rational beyond float range against a float: only equality counts
        return False


def _number_in(text: str) -> Number | None:
    """`text` as a number, else its last number."""
    value = parse_number(text)
    if value is None:
        last = _last_number(text)
        value = parse_number(last) if last is not None else None
    return value


# -- items of sets and lists

_OPEN_TO_CLOSE = {"(": ")", "[": "]", "{": "}"}
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)
_THOUSANDS_AFTER_COMMA = re.compile(r"\d{3}(?!\d)")


def split_items(text: str) -> list[str]:
    """Items of a written set or list: split at top-level commas, semicolons and " and "."""
    return _split_top_level(_unwrap(text.strip()), separators=",;", at_and=True)


def _split_top_level(text: str, *, separators: str, at_and: bool) -> list[str]:
    """`text` cut at `separators` (and " and ") outside brackets; a thousands comma (`1,234`) is no cut."""
    items, depth, start, i = [], 0, 0, 0
    while i < len(text):
        char = text[i]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(0, depth - 1)
        elif depth == 0 and char in separators and not _is_thousands_comma(text, i):
            items.append(text[start:i])
            start = i + 1
        elif depth == 0 and at_and and (m := _AND.match(text, i)):
            items.append(text[start:i])
            start = i = m.end()
            continue
        i += 1
    items.append(text[start:])
    return [item.strip() for item in items if _strip_noise(item)]


def _is_thousands_comma(text: str, i: int) -> bool:
    return (
        text[i] == ","
        and i > 0
        and text[i - 1].isdigit()
        and _THOUSANDS_AFTER_COMMA.match(text, i + 1) is not None
    )


def _unwrap(text: str) -> str:
    """`text` without one pair of brackets around all of it: (..), [..], {..} or \\{..\\}."""
    if text.startswith("\\{") and text.endswith("\\}"):
        return text[2:-2]
    if len(text) >= 2 and _OPEN_TO_CLOSE.get(text[0]) == text[-1]:
        depth = 0
        for i, char in enumerate(text):
            depth += char in "([{"
            depth -= char in ")]}"
            if depth == 0 and i < len(text) - 1:
                return text  # "(1)+(2)": the first bracket closes early
        return text[1:-1]
    return text


def _has_top_level_comma(text: str) -> bool:
    return len(_split_top_level(_unwrap(text.strip()), separators=",", at_and=False)) > 1


# -- the verifier


def answer_match(
    answer: str,
    reference: Reference,
    *,
    mode: Mode = "auto",
    pattern: str | None = None,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
) -> Verdict:
    """`match` when the extracted answer equals `reference` in `mode`; `mismatch`; `no_answer`."""
    _check_options(mode, rel_tol, abs_tol, reference)
    extracted = extract_answer(answer, pattern)
    if extracted is None:
        tried = f"pattern {pattern!r}" if pattern else "\\boxed{}, an 'Answer:' line, a number"
        return Verdict(False, "no_answer", None, f"no answer found (tried {tried})")
    chosen = choose_mode(reference) if mode == "auto" else mode
    compare = _COMPARE[chosen]
    equal, shown = compare(extracted, reference, rel_tol, abs_tol)
    tolerance = f", rel_tol={rel_tol:g}, abs_tol={abs_tol:g}" if chosen in ("numeric", "set", "list") else ""
    detail = f"{chosen}{tolerance}: expected {shown}, got {shorten(extracted, 100)!r}"
    return Verdict(equal, "match" if equal else "mismatch", extracted, detail)


def choose_mode(reference: Reference) -> str:
    """The mode `auto` uses for `reference` (see the module docstring)."""
    if isinstance(reference, list | tuple | set | frozenset):
        return "set"
    if isinstance(reference, int | float) or parse_number(reference) is not None:
        return "numeric"
    if _has_top_level_comma(reference):
        stripped = reference.strip()
        ordered = stripped[:1] in ("(", "[") and _unwrap(stripped) != stripped
        return "list" if ordered else "set"
    return "normalized"


def _check_options(mode: str, rel_tol: float, abs_tol: float, reference: object) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    for name, value in (("rel_tol", rel_tol), ("abs_tol", abs_tol)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if isinstance(reference, bool) or not isinstance(
        reference, str | int | float | list | tuple | set | frozenset
    ):
        raise ValueError(f"reference must be a str, int, float or list, got {type(reference).__name__}")
    if isinstance(reference, list | tuple | set | frozenset) and mode in ("exact", "normalized", "numeric"):
        raise ValueError(
            f"mode {mode!r} compares one value, but the reference is a list; use 'set' or 'list'"
        )


def _reference_number(reference: str | int | float) -> Number:
    value = parse_number(reference) if isinstance(reference, str) else _exact(reference)
    if value is None:
        raise ValueError(f"mode 'numeric': the reference {reference!r} is not a number")
    return value


def _exact(value: int | float) -> Number:
    return Fraction(value) if isinstance(value, int) else value


def _compare_exact(extracted: str, reference: Reference, *_: float) -> tuple[bool, str]:
    return extracted.strip() == str(reference).strip(), repr(str(reference).strip())


def _compare_normalized(extracted: str, reference: Reference, *_: float) -> tuple[bool, str]:
    expected = normalize(str(reference))
    return normalize(extracted) == expected, repr(expected)


def _compare_numeric(
    extracted: str, reference: Reference, rel_tol: float, abs_tol: float
) -> tuple[bool, str]:
    expected = _reference_number(reference)  # type: ignore[arg-type]
    got = _number_in(extracted)
    equal = got is not None and numbers_equal(got, expected, rel_tol=rel_tol, abs_tol=abs_tol)
    return equal, str(expected)


def _item_equal(answer_item: str, reference_item: str | int | float, rel_tol: float, abs_tol: float) -> bool:
    got = parse_number(answer_item)
    expected = parse_number(reference_item) if isinstance(reference_item, str) else _exact(reference_item)
    if got is not None and expected is not None:
        return numbers_equal(got, expected, rel_tol=rel_tol, abs_tol=abs_tol)
    return normalize(answer_item) == normalize(str(reference_item))


def _reference_items(reference: Reference) -> list:
    if isinstance(reference, list | tuple):
        return list(reference)
    if isinstance(reference, set | frozenset):
        return sorted(reference, key=str)
    if isinstance(reference, str):
        return split_items(reference)
    return [reference]


def _compare_set(extracted: str, reference: Reference, rel_tol: float, abs_tol: float) -> tuple[bool, str]:
    got, expected = split_items(extracted), _reference_items(reference)
    equal = all(any(_item_equal(g, e, rel_tol, abs_tol) for e in expected) for g in got) and all(
        any(_item_equal(g, e, rel_tol, abs_tol) for g in got) for e in expected
    )
    return equal and bool(got), _show_items(expected)


def _compare_list(extracted: str, reference: Reference, rel_tol: float, abs_tol: float) -> tuple[bool, str]:
    got, expected = split_items(extracted), _reference_items(reference)
    equal = len(got) == len(expected) and all(
        _item_equal(g, e, rel_tol, abs_tol) for g, e in zip(got, expected, strict=True)
    )
    return equal, _show_items(expected)


def _show_items(items: list) -> str:
    return shorten("[" + ", ".join(repr(i) for i in items) + "]", 120)


_COMPARE: dict[str, Callable[[str, Reference, float, float], tuple[bool, str]]] = {
    "exact": _compare_exact,
    "normalized": _compare_normalized,
    "numeric": _compare_numeric,
    "set": _compare_set,
    "list": _compare_list,
}
