"""The encoder run scores every model on off-domain retrieval pairs too, and says which domains were missing."""

from __future__ import annotations

import json

import pytest
import torch

from kdistill.config import ConfigError, load_config, parse_config
from kdistill.encoders import domains
from kdistill.encoders.domains import DomainUnavailable, debian_package_pairs
from kdistill.encoders.evaluate import recall_at_k
from kdistill.encoders.models import load_encoder
from kdistill.encoders.recipe import run_encoder
from kdistill.encoders.save import load_saved_encoder

WORDS = "alpha beta gamma delta lambda class module import yield return value object loop list".split()


def _status(path, n: int = 24) -> None:
    """A dpkg status file of `n` packages whose descriptions are different mixes of the tiny vocabulary."""
    stanzas = []
    for i in range(n):
        words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(12)]
        stanzas.append(
            f"Package: p{i}\nDescription: the {words[0]} {words[1]} package {i}\n "
            f"It handles {' '.join(words)} in the {words[2]} way, number {i}, with every {words[3]} kept."
        )
    path.write_text("\n\n".join(stanzas))


def test_off_domain_recall_is_scored_for_every_model_and_missing_domains_are_named(
    tmp_path, teacher_dir, monkeypatch
) -> None:
    status = tmp_path / "status"
    _status(status)

    def unavailable(**_: object) -> None:
        raise DomainUnavailable("domain man_pages: no manual pages here (test)")

    monkeypatch.setitem(
        domains.DOMAINS,
        "debian_packages",
        lambda limit, seed: debian_package_pairs(status, limit=limit, seed=seed),
    )
    monkeypatch.setitem(domains.DOMAINS, "man_pages", unavailable)
    cfg = load_config(
        "minilm",
        [
            f"teacher.model={teacher_dir}",
            "teacher.max_seq_length=32",
            "students.1.dims=16",
            "students.0.train.steps=2",
            "students.1.train.steps=3",
            "corpus.limit=150",
            "corpus.held_out_pairs=20",
            "evaluation.spearman_texts=12",
            "evaluation.throughput_texts=16",
            "evaluation.batch_size=16",
            "evaluation.off_domain=[debian_packages, man_pages]",
            "evaluation.off_domain_pairs=20",
            "threads=1",
        ],
    )
    result = run_encoder(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["evaluation"]["off_domain"] == {"debian_packages": {"pairs": 20, "source": str(status)}}
    assert metrics["evaluation"]["off_domain_missing"] == {
        "man_pages": "domain man_pages: no manual pages here (test)"
    }
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["data"]["off_domain_pairs"] == {"debian_packages": 20}

    # the recorded numbers are the recall of each model on the same 20 sampled pairs, recomputed here
    pairs = debian_package_pairs(status, limit=20, seed=cfg.corpus.split_seed)
    rows = {m["name"]: m for m in metrics["models"]}
    teacher = load_encoder(str(teacher_dir), max_seq_length=32)
    for name, model in (
        ("teacher", teacher),
        ("static", load_saved_encoder(result.run_dir / "students" / "static")),
    ):
        with torch.inference_mode():
            expected = recall_at_k(model.encode(pairs.queries), model.encode(pairs.documents), ks=(1, 10))
        assert rows[name]["domains"]["debian_packages"] == pytest.approx(expected, abs=1e-9)
    for row in metrics["models"]:
        assert set(row["domains"]) == {"debian_packages"}
        assert row["off_domain_recall@10"] == row["domains"]["debian_packages"]["recall@10"]
    static = rows["static"]
    assert static["off_domain_kept"] == pytest.approx(
        static["off_domain_recall@10"] / rows["teacher"]["off_domain_recall@10"]
    )
    change = static["off_domain_recall@10"] - rows["static (before)"]["off_domain_recall@10"]
    assert metrics["summary"]["static: off-domain recall@10 change from its start"] == pytest.approx(change)
    assert "off-domain" in metrics["summary"]["headline"]
    report = (result.run_dir / "report.html").read_text()
    assert "Off-domain retrieval (recall@10)" in report and "debian_packages (20 pairs)" in report
    assert "not scored: domain man_pages: no manual pages here (test)" in report  # the missing one is named


def test_off_domain_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"evaluation\.off_domain\.0: Input should be"):
        parse_config({"task": "encoder", "evaluation": {"off_domain": ["wikipedia"]}})
    with pytest.raises(ConfigError, match="off_domain lists a domain twice"):
        parse_config({"task": "encoder", "evaluation": {"off_domain": ["man_pages", "man_pages"]}})
