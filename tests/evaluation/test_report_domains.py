"""The encoder report's off-domain table: recall@10 per domain, the mean, its share of the teacher's."""

from __future__ import annotations

from kdistill.evaluation.report import domain_rows, domain_table


def _metrics(missing: dict | None = None) -> dict:
    def row(name: str, role: str, a: float, b: float) -> dict:
        return {
            "name": name,
            "role": role,
            "domains": {"man_pages": {"recall@10": a}, "debian_packages": {"recall@10": b}},
            "off_domain_recall@10": (a + b) / 2,
        }

    return {
        "task": "encoder",
        "models": [row("teacher", "teacher", 0.9, 0.8), row("static", "distilled", 0.6, 0.5)],
        "evaluation": {
            "off_domain": {"man_pages": {"pairs": 40}, "debian_packages": {"pairs": 30}},
            "off_domain_missing": missing or {},
        },
    }


def test_domain_rows_give_each_domain_the_mean_and_its_share_of_the_teacher() -> None:
    columns, rows, note = domain_rows(_metrics({"package_metadata": "domain package_metadata: none here"}))
    assert columns == ["model", "man_pages (40 pairs)", "debian_packages (30 pairs)", "mean", "of teacher"]
    assert rows == [
        ["teacher", "0.900", "0.800", "0.850", "100.0 %"],
        ["static", "0.600", "0.500", "0.550", "64.7 %"],  # 0.55 / 0.85
    ]
    assert note == "domain package_metadata: none here"
    table = domain_table(_metrics())
    assert table is not None and table.row_count == 2 and table.caption is None


def test_runs_without_off_domain_sets_have_no_table() -> None:
    metrics = {"task": "encoder", "models": [{"name": "teacher", "role": "teacher"}], "evaluation": {}}
    assert domain_rows(metrics) == ([], [], "")
    assert domain_table(metrics) is None
