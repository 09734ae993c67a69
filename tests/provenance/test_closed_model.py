"""The closed-model test: a suspect behind an OpenAI-compatible API is prompted, its answers pooled and tested.

The suspect is the loopback `ScriptedServer` (tests/fixtures/openai_server.py) answering with texts sampled
once per module from the tiny random Llama of tests/fixtures/tiny_lm.py: with the green-list watermark
(the "radioactive" suspect: a model that says the key's green tokens more often than chance) or without
(the clean suspect), decoded to text, so the suspect's answers are re-tokenised as real API answers are.
Calibration under the null for a fixed key uses the random bigram language of test_calibration.py (texts
that share many pairs, where one key's fixed green bits matter).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import binom
from tests.fixtures.openai_server import Fault, ScriptedServer
from typer.testing import CliRunner

from kdistill.cli import app
from kdistill.generate.store import load_generations_table
from kdistill.generate.teachers.openai_endpoint import NO_KEY
from kdistill.provenance.calibration import reference_null
from kdistill.provenance.closed_model import (
    ClosedModelReport,
    closed_model_test,
    query_suspect,
    reference_pool,
    tokens_needed,
)
from kdistill.provenance.watermark import (
    GreenListWatermark,
    NothingToScoreError,
    detect_watermark,
    is_green,
    key_fingerprint,
)

KEY = "closed-model-test-key-0123456789"
KEY_ENV = "KD_CM_WATERMARK_KEY"
API_KEY = "sk-suspect-api-key-0123456789abcdef"
API_KEY_ENV = "KD_CM_SUSPECT_API_KEY"
ENV = {KEY_ENV: KEY, API_KEY_ENV: API_KEY}
PROMPTS, SAMPLES, TOKENS = 12, 2, 40
runner = CliRunner()


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """The tiny model's tokenizer, and its sampled answers: watermarked, clean, and clean reference texts."""
    from tests.fixtures.tiny_lm import build_tiny_lm
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

    root = tmp_path_factory.mktemp("closed-model")
    path = build_tiny_lm(root / "model")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    watermark = GreenListWatermark(KEY, gamma=0.25, delta=2.0, context_width=1)

    def sample(n: int, marked: bool, seed: int) -> list[str]:
        torch.manual_seed(seed)
        start = torch.full((n, 1), tok.bos_token_id)
        with torch.no_grad():
            out = model.generate(
                start,
                attention_mask=torch.ones_like(start),
                do_sample=True,
                max_new_tokens=TOKENS,
                min_new_tokens=TOKENS,
                logits_processor=LogitsProcessorList([watermark.logits_processor()] if marked else []),
                suppress_tokens=[0, 1, 2],  # pad, bos, eos: every answer has TOKENS sampled tokens
                pad_token_id=0,
                top_k=0,
            )
        return [tok.decode(ids, skip_special_tokens=True) for ids in out[:, 1:].tolist()]

    prompts = [f"Question {i}: what comes after {i}?" for i in range(PROMPTS)]
    file = root / "prompts.jsonl"
    file.write_text("".join(json.dumps({"id": str(i), "prompt": p}) + "\n" for i, p in enumerate(prompts)))

    def by_request(texts: list[str]) -> dict[tuple[str, int], str]:
        # sampling.seed 0: the request for sample i of a prompt carries seed i
        return {(p, s): texts[i * SAMPLES + s] for i, p in enumerate(prompts) for s in range(SAMPLES)}

    return SimpleNamespace(
        path=path,
        tok=tok,
        prompts=prompts,
        prompts_file=file,
        marked=by_request(sample(PROMPTS * SAMPLES, True, seed=0)),
        clean=by_request(sample(PROMPTS * SAMPLES, False, seed=1)),
        references=sample(150, False, seed=2),
        root=root,
    )


def serve(answers: dict[tuple[str, int], str], **kwargs) -> ScriptedServer:
    return ScriptedServer(answer_text=lambda prompt, seed, j: answers[(prompt, seed)], **kwargs)


def ids(tok, texts: list[str]) -> list[list[int]]:
    return tok(texts, add_special_tokens=False)["input_ids"]


def stored(out: Path, tok) -> tuple[list[str], list[list[int]], list[list[int]]]:
    """(completions, their ids, the prompts' ids) of a generation directory, in its order."""
    table = load_generations_table(out)
    texts = table.column("completion").to_pylist()
    prompts = table.column("prompt").to_pylist()
    chats = table.column("messages").to_pylist()
    shown = [p for p in prompts if p] + [m["content"] for chat in chats for m in chat or ()]
    return texts, ids(tok, texts), ids(tok, list(dict.fromkeys(shown)))


@pytest.fixture(scope="module")
def suspects(lm):
    """Both suspects queried through `query_suspect`: {name: (out dir, recorded requests)}."""
    out = {}
    for name, answers in (("marked", lm.marked), ("clean", lm.clean)):
        with serve(answers, models=["suspect-model"]) as server, pytest.MonkeyPatch.context() as mp:
            mp.setenv("OPENAI_API_KEY", API_KEY)
            path = query_suspect(
                server.base_url, "suspect-model", lm.prompts_file, lm.root / name, samples=SAMPLES, seed=0
            )
            out[name] = (path, server.requests)
    return out


def authorization(request) -> str | None:
    return next((v for k, v in request.headers.items() if k.lower() == "authorization"), None)


def files_text(root: Path) -> str:
    return "".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------- the statistic


def test_pooled_statistic_scores_each_distinct_pair_once_and_no_pair_of_the_prompts():
    rng = np.random.default_rng(0)
    answers = [rng.integers(0, 40, n).tolist() for n in (30, 1, 0, 45, 25)]  # a small vocabulary: repeats
    plain = closed_model_test(answers, KEY)
    reference = detect_watermark(answers, KEY)  # pooled detection, as the watermark module defines it
    assert (plain.statistic, plain.analytic_p_value, plain.scored) == (
        reference.statistic,
        reference.p_value,
        reference.scored,
    )
    assert (
        plain.green == reference.details["green"]
        and plain.repeats_skipped == reference.details["repeats_skipped"]
    )
    assert (plain.answers, plain.answers_scored, plain.tokens) == (5, 3, 101)

    prompts = [answers[0][:12], [7, 8, 9]]
    report = closed_model_test(answers, KEY, prompts_token_ids=prompts)
    banned = {(a, b) for p in prompts for a, b in zip(p, p[1:], strict=False)}
    positions = [(a, b) for seq in answers for a, b in zip(seq, seq[1:], strict=False)]
    distinct = {pair for pair in positions if pair not in banned}
    green = sum(is_green(KEY, [a], b, 0.25) for a, b in distinct)
    assert (report.scored, report.green) == (len(distinct), green)
    assert report.prompt_pairs_skipped == sum(pair in banned for pair in positions) > 0
    assert report.repeats_skipped == len(positions) - report.prompt_pairs_skipped - len(distinct)
    assert report.statistic == pytest.approx(
        (green - 0.25 * len(distinct)) / math.sqrt(len(distinct) * 0.1875)
    )
    assert report.analytic_p_value == pytest.approx(binom.sf(green - 1, len(distinct), 0.25), rel=1e-9)


def test_a_suspect_that_repeats_watermarked_prompts_is_not_credited_with_their_green_pairs(lm):
    marked = ids(lm.tok, list(lm.marked.values()))
    assert closed_model_test(marked, KEY).statistic > 5  # the prompts themselves carry the mark
    with pytest.raises(
        NothingToScoreError, match="every pair of the 24 answer\\(s\\) also occurs in the prompts"
    ):
        closed_model_test(marked, KEY, prompts_token_ids=marked)  # a parrot of watermarked prompts
    clean = ids(lm.tok, list(lm.clean.values()))
    parrot = closed_model_test(
        [m + c for m, c in zip(marked, clean, strict=True)], KEY, prompts_token_ids=marked
    )
    assert parrot.analytic_p_value > 1e-3  # only its own words are scored (and the seams: 24 pairs)


# ---------------------------------------------------------------------------------------------- behind an API


def test_a_watermarked_suspect_behind_an_api_is_detected_and_a_clean_one_is_not(lm, suspects):
    """z > 5 has probability < 3e-7 for answers written without the key. The marked answers were sampled
    with delta 2, gamma 0.25 from a high-entropy model: green with probability about 0.25 e^2 / (0.75 +
    0.25 e^2) = 0.71, z about 1.06 sqrt(T) over T such pairs; re-tokenising the decoded text loses part of
    that, yet over ~800 distinct pairs z = 5 leaves a wide margin."""
    reports = {}
    for name, answers in (("marked", lm.marked), ("clean", lm.clean)):
        out, requests = suspects[name]
        texts, answer_ids, prompt_ids = stored(out, lm.tok)
        assert sorted(texts) == sorted(answers.values())  # the server's answers, stored exactly once each
        assert len(requests) == PROMPTS * SAMPLES
        assert {(r.key, r.seed) for r in requests} == set(answers)
        assert {(r.body["temperature"], r.body["max_tokens"]) for r in requests} == {(0.7, 256)}
        # no key asked for, none sent: not even $OPENAI_API_KEY (set while querying) reaches their server
        assert {authorization(r) for r in requests} == {f"Bearer {NO_KEY}"}
        reports[name] = closed_model_test(answer_ids, KEY, prompts_token_ids=prompt_ids)
        assert reports[name].answers == PROMPTS * SAMPLES
    marked, clean = reports["marked"], reports["clean"]
    print(f"\nmarked: {marked.summary()}\nclean: {clean.summary()}")
    assert marked.statistic > 5 and marked.p_value < 1e-6 and marked.scored > 500
    assert clean.p_value > 1e-3 and clean.scored > 500
    for name in suspects:  # the watermark key never travels, and is never written
        out, requests = suspects[name]
        assert not any(KEY.encode() in r.raw or KEY in json.dumps(r.headers) for r in requests)
        assert KEY not in files_text(out)


def test_query_suspect_resumes_without_asking_again(lm, tmp_path):
    out = tmp_path / "answers"
    with serve(lm.marked) as server:
        assert query_suspect(server.base_url, "suspect-model", lm.prompts_file, out, samples=1) == out
        assert server.count() == PROMPTS
        query_suspect(server.base_url, "suspect-model", lm.prompts_file, out, samples=1)
        assert server.count() == PROMPTS  # every record has its row: nothing asked again
        query_suspect(server.base_url, "suspect-model", lm.prompts_file, out, samples=2)
        assert sorted(r.seed for r in server.requests[PROMPTS:]) == [1] * PROMPTS  # only sample 1
    assert sorted(stored(out, lm.tok)[0]) == sorted(lm.marked.values())


# ---------------------------------------------------------------------------------------------- tokens needed


def prefix(answers: list[list[int]], n: int) -> list[list[int]]:
    """The answers cut after n tokens of their concatenation."""
    out, left = [], n
    for seq in answers:
        out.append(seq[:left])
        left -= len(out[-1])
    return out


def brute_force_tokens_needed(answers, alpha, test) -> int | None:
    for n in range(1, sum(map(len, answers)) + 1):
        try:
            if test(prefix(answers, n)) < alpha:
                return n
        except NothingToScoreError:
            continue
    return None


def test_tokens_needed_is_where_the_pooled_p_of_the_answers_read_so_far_first_falls_below_alpha(lm):
    marked = ids(lm.tok, list(lm.marked.values()))
    clean = ids(lm.tok, list(lm.clean.values()))[:4]
    prompts = ids(lm.tok, lm.prompts) + [marked[1][:20]]  # a prompt that shares pairs with an answer

    def detect(answers):
        return detect_watermark(answers, KEY).p_value

    def closed(answers):
        return closed_model_test(answers, KEY, prompts_token_ids=prompts).analytic_p_value

    for alpha in (1e-3, 1e-8):
        needed = tokens_needed(marked, KEY, alpha=alpha)
        assert needed == brute_force_tokens_needed(marked, alpha, detect)
        assert needed < sum(map(len, marked))
        with_prompts = tokens_needed(marked, KEY, alpha=alpha, prompts_token_ids=prompts)
        assert with_prompts == brute_force_tokens_needed(marked, alpha, closed)
        print(f"\nalpha {alpha:g}: {needed} tokens ({with_prompts} with the prompt pairs left out)")
    assert tokens_needed(clean, KEY) is None is brute_force_tokens_needed(clean, 1e-3, detect)
    assert tokens_needed([[5], []], KEY) is None


# ---------------------------------------------------------------------------------------------- calibration

V = 100


def bigram_texts(logits: np.ndarray, n: int, seed: int, lengths=(60, 160)) -> list[list[int]]:
    """n texts of a random bigram language (no key involved), lengths uniform in `lengths`."""
    rng = np.random.default_rng(seed)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    x = rng.integers(0, V, n)
    columns = [x]
    for _ in range(lengths[1] - 1):
        x = np.minimum((cdf[x] < rng.random((n, 1))).sum(axis=1), V - 1)
        columns.append(x)
    tokens = np.stack(columns, axis=1)
    sizes = rng.integers(lengths[0], lengths[1] + 1, n)
    return [tokens[i, : sizes[i]].tolist() for i in range(n)]


def marked_bigram_text(logits: np.ndarray, wm: GreenListWatermark, length: int, seed: int) -> list[int]:
    processor = wm.logits_processor()
    generator = torch.Generator().manual_seed(seed)
    out = [seed % V]
    for _ in range(length - 1):
        scores = processor(torch.tensor([out]), torch.tensor(logits[out[-1]], dtype=torch.float32)[None])
        out.append(int(torch.multinomial(torch.softmax(scores[0], dim=-1), 1, generator=generator)))
    return out


def test_pools_are_disjoint_runs_of_whole_texts_with_exactly_the_answers_pair_count():
    texts = [[1, 2, 3, 4], [1, 2, 5], [6, 7, 8, 9, 10], [2, 3, 3, 4]]
    pool = reference_pool(texts, KEY, seed=0)
    order = [tuple(t) for t in pool.texts]  # shuffled once; pair ids in first-occurrence order
    assert sorted(map(len, order)) == [2, 3, 3, 4] and pool.distinct_pairs == 9
    assert all(
        pool.green[i] == is_green(KEY, context, token, 0.25) for (context, token), i in pool.pair_ids.items()
    )

    def walk(size: int, skip: set[int]) -> list[int]:  # an independent walk: a pool ends inside a text
        counts, members, count = [], set(), 0
        for text in order:
            for pid in text:
                if pid not in members and pid not in skip:
                    members.add(pid)
                    count += pool.green[pid]
                    if len(members) == size:
                        counts.append(count)
                        members, count = set(), 0
                        break
        return counts

    prompts = [((1,), 2), ((3,), 4), ((50,), 51)]  # pairs the answers' prompts hold (one no text has)
    for size in (1, 2, 3, 5, 9):
        assert pool.pool_green_counts(size) == walk(size, set())
        assert pool.pool_green_counts(size, prompts) == walk(size, {pool.pair_ids[p] for p in prompts[:2]})
    assert len(pool.pool_green_counts(1)) == 4 and pool.pool_green_counts(10) == []


def test_the_calibrated_pooled_p_is_valid_for_each_fixed_key_where_the_analytic_one_is_not():
    """Suspects of 5 null texts each, per key ranked among pools of 600 null reference texts (~110 pools).

    p < alpha <=> fewer than k = ceil(alpha (n + 1)) - 1 pools reach the suspect's green count: the rate
    is k / (n + 1) given exchangeable pools (lower with ties, which count against the suspect), with the
    references' Beta(k, n + 1 - k) noise on top of the suspects' binomial noise.
    """
    logits = np.random.default_rng(0).normal(0.0, 3.0, (V, V))
    references = bigram_texts(logits, 600, seed=1)
    answers, m = bigram_texts(logits, 5 * 250, seed=2), 250
    alpha, analytic_rates, rates, levels, sds = 0.1, [], [], [], []
    for k in range(8):
        key = f"pooled-key-{k}-0123456789abcdef"
        pool = reference_pool(references, key)
        reports = [closed_model_test(answers[5 * i : 5 * i + 5], key, null=pool) for i in range(m)]
        n = np.mean([r.n_pools for r in reports])
        kk = math.ceil(alpha * (n + 1)) - 1
        levels.append(kk / (n + 1))
        sds.append(
            math.sqrt(levels[-1] * (1 - levels[-1]) / m + kk * (n + 1 - kk) / ((n + 1) ** 2 * (n + 2)))
        )
        rates.append(float(np.mean([r.p_value < alpha for r in reports])))
        analytic_rates.append(float(np.mean([r.analytic_p_value < alpha for r in reports])))
        print(
            f"\nkey {k}: empirical {rates[-1]:.3f} (level {levels[-1]:.3f} +- {sds[-1]:.3f}), "
            f"analytic {analytic_rates[-1]:.3f}"
        )
        assert rates[-1] <= levels[-1] + 4 * sds[-1]
    assert np.mean(rates) <= np.mean(levels) + 3 * math.sqrt(np.mean(np.square(sds)) / len(sds))
    # the analytic p holds over keys, not for each: its per-key rates spread far beyond binomial noise
    assert max(analytic_rates) - min(analytic_rates) > 8 * math.sqrt(alpha * (1 - alpha) / m)


def test_watermarked_answers_rank_above_every_reference_pool():
    logits = np.random.default_rng(0).normal(0.0, 3.0, (V, V))
    wm = GreenListWatermark(KEY, gamma=0.25, delta=2.0, context_width=1)
    pool = reference_pool(bigram_texts(logits, 600, seed=1), KEY)
    for suspect in range(2):
        answers = [marked_bigram_text(logits, wm, 110, seed=10 * suspect + i) for i in range(5)]
        report = closed_model_test(answers, KEY, null=pool)
        print(f"\n{report.summary()}")
        assert report.pools_at_least == 0 and report.p_value == 1 / (report.n_pools + 1) < 0.02


def test_what_cannot_be_calibrated_raises(lm):
    answers = ids(lm.tok, list(lm.clean.values()))
    references = ids(lm.tok, lm.references)
    with pytest.raises(TypeError, match="per-text ReferenceNull cannot calibrate the pooled answers"):
        closed_model_test(answers, KEY, null=reference_null(references, KEY))
    with pytest.raises(ValueError, match="scored under another key"):
        closed_model_test(answers, KEY, null=reference_pool(references, "another-key-0123456789"))
    with pytest.raises(ValueError, match="gamma 0.5 and context width 1, the answers with 0.25"):
        closed_model_test(answers, KEY, null=reference_pool(references, KEY, gamma=0.5))
    with pytest.raises(NothingToScoreError, match="too few for one pool of"):
        closed_model_test(answers, KEY, null=reference_pool(references[:10], KEY))
    with pytest.raises(NothingToScoreError, match="all 2 are shorter than context_width \\+ 1 = 2"):
        reference_pool([[1], []], KEY)
    with pytest.raises(NothingToScoreError, match="the suspect gave no answer"):
        closed_model_test([[], []], KEY)
    with pytest.raises(NothingToScoreError, match="the longest 1 token"):
        closed_model_test([[4], [5]], KEY)
    with pytest.raises(ValueError, match="answers: token id 999 is outside the vocabulary \\(size 512\\)"):
        closed_model_test([[1, 999]], KEY, vocab_size=512)


def test_report_says_what_it_computed_under_and_round_trips(lm):
    answers = ids(lm.tok, list(lm.marked.values()))
    pool = reference_pool(ids(lm.tok, lm.references), KEY)
    plain = closed_model_test(answers, KEY)
    report = closed_model_test(answers, KEY, null=pool, alpha=0.05)
    assert isinstance(report, ClosedModelReport) and report.statistic == plain.statistic
    out = json.loads(json.dumps(report.to_dict()))
    assert out["p_value"] == report.empirical_p_value == (1 + report.pools_at_least) / (report.n_pools + 1)
    assert out["analytic_p_value"] == plain.p_value and out["key_fingerprint"] == key_fingerprint(KEY)
    assert out["smallest_attainable_p"] == 1 / (report.n_pools + 1) > 0.05
    assert out["notes"] == [
        f"with {report.n_pools} reference pools the smallest attainable p is {1 / (report.n_pools + 1):.3g}, "
        f"so p < 0.05 is impossible; give reference text for at least 20 pools of {report.scored} distinct pairs"
    ]
    assert any("without knowledge of the key" in a for a in out["assumptions"])
    assert any("like the answers" in a for a in out["assumptions"])  # the references' assumptions too
    assert plain.to_dict()["p_value_kind"] == "exact binomial upper tail" and "n_pools" not in plain.to_dict()
    assert KEY not in json.dumps(out) and KEY not in report.summary()
    line = plain.summary()
    assert "\n" not in line and f"z = {plain.statistic:.4g}" in line and f"p = {plain.p_value:.3g}" in line
    assert f"{plain.scored} distinct pairs scored from 24 of 24 answers ({plain.tokens} tokens)" in line


# ---------------------------------------------------------------------------------------------- the command


def suspect_cli(server: ScriptedServer, lm, out: Path, *extra: str, env=ENV):
    args = ["provenance", "suspect", "--base-url", server.base_url, "--model", "suspect-model"]
    args += ["--prompts", str(lm.prompts_file), "--out", str(out), "--tokenizer", str(lm.path)]
    args += ["--key-env", KEY_ENV, "--samples", str(SAMPLES), *extra]
    return runner.invoke(app, args, env=env)


def test_suspect_command_queries_then_reports_what_the_library_computes(lm, tmp_path):
    out = tmp_path / "answers"
    references = tmp_path / "refs.jsonl"
    references.write_text("".join(json.dumps({"text": t}) + "\n" for t in lm.references))
    with serve(lm.marked, require_key=API_KEY) as server:
        result = suspect_cli(
            server, lm, out, "--api-key-env", API_KEY_ENV, "--json", "--reference", str(references)
        )
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout)
        requests = server.requests
        assert len(requests) == PROMPTS * SAMPLES
        assert {authorization(r) for r in requests} == {f"Bearer {API_KEY}"}

        _, answer_ids, prompt_ids = stored(out, lm.tok)
        pool = reference_pool(ids(lm.tok, lm.references), KEY)
        library = closed_model_test(answer_ids, KEY, null=pool, prompts_token_ids=prompt_ids, alpha=1e-3)
        assert payload["closed_model"] == json.loads(json.dumps(library.to_dict()))
        needed = tokens_needed(answer_ids, KEY, prompts_token_ids=prompt_ids, alpha=1e-3)
        assert payload["tokens_needed"] == {"alpha": 1e-3, "tokens": needed} and needed is not None

        again = suspect_cli(server, lm, out, "--api-key-env", API_KEY_ENV)  # resumes: nothing to ask
        assert again.exit_code == 0, again.output
        assert server.count() == PROMPTS * SAMPLES
    line = again.stdout.strip()
    assert (
        "\n" not in line
        and line == closed_model_test(answer_ids, KEY, prompts_token_ids=prompt_ids).summary()
    )
    for text in (result.output, again.output, files_text(out), *(r.raw.decode() for r in requests)):
        assert KEY not in text
    assert API_KEY not in files_text(out) and API_KEY not in result.output


def test_suspect_command_says_why_there_is_no_test(lm, tmp_path):
    def no_test(result, phrase: str) -> None:
        assert result.exit_code == 2, result.output
        assert result.stdout == "" and "Traceback" not in result.output
        assert phrase in result.stderr

    with serve({key: "x" for key in lm.marked}) as server:  # one token per answer: no pair
        no_test(suspect_cli(server, lm, tmp_path / "short"), "no test possible: no (context, token) pair")
        assert server.count() == PROMPTS * SAMPLES
        server.clear()
        no_test(suspect_cli(server, lm, tmp_path / "unkeyed", env={}), f"{KEY_ENV} is not set")
        assert server.count() == 0  # nothing asked (or paid for) without the key to test with
        server.fault_all = Fault.status(400)  # every request refused, not retried: no answer at all
        refused = suspect_cli(server, lm, tmp_path / "refused")
        no_test(refused, "no test possible: the suspect gave no answer")
        assert f"{PROMPTS * SAMPLES} of {PROMPTS * SAMPLES} answers are missing" in refused.stderr
    dead = ScriptedServer().start()
    url = dead.base_url
    dead.stop()
    result = runner.invoke(
        app,
        ["provenance", "suspect", "--base-url", url, "--model", "m", "--prompts", str(lm.prompts_file)]
        + ["--out", str(tmp_path / "dead"), "--tokenizer", str(lm.path), "--key-env", KEY_ENV],
        env=ENV,
    )
    no_test(result, f"cannot reach {url}")
    assert len(result.stderr.strip().splitlines()) == 1


def test_suspect_help():
    result = runner.invoke(app, ["provenance", "suspect", "--help"])
    assert result.exit_code == 0 and "Usage" in result.output and "--reference" in result.output
