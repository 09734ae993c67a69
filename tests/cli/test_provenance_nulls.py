"""`kdistill provenance` never answers silently: no usable input is exit 2 with one line saying why, and
`detect --per-text [--reference]` tests each text, calibrated on human reference texts.

Inputs are written directly: text files, .jsonl files, and generation output directories made with
`GenerationStore` (no model samples anything). The tokenizer is the tiny BPE of tests/fixtures/tiny_lm.py,
saved to a directory and loaded back like a user's (no downloads).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from kdistill.cli import app
from kdistill.generate.store import GenerationStore
from kdistill.provenance.model_equality import (
    UntestableComparisonError,
    comparable_prompts,
    hamming_kernel_matrix,
    mmd2_unbiased,
    mmd_hamming_test,
)

KEY = "nulls-test-watermark-key-0123456789"
ENV = {"KD_NULLS_KEY": KEY}
WORDS = (
    "the a function returns value list of string object class method module import name error file "
    "is in to with for and or not if else while loop data type call argument default keyword"
).split()
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["provenance", *args], env=ENV)


def detect(source, tok, *extra: str):
    return invoke("detect", str(source), "--tokenizer", str(tok), "--key-env", "KD_NULLS_KEY", *extra)


def prose(seed: int, words: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), words))


def write_generations(out, completions: list[tuple[str, int, str]]):
    """A generation output directory holding (prompt, sample index, completion) rows."""
    rows = [
        {
            "record_id": f"r{n:04d}",
            "prompt_id": prompt,
            "sample_index": sample,
            "prompt": f"prompt {prompt}",
            "messages": None,
            "completion": text,
            "finish_reason": "stop",
            "teacher": "{}",
            "sampling": "{}",
            "prompt_tokens": None,
            "completion_tokens": None,
            "logprobs": None,
            "created": "2026-12-01T00:00:00.000Z",
        }
        for n, (prompt, sample, text) in enumerate(completions)
    ]
    store = GenerationStore(out)
    store.open()
    store.append_rows(rows)
    store.close()
    return out


def no_test(result, *phrases: str) -> None:
    """Exit 2, nothing on stdout (no z = 0, p = 1), one error line naming the reason."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "no test possible" in lines[0], result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from tests.fixtures.tiny_lm import train_tokenizer

    path = tmp_path_factory.mktemp("nulls-tok")
    train_tokenizer(512).save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------- detect


def test_detect_without_usable_text_exits_2_with_the_reason(tok, tmp_path):
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    no_test(detect(empty_dir, tok), "no .txt files")
    (tmp_path / "empty.txt").write_text("")
    no_test(detect(tmp_path / "empty.txt", tok), "the file is empty")
    (tmp_path / "blank.txt").write_text("  \n\t\n")
    no_test(detect(tmp_path / "blank.txt", tok), "the file is blank")
    gens = write_generations(tmp_path / "gens", [("1", 0, ""), ("2", 0, "   "), ("3", 0, "\n")])
    no_test(detect(gens, tok), "all 3 completions are blank")
    no_test(detect(write_generations(tmp_path / "none", []), tok), "holds no completions")
    (tmp_path / "texts.jsonl").write_text('{"text": " "}\n\n{"text": ""}\n')
    no_test(detect(tmp_path / "texts.jsonl", tok), "all 2 texts are blank")
    (tmp_path / "one.txt").write_text("a")  # one token: no (context, token) pair
    no_test(detect(tmp_path / "one.txt", tok), "no (context, token) pair to score", "the longest 1 token")
    no_test(detect(tmp_path / "one.txt", tok, "--per-text"), "none of its 1 texts is longer")


def test_radioactivity_without_usable_text_exits_2_before_loading_the_suspect(tok, tmp_path):
    (tmp_path / "blank.txt").write_text("\n\n")
    args = ["radioactivity", str(tok), "--tokenizer", str(tok), "--key-env", "KD_NULLS_KEY"]
    no_test(invoke(*args, "--texts", str(tmp_path / "blank.txt")), "the file is blank")
    (tmp_path / "short.txt").write_text("the value")
    # no model in `tok`: reaching the model would fail with "cannot load the model" instead
    no_test(
        invoke(*args, "--texts", str(tmp_path / "short.txt"), "--context-width", "40"),
        "has context_width = 40 token(s) within --max-length 512",
    )


def test_per_text_reports_each_text_as_the_library_does_and_names_the_unscored(tok, tmp_path):
    from transformers import AutoTokenizer

    from kdistill.provenance.watermark import detect_watermark

    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(3):
        (texts / f"t{i}.txt").write_text(prose(i, 80))
    (texts / "tiny.txt").write_text("a")
    result = detect(texts, tok, "--per-text", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert [row["text"] for row in got["per_text"]] == ["t0.txt", "t1.txt", "t2.txt"]
    assert got["unscored"] == ["tiny.txt"]
    assert "1 of 4 texts too short to score a pair were left out: tiny.txt" in result.stderr
    hf = AutoTokenizer.from_pretrained(tok)
    for i, row in enumerate(got["per_text"]):
        want = detect_watermark(hf(prose(i, 80), add_special_tokens=False)["input_ids"], KEY.encode())
        assert (row["report"]["statistic"], row["report"]["p_value"]) == (want.statistic, want.p_value)
    lines = detect(texts, tok, "--per-text").stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith("t0.txt: green-list watermark")
    assert "correlated across texts" in detect(texts, tok, "--per-text").stderr

    pooled = json.loads(detect(texts, tok, "--json").stdout)["watermark"]  # the default: one pooled test
    ids = [hf(prose(i, 80), add_special_tokens=False)["input_ids"] for i in range(3)]
    ids.append(hf("a", add_special_tokens=False)["input_ids"])
    assert pooled["statistic"] == detect_watermark(ids, KEY.encode()).statistic


def test_reference_adds_the_empirical_p_value_and_implies_per_text(tok, tmp_path):
    from transformers import AutoTokenizer

    from kdistill.provenance.calibration import calibrated_detection, reference_null

    suspects = tmp_path / "suspects.jsonl"
    suspects.write_text("".join(json.dumps({"text": prose(100 + i, 60)}) + "\n" for i in range(2)))
    reference = tmp_path / "human"
    reference.mkdir()
    for i in range(24):
        (reference / f"h{i:02d}.txt").write_text(prose(i, 60))
    (reference / "stub.txt").write_text("the a")  # too few pairs: left out and counted

    result = detect(suspects, tok, "--reference", str(reference), "--json")
    assert result.exit_code == 0, result.output
    assert "1 reference texts with fewer than 10 pairs left out" in result.stderr
    rows = json.loads(result.stdout)["per_text"]
    hf = AutoTokenizer.from_pretrained(tok)
    ref_ids = [hf(prose(i, 60), add_special_tokens=False)["input_ids"] for i in range(24)]
    null = reference_null([*ref_ids, hf("the a", add_special_tokens=False)["input_ids"]], KEY.encode())
    assert (null.n, null.skipped) == (24, 1)
    for i, row in enumerate(rows):
        assert row["text"] == f"line {i + 1}"
        ids = hf(prose(100 + i, 60), add_special_tokens=False)["input_ids"]
        want = calibrated_detection(ids, KEY.encode(), null)
        assert row["report"]["p_value"] == want.empirical_p_value
        assert row["report"]["analytic_p_value"] == want.analytic.p_value
        assert row["report"]["n_reference"] == 24 and row["report"]["reference_skipped"] == 1
        assert row["report"]["notes"] == []

    # a reference set too small for the level asked for is said so beside the result
    strict = detect(suspects, tok, "--reference", str(reference), "--alpha", "0.01")
    assert strict.exit_code == 0, strict.output
    assert strict.stdout.count("note: with 24 reference texts the smallest attainable p is 0.04") == 2
    empty = tmp_path / "no-refs"
    empty.mkdir()
    no_test(detect(suspects, tok, "--reference", str(empty)), "no .txt files")
    (empty / "stub.txt").write_text("the a")
    no_test(detect(suspects, tok, "--reference", str(empty)), "no reference text to calibrate with")


# ---------------------------------------------------------------------------------------------- compare


def test_by_prompt_statistic_is_degenerate_with_one_sample_per_prompt():
    """Why compare refuses: with one completion per prompt and source, the statistic is <= 0 and every
    within-prompt relabelling gives the same value, so p = 1 whatever the data."""
    rng = np.random.default_rng(0)
    x = [rng.integers(0, 3, 6).tolist() for _ in range(5)]
    y = [rng.integers(0, 3, 6).tolist() for _ in range(5)]
    prompts = list(range(5))
    kernel = hamming_kernel_matrix(x + y, 6, prompts + prompts)
    labels = np.array([True] * 5 + [False] * 5)
    swapped = labels.copy()
    swapped[[0, 5]] = swapped[[5, 0]]  # swap the labels of prompt 0's two completions
    observed = mmd2_unbiased(kernel, labels)
    assert observed <= 0 and mmd2_unbiased(kernel, swapped) == pytest.approx(observed)
    with pytest.raises(UntestableComparisonError, match="no prompt can be compared: of 5 prompts, 0 were"):
        mmd_hamming_test(x, y, length=6, prompts_x=prompts, prompts_y=prompts)
    with pytest.raises(
        UntestableComparisonError, match="of 7 prompts, 4 were answered by one source only and 3"
    ):
        mmd_hamming_test(x, y, length=6, prompts_x=[0, 1, 2, 3, 4], prompts_y=[0, 1, 2, 5, 6])
    assert isinstance(UntestableComparisonError("x"), ValueError)  # library callers catching ValueError


def test_radioactivity_library_refuses_texts_with_no_full_window():
    from kdistill.provenance.radioactivity import radioactivity_test
    from kdistill.provenance.watermark import NothingToScoreError

    # empty texts: the suspect is never called, so any object stands in for it
    with pytest.raises(NothingToScoreError, match="a binomial test of 0 items is no test"):
        radioactivity_test(object(), [[], []], KEY, n_wrong_keys=0)


def test_prompts_that_cannot_move_the_statistic_are_dropped_and_counted():
    rng = np.random.default_rng(1)
    x = [rng.integers(0, 3, 6).tolist() for _ in range(7)]
    y = [rng.integers(0, 3, 6).tolist() for _ in range(6)]
    px = ["a", "a", "b", "c", "c", "d", "e"]  # a: 2 + 2, b: 1 + 2, c: 2 + 0, d: 1 + 1, e: 1 + 0
    py = ["a", "a", "b", "b", "d", "f"]  # f: 0 + 1
    assert comparable_prompts(px, py) == {"a", "b"}
    report = mmd_hamming_test(x, y, length=6, prompts_x=px, prompts_y=py, permutations=99)
    keep_x, keep_y = [0, 1, 2], [0, 1, 2, 3]
    kept = mmd_hamming_test(
        [x[i] for i in keep_x],
        [y[i] for i in keep_y],
        length=6,
        prompts_x=[px[i] for i in keep_x],
        prompts_y=[py[i] for i in keep_y],
        permutations=99,
    )
    assert (report.statistic, report.p_value, report.scored) == (kept.statistic, kept.p_value, 7)
    d = report.details
    assert (d["prompts"], d["prompts_dropped"], d["samples_dropped_x"], d["samples_dropped_y"]) == (
        2,
        4,
        4,
        2,
    )
    with pytest.raises(UntestableComparisonError, match="on the comparable prompts \\(1\\), got 1 and 2"):
        mmd_hamming_test(x[2:4], y[2:4], length=6, prompts_x=["b", "c"], prompts_y=["b", "b"])


def test_compare_by_prompt_with_one_sample_per_prompt_exits_2_and_suggests_pooled(tok, tmp_path):
    one = [(str(i), 0, prose(i, 30)) for i in range(4)]
    other = [(str(i), 0, prose(50 + i, 30)) for i in range(4)]
    a, b = write_generations(tmp_path / "a", one), write_generations(tmp_path / "b", other)
    args = ["compare", str(a), str(b), "--tokenizer", str(tok), "--length", "8", "--permutations", "19"]
    result = invoke(*args)
    no_test(result, "no prompt can be compared", "4 have one completion from each source")
    assert "--pooled" in result.stderr and "at least 2 samples per prompt" in result.stderr
    pooled = invoke(*args, "--pooled", "--json")
    assert pooled.exit_code == 0, pooled.output
    assert json.loads(pooled.stdout)["model_equality"]["scored"] == 8


def test_compare_warns_how_many_prompts_were_dropped(tok, tmp_path):
    # prompts 0, 1: two samples from each source; prompts 2, 3: one from each (dropped)
    def rows(offset: int) -> list[tuple[str, int, str]]:
        return [
            (str(p), s, prose(offset + 10 * p + s, 30)) for p in range(4) for s in range(2 if p < 2 else 1)
        ]

    a, b = write_generations(tmp_path / "a", rows(0)), write_generations(tmp_path / "b", rows(500))
    args = ["compare", str(a), str(b), "--tokenizer", str(tok), "--length", "8", "--permutations", "19"]
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    assert "warning: 2 of 4 prompts dropped (2 + 2 samples)" in result.stderr
    report = json.loads(result.stdout)["model_equality"]
    assert (report["details"]["prompts"], report["scored"]) == (2, 8)
