"""Off-domain retrieval pairs: dpkg status files, man pages and package metadata, parsed from files the test writes."""

from __future__ import annotations

import gzip
from email.message import Message
from pathlib import Path

import pytest

from kdistill.encoders.domains import (
    DomainUnavailable,
    debian_package_pairs,
    domain_pairs,
    man_page_pairs,
    man_page_text,
    package_metadata_pairs,
)

LONG = "It does one thing and does it well, on every machine it was ever installed on, for years."

STATUS = f"""Package: alpha
Status: install ok installed
Description: compress files quickly
 Alpha compresses files. {LONG}
 .
 A second paragraph after a blank line.
Homepage: https://example.org

Package: beta
Description: shared description
 Beta and gamma share the short description. {LONG}

Package: gamma
Description: shared description
 Gamma's own long text is different. {LONG}

Package: delta
Depends: alpha
Description: an editor for plain text
 Delta edits text. {LONG}
"""


def test_dpkg_status_gives_short_to_long_description_pairs_and_drops_ambiguous_queries(
    tmp_path: Path,
) -> None:
    status = tmp_path / "status"
    status.write_text(STATUS)
    pairs = debian_package_pairs(status)
    assert pairs.queries == [
        "compress files quickly",
        "an editor for plain text",
    ]  # the shared query is dropped
    assert pairs.documents[0] == f"Alpha compresses files. {LONG} A second paragraph after a blank line."
    assert pairs.documents[1] == f"Delta edits text. {LONG}"
    assert pairs.name == "debian_packages" and len(pairs) == 2


def test_a_missing_source_is_reported_not_silently_empty(tmp_path: Path) -> None:
    with pytest.raises(DomainUnavailable, match="does not exist"):
        debian_package_pairs(tmp_path / "no-status")
    (tmp_path / "man1").mkdir()
    with pytest.raises(DomainUnavailable, match="man_pages: no query -> document pairs"):
        man_page_pairs(tmp_path)
    with pytest.raises(ValueError, match="unknown domain 'wiki'; known: debian_packages, man_pages"):
        domain_pairs("wiki")


MAN = r""".\" a comment that must not show
.TH FROB 1 "2026" "frob 1.0"
.SH NAME
frob \- turn widgets into \fBgadgets\fR
.SH SYNOPSIS
.B frob
[\fIoptions\fR]
.SH DESCRIPTION
.B frob
reads widgets from standard input and writes gadgets.
It never changes the input\(em it only reads it.
.PP
See
.BR widget (7)
for the widget format, \s-1ASCII\s0 only.
.SH "SEE ALSO"
.BR gadget (5)
"""


def test_man_markup_is_stripped_into_sections() -> None:
    sections = man_page_text(MAN)
    assert sections["NAME"] == "frob - turn widgets into gadgets"
    assert sections["DESCRIPTION"] == (
        "frob reads widgets from standard input and writes gadgets. It never changes the input- it only reads it."
        "\n\nSee widget(7) for the widget format, ASCII only."
    )
    assert sections["SEE ALSO"] == "gadget(5)"
    assert "comment" not in " ".join(sections.values())


def test_man_pages_pair_name_with_description_and_skip_links_and_translations(tmp_path: Path) -> None:
    (tmp_path / "man1").mkdir()
    (tmp_path / "man1" / "frob.1.gz").write_bytes(gzip.compress(MAN.encode()))
    (tmp_path / "man1" / "frobnicate.1.gz").write_bytes(gzip.compress(b".so man1/frob.1\n"))
    (tmp_path / "de" / "man1").mkdir(parents=True)
    (tmp_path / "de" / "man1" / "frob.1.gz").write_bytes(gzip.compress(MAN.replace("turn", "drehe").encode()))
    pairs = man_page_pairs(tmp_path)
    assert pairs.queries == ["turn widgets into gadgets"]
    assert pairs.documents[0].startswith("frob reads widgets") and pairs.documents[0].endswith("ASCII only.")


class _Dist:
    def __init__(self, summary: str, body: str) -> None:
        self.metadata = Message()
        self.metadata["Summary"] = summary
        self.metadata.set_payload(body)


def test_package_metadata_strips_markup_from_the_readme() -> None:
    readme = (
        "# widgets\n\n[![build](https://ci/badge.svg)](https://ci)\n\n"
        "Widgets makes **gadgets** out of [plain widgets](https://example.org/docs), quickly and safely.\n\n"
        "```python\nimport widgets\n```\n\nIt has no dependencies at all and runs on any Python 3 release.\n"
    )
    pairs = package_metadata_pairs([_Dist("Make gadgets from widgets", readme), _Dist("UNKNOWN", readme)])
    assert pairs.queries == ["Make gadgets from widgets"]
    assert pairs.documents == [
        "Widgets makes gadgets out of plain widgets, quickly and safely. "
        "It has no dependencies at all and runs on any Python 3 release."
    ]


def test_limit_samples_the_same_pairs_in_their_original_order(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text(
        "\n\n".join(
            f"Package: p{i}\nDescription: package number {i} here\n Package {i} does thing {i}. {LONG}"
            for i in range(30)
        )
    )
    full = debian_package_pairs(status)
    some = debian_package_pairs(status, limit=10, seed=3)
    assert len(full) == 30 and len(some) == 10
    assert some == debian_package_pairs(status, limit=10, seed=3)
    positions = [full.queries.index(q) for q in some.queries]
    assert positions == sorted(positions)
    assert [full.documents[p] for p in positions] == some.documents
    assert debian_package_pairs(status, limit=10, seed=4).queries != some.queries
