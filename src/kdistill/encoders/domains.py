"""Retrieval pairs from text *unlike* the distillation text: does a student generalise beyond its corpus?

A student distilled on Python's docs is scored on those docs' held-out paragraphs (in-domain). These
sources give query -> document pairs of other kinds of text, read offline from what a machine already has:

    debian_packages   short description -> long description of every installed Debian package
                      (/var/lib/dpkg/status: plain English product descriptions)
    man_pages         NAME line ("list directory contents") -> DESCRIPTION section of the English manual
                      pages under /usr/share/man (groff markup stripped)
    package_metadata  Summary -> README (long description) of every installed Python distribution
                      (importlib.metadata; Markdown/reST markup stripped); every Python has some

A source that finds nothing on this machine (no dpkg, no man pages) raises `DomainUnavailable`: the
recipe reports it as missing instead of silently scoring fewer domains. Pairs are de-duplicated (a query or
document seen twice is dropped everywhere: it would have two right answers) and, above `limit`, sampled
with a seeded shuffle, so a domain is the same list on the same machine.
"""

from __future__ import annotations

import gzip
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DOMAINS",
    "DomainPairs",
    "DomainUnavailable",
    "debian_package_pairs",
    "domain_pairs",
    "man_page_pairs",
    "man_page_text",
    "package_metadata_pairs",
]

DPKG_STATUS = Path("/var/lib/dpkg/status")
MAN_ROOT = Path("/usr/share/man")
MAX_DOCUMENT_CHARS = 1500  # encoders read 128-512 tokens; more text only costs time


class DomainUnavailable(LookupError):
    """The source of a domain's pairs is missing or empty on this machine."""


@dataclass(frozen=True)
class DomainPairs:
    """queries[i] should retrieve documents[i]; `source` says where they were read."""

    name: str
    queries: list[str]
    documents: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.queries)


def _clean(text: str) -> str:
    return " ".join(text.split())


def _unique_pairs(pairs: Iterable[tuple[str, str]], min_query: int = 8, min_document: int = 60) -> list:
    """Pairs whose query and document are long enough and each occur once (dropped everywhere otherwise)."""
    kept = [(_clean(q), _clean(d)[:MAX_DOCUMENT_CHARS]) for q, d in pairs]
    kept = [(q, d) for q, d in kept if len(q) >= min_query and len(d) >= min_document and q != d]
    queries, documents = Counter(q.lower() for q, _ in kept), Counter(d for _, d in kept)
    return [(q, d) for q, d in kept if queries[q.lower()] == 1 and documents[d] == 1]


def _sample(
    name: str, pairs: list[tuple[str, str]], limit: int | None, seed: int, source: str
) -> DomainPairs:
    if not pairs:
        raise DomainUnavailable(f"domain {name}: no query -> document pairs found in {source}")
    if limit is not None and len(pairs) > limit:
        order = list(range(len(pairs)))
        random.Random(seed).shuffle(order)
        pairs = [pairs[i] for i in sorted(order[:limit])]
    return DomainPairs(name, [q for q, _ in pairs], [d for _, d in pairs], source)


# --- Debian packages ---------------------------------------------------------------------------------


def _dpkg_descriptions(text: str) -> Iterator[tuple[str, str]]:
    """(short, long) descriptions of a dpkg status file: "Description: short" then " long" lines, " ." blank."""
    for stanza in re.split(r"\n\s*\n", text):
        lines = stanza.splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("Description:"):
                continue
            body = []
            for cont in lines[i + 1 :]:
                if not cont.startswith((" ", "\t")):
                    break
                body.append("" if cont.strip() == "." else cont.strip())
            yield line[len("Description:") :].strip(), " ".join(b for b in body if b)
            break


def debian_package_pairs(
    status: str | Path = DPKG_STATUS, *, limit: int | None = None, seed: int = 0
) -> DomainPairs:
    path = Path(status)
    if not path.is_file():
        raise DomainUnavailable(f"domain debian_packages: {path} does not exist (not a Debian-based system)")
    pairs = _unique_pairs(_dpkg_descriptions(path.read_text(encoding="utf-8", errors="replace")))
    return _sample("debian_packages", pairs, limit, seed, str(path))


# --- manual pages ------------------------------------------------------------------------------------

_FONT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)|\\s[-+]?\d+")  # font and size changes
_NAMED = {"aq": "'", "lq": '"', "rq": '"', "oq": "'", "cq": "'", "em": "-", "en": "-", "hy": "-", "bu": "*"}
_ESCAPE = re.compile(r"\\(\((..)|\[([^\]]*)\]|\*(\(..|\[[^\]]*\]|.)|[-e&~ |^0c]|.)")
_ALTERNATING = {"BR", "RB", "BI", "IB", "IR", "RI"}
_TEXT_MACROS = {"B", "I", "SM", "SB", "Nm", "Nd", "Ar", "Fl", "Cm", "Pa", "Xr", "Em", "Sy", "Dq", "Ql"}
_BREAKS = {"PP", "LP", "P", "sp", "TP", "IP", "HP", "RS", "RE", "br", "Pp", "Bl", "El", "It", "Bd", "Ed"}


def _unescape(text: str) -> str:
    def named(m: re.Match[str]) -> str:
        code = m.group(2) or m.group(3)
        if code is not None:
            return _NAMED.get(code, "")
        whole = m.group(1)
        if whole.startswith("*"):
            return ""
        return {"-": "-", "e": "\\", " ": " ", "~": " "}.get(whole, "")

    return _ESCAPE.sub(named, _FONT.sub("", text))


def _macro_args(rest: str) -> list[str]:
    return [a[1:-1] if len(a) >= 2 and a[0] == a[-1] == '"' else a for a in re.findall(r'"[^"]*"|\S+', rest)]


def man_page_text(source: str) -> dict[str, str]:
    """Section title (upper case) -> plain text of a man page in man or mdoc markup; paragraphs are
    separated by blank lines."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in source.splitlines():
        if raw.startswith(('.\\"', "'\\\"", ".\\#")):
            continue
        if raw.startswith((".", "'")):
            macro, _, rest = raw[1:].strip().partition(" ")
            if macro in ("SH", "Sh"):
                current = sections.setdefault(_unescape(" ".join(_macro_args(rest))).upper(), [])
            elif current is None:
                continue
            elif macro in _BREAKS:
                current.append("")
            elif macro in _ALTERNATING:
                current.append("".join(_unescape(a) for a in _macro_args(rest)))
            elif macro in _TEXT_MACROS:
                current.append(" ".join(_unescape(a) for a in _macro_args(rest)))
            continue  # any other request sets layout, not text
        if current is not None:
            current.append(_unescape(raw))
    out = {}
    for title, lines in sections.items():
        paragraphs = [_clean(p) for p in "\n".join(lines).split("\n\n")]
        out[title] = "\n\n".join(p for p in paragraphs if p)
    return out


def _man_pair(path: Path) -> tuple[str, str] | None:
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    text = data.decode("utf-8", errors="replace")
    if text.lstrip().startswith(".so "):
        return None  # a link to another page
    sections = man_page_text(text)
    name, description = sections.get("NAME", ""), sections.get("DESCRIPTION", "")
    what = re.split(r"\s+-+\s+", name, maxsplit=1)  # "ls - list directory contents"
    if len(what) != 2 or not description:
        return None
    return what[1], description.replace("\n\n", " ")


def man_page_pairs(
    root: str | Path = MAN_ROOT,
    *,
    sections: Iterable[str] = ("1", "5", "7", "8"),
    limit: int | None = None,
    seed: int = 0,
) -> DomainPairs:
    """NAME -> DESCRIPTION of the English pages in `root`/man<section> (not the translated ones)."""
    base = Path(root)
    files = sorted(
        f for s in sections for f in (base / f"man{s}").glob("*") if f.is_file() and not f.is_symlink()
    )
    pairs = _unique_pairs(p for p in map(_man_pair, files) if p is not None)
    return _sample("man_pages", pairs, limit, seed, str(base))


# --- Python distributions ----------------------------------------------------------------------------

_MARKUP = [
    (re.compile(r"```.*?```|~~~.*?~~~", re.S), " "),  # fenced code
    (re.compile(r"<!--.*?-->|<[^>]+>", re.S), " "),  # HTML comments and tags
    (re.compile(r"!\[[^\]]*\]\([^)]*\)"), " "),  # images (badges)
    (re.compile(r"\[([^\]]*)\]\([^)]*\)"), r"\1"),  # links -> their text
    (re.compile(r"^\s*\.\. .*$", re.M), " "),  # reST directives
    (re.compile(r"^[#=*\-~^`]{3,}\s*$", re.M), " "),  # reST underlines, rules
    (re.compile(r"^#+\s*", re.M), ""),  # Markdown headings
    (re.compile(r"[*_`|]{1,3}"), ""),  # emphasis, literals, table bars
    (re.compile(r"https?://\S+"), " "),
]


def _plain(markup: str) -> str:
    for pattern, repl in _MARKUP:
        markup = pattern.sub(repl, markup)
    paragraphs = [_clean(p) for p in re.split(r"\n\s*\n", markup)]
    return " ".join(p for p in paragraphs if len(p) > 40)  # drops titles, badge rows, stray lines


def _distribution_descriptions(distributions: Iterable) -> Iterator[tuple[str, str]]:
    for dist in distributions:
        meta = dist.metadata
        summary = meta.get("Summary") or ""
        body = meta.get_payload() if hasattr(meta, "get_payload") else ""
        body = body or meta.get("Description") or ""
        if summary and body and summary.strip().upper() != "UNKNOWN":
            yield summary, _plain(body)


def package_metadata_pairs(
    distributions: Iterable | None = None, *, limit: int | None = None, seed: int = 0
) -> DomainPairs:
    """Summary -> long description of installed Python distributions (or the `distributions` given)."""
    from importlib import metadata

    dists = list(metadata.distributions() if distributions is None else distributions)
    return _sample(
        "package_metadata",
        _unique_pairs(_distribution_descriptions(dists)),
        limit,
        seed,
        "importlib.metadata",
    )


DOMAINS: dict[str, Callable[..., DomainPairs]] = {
    "debian_packages": debian_package_pairs,
    "man_pages": man_page_pairs,
    "package_metadata": package_metadata_pairs,
}


def domain_pairs(name: str, *, limit: int | None = None, seed: int = 0) -> DomainPairs:
    """The pairs of a registered domain; `DomainUnavailable` when this machine lacks its source."""
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}; known: {', '.join(sorted(DOMAINS))}")
    return DOMAINS[name](limit=limit, seed=seed)
