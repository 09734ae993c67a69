"""drop_duplicates: exact and near duplicates go, distinct texts stay, checked against exact Jaccard."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from kdistill.curate import drop_duplicates

VOCABULARY = (
    "the a model answer returns value list number string function loop index error result first second "
    "prime sum product square root tree node graph edge path cost table row column key sort merge split "
    "count token batch layer weight bias input output train test check case when then else while return"
).split()


def text(seed: int, length: int = 60) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCABULARY) for _ in range(length))


def change_words(source: str, positions: list[int]) -> str:
    words = source.split()
    for p in positions:
        words[p] = "zebra" + str(p)  # not in the vocabulary
    return " ".join(words)


def row(record_id: str, completion: str, prompt_id: str = "p") -> dict:
    return {"record_id": record_id, "prompt_id": prompt_id, "sample_index": 0, "completion": completion}


def shingle_jaccard(a: str, b: str, size: int = 5) -> float:
    """Exact Jaccard of character shingles, written independently of the module under test."""

    def shingles(t: str) -> set[str]:
        t = re.sub(r"\s+", " ", t.lower()).strip()
        return {t[i : i + size] for i in range(max(1, len(t) - size + 1))}

    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def ids(rows: list[dict]) -> list[str]:
    return [r["record_id"] for r in rows]


def test_one_word_changed_in_sixty_is_a_near_duplicate_and_unrelated_texts_stay():
    original, other = text(1), text(2)
    edited = change_words(original, [30])
    assert 0.85 <= shingle_jaccard(original, edited) < 1.0  # the premise: near, not exact
    assert shingle_jaccard(original, other) < 0.5
    result = drop_duplicates([row("a", original), row("b", other), row("c", edited)], threshold=0.85)
    assert ids(result.rows) == ["a", "b"]
    [match] = result.duplicates
    assert (match.removed_id, match.matched_id, match.kind) == ("c", "a", "near")
    assert match.similarity == pytest.approx(shingle_jaccard(original, edited))


def test_exact_duplicates_after_case_and_whitespace_normalisation():
    base = text(3)
    shouted = "  " + base.upper().replace(" ", " \n\t ") + "\n"
    result = drop_duplicates([row("a", base), row("b", shouted), row("c", text(4))], near=False)
    assert ids(result.rows) == ["a", "c"]
    assert result.counts.reasons == {"exact": 1, "near": 0}
    assert result.duplicates[0].kind == "exact" and result.duplicates[0].matched_id == "a"


def test_counts_and_first_of_each_cluster_kept_in_input_order():
    a, b = text(10), text(11)
    rows = [
        row("b0", b),
        row("a0", a),
        row("b-exact", b.upper()),
        row("a-near", change_words(a, [5])),
        row("c0", text(12)),
        row("a-exact", a),
        row("b-near", change_words(b, [40])),
    ]
    result = drop_duplicates(rows)
    assert ids(result.rows) == ["b0", "a0", "c0"]
    counts = result.counts
    assert (counts.name, counts.before, counts.after, counts.removed) == ("dedup", 7, 3, 4)
    assert counts.reasons == {"exact": 2, "near": 2}
    assert counts.to_dict() == {
        "name": "dedup",
        "before": 7,
        "after": 3,
        "removed": 4,
        "reasons": {"exact": 2, "near": 2},
    }
    assert {(d.removed_id, d.matched_id) for d in result.duplicates} == {
        ("b-exact", "b0"),
        ("a-exact", "a0"),
        ("a-near", "a0"),
        ("b-near", "b0"),
    }


def test_without_near_pass_only_exact_copies_go():
    original = text(5)
    rows = [row("a", original), row("b", change_words(original, [0])), row("c", original)]
    assert ids(drop_duplicates(rows, near=False).rows) == ["a", "b"]


def test_kept_set_has_no_pair_above_a_high_exact_jaccard():
    bases = [text(100 + i, length=random.Random(i).randint(30, 80)) for i in range(12)]
    rng = random.Random(7)
    rows = []
    for i, base in enumerate(bases):
        rows.append(row(f"{i}", base))
        for v in range(3):  # variants with 1 to 3 words changed, some of them exact copies
            n_changes = rng.randint(0, 3)
            positions = rng.sample(range(len(base.split())), n_changes)
            rows.append(row(f"{i}.{v}", change_words(base, positions)))
    rows = rng.sample(rows, len(rows))
    result = drop_duplicates(rows, threshold=0.85)
    kept = [r["completion"] for r in result.rows]
    worst = max(shingle_jaccard(x, y) for x, y in itertools.combinations(kept, 2))
    assert worst < 0.95
    assert len(result.rows) >= len(bases)  # no distinct base lost (their Jaccard is far below 0.85)
    by_id = {r["record_id"]: r["completion"] for r in rows}
    for d in result.duplicates:  # every removal is justified by the exact similarity
        assert shingle_jaccard(by_id[d.removed_id], by_id[d.matched_id]) >= 0.85
    assert len(result.rows) + len(result.duplicates) == len(rows)


def test_scope_across_prompts_by_default_and_within_prompt_on_request():
    answer = text(20)
    rows = [row("a", answer, "p1"), row("b", answer, "p2"), row("c", change_words(answer, [9]), "p2")]
    assert ids(drop_duplicates(rows).rows) == ["a"]
    within = drop_duplicates(rows, within_prompt=True)
    assert ids(within.rows) == ["a", "b"]
    assert within.duplicates[0].matched_id == "b"


def test_several_fields_are_compared_together():
    answer = text(21)
    rows = [row("a", answer) | {"prompt": "add two numbers"}, row("b", answer) | {"prompt": text(22)}]
    assert ids(drop_duplicates(rows, field=("prompt", "completion")).rows) == ["a", "b"]


@pytest.mark.parametrize(
    ("rows", "kwargs", "message"),
    [
        ([{"record_id": "x"}], {}, "row 0: field 'completion' must be a string, got None"),
        ([row("x", "t")], {"field": "answer"}, "row 0: field 'answer' must be a string"),
        ([row("x", "t")], {"threshold": 0.0}, "threshold must be in (0, 1], got 0.0"),
        ([row("x", "t")], {"shingle": 0}, "shingle must be a positive int (characters), got 0"),
        ([row("x", "t")], {"num_perm": 1}, "num_perm must be an int >= 2, got 1"),
    ],
)
def test_bad_input_is_a_clear_error(rows, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        drop_duplicates(rows, **kwargs)
