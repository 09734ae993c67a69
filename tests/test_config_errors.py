"""Every bad config input is one line naming the file (or override) and the field, exit 2, no traceback:
undecodable or oversized files, bad overrides, duplicate YAML keys, empty files, loss weights that train
nothing, runaway lists, non-finite or absurd numbers, over-long names, a missing `task:` line."""

from __future__ import annotations

import random

import pytest
from typer.testing import CliRunner

from kdistill.cli.app import app
from kdistill.config import ConfigError, load_config
from kdistill.schema import parse_yaml

CLASSIC = "name: c\ntrain:\n  steps: 30\nloss:\n  - name: cross_entropy\n  - name: hinton_kd\n"
LM = "task: lm\nname: l\ndistill:\n  signal: cached\n"
ENCODER = "task: encoder\nstudents:\n  - {name: s, kind: static}\n"


def validate(*args: str):
    return CliRunner().invoke(app, ["validate", *args])


def write(tmp_path, content: str | bytes, name: str = "c.yaml") -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def error_lines(result) -> list[str]:
    """The user-error lines of a failed command (the hint line left out), after checking it failed as one."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return [line for line in result.stderr.splitlines() if not line.startswith("hint:")]


def assert_one_error(result, line: str) -> None:
    assert error_lines(result) == [f"error: {line}"]


# -- 1. files that are not UTF-8, or too large ---------------------------------------------------------------


def test_a_latin1_file_names_the_byte_and_its_offset(tmp_path):
    path = write(tmp_path, "name: café\n".encode("latin-1"))  # é is the single byte 0xe9 at offset 9
    assert_one_error(
        validate(path), f"{path}: not UTF-8 text (byte 0xe9 at offset 9); a config is a UTF-8 YAML file"
    )


def test_random_binary_bytes_are_one_line(tmp_path):
    raw = b"\x80" + random.Random(0).randbytes(500)  # 0x80 can never start a UTF-8 character
    path = write(tmp_path, raw)
    assert_one_error(
        validate(path), f"{path}: not UTF-8 text (byte 0x80 at offset 0); a config is a UTF-8 YAML file"
    )


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_utf16_text_with_a_bom_is_named(tmp_path, encoding):
    raw = "\ufeffname: x\n".encode(encoding) if encoding == "utf-16-be" else "name: x\n".encode(encoding)
    assert raw[:2] in (b"\xff\xfe", b"\xfe\xff")
    path = write(tmp_path, raw)
    assert_one_error(
        validate(path), f"{path}: the file is UTF-16 text (it starts with a UTF-16 BOM); save it as UTF-8"
    )


def test_utf8_with_a_bom_is_still_a_config(tmp_path):
    path = write(tmp_path, "\ufeffname: bom\n".encode())
    assert load_config(path).name == "bom"


def test_a_file_over_one_mebibyte_is_refused_before_parsing(tmp_path):
    # valid YAML: were it parsed, it would be a 1 MiB comment, and the run would use every default
    path = write(tmp_path, "#" * (1024 * 1024) + "\n")
    assert_one_error(
        validate(path), f"{path}: the file is 1048577 bytes; a config is at most 1048576 bytes (1 MiB)"
    )


def test_a_file_of_exactly_one_mebibyte_is_read(tmp_path):
    body = "name: big\n"
    path = write(tmp_path, body + "#" * (1024 * 1024 - len(body)))
    assert load_config(path).name == "big"


def test_control_characters_are_one_line(tmp_path):
    path = write(tmp_path, "name: a\x00b\n")
    assert_one_error(
        validate(path),
        f"{path}: character 8: invalid YAML: unacceptable character #x0000 (special characters are not allowed)",
    )


def test_a_file_name_too_long_for_the_file_system(tmp_path):
    name = "x" * 300
    assert_one_error(validate(name), f"{'x' * 100!r}: not a usable file name (File name too long)")


# -- 2. overrides ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.5.weight=1", "override 'loss.5.weight=1': loss has 2 entries (indices 0-1), no 5"),
        (
            "seeds=[0",
            "override 'seeds=[0': line 1, column 3: invalid YAML: expected ',' or ']', but got '<stream end>'",
        ),
        (
            "train.steps.x=1",
            "override 'train.steps.x=1': train.steps is 30, not a mapping or list to go into",
        ),
        ("=3", "override '=3': the key is empty; expected key.path=value"),
        ("train..steps=3", "override 'train..steps=3': an empty key between dots; expected key.path=value"),
        (
            "loss.first.weight=1",
            "override 'loss.first.weight=1': loss is a list: 'first' must be an index (0, 1, ...)",
        ),
        ("train.steps", "override 'train.steps': expected key.path=value"),
        (
            "teacher.train.0.lr=1",
            "override 'teacher.train.0.lr=1': teacher.train is not in the config, so it has no entry 0 "
            "(set the whole list: teacher.train=[...])",
        ),
    ],
)
def test_a_bad_override_names_itself(tmp_path, override, message):
    assert_one_error(validate(write(tmp_path, CLASSIC), override), message)


def test_overrides_start_missing_and_null_sections(tmp_path):
    path = write(tmp_path, CLASSIC + "teacher: null\n")
    cfg = load_config(path, ["teacher.train.steps=7", "data.split_seed=3", "loss.1.params.temperature=2"])
    assert (cfg.teacher.train.steps, cfg.data.split_seed, cfg.loss[1].params) == (7, 3, {"temperature": 2})


# -- 3. duplicate keys ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, where",
    [
        (
            "name: x\ntrain:\n  steps: 30\n  steps: 9999999\n",
            "line 4, column 3: invalid YAML: duplicate key 'steps' (first at line 3)",
        ),
        (
            "train:\n  steps: 30\nname: x\ntrain:\n  lr: 0.1\n",
            "line 4, column 1: invalid YAML: duplicate key 'train' (first at line 1)",
        ),
        (
            "train: {steps: 1, lr: 0.1, steps: 2}\n",
            "line 1, column 28: invalid YAML: duplicate key 'steps' (first at line 1)",
        ),
        (
            "loss:\n  - name: hinton_kd\n    params: {temperature: 2}\n    name: dkd\n",
            "line 4, column 5: invalid YAML: duplicate key 'name' (first at line 2)",
        ),
    ],
)
def test_a_duplicate_key_at_any_depth_names_both_lines(tmp_path, text, where):
    path = write(tmp_path, text)
    assert_one_error(validate(path), f"{path}: {where}; a key may appear once per mapping")


def test_a_duplicate_key_in_an_override_value(tmp_path):
    result = validate(write(tmp_path, CLASSIC), "loss.1.params={temperature: 1, temperature: 2}")
    assert_one_error(
        result,
        "override 'loss.1.params={temperature: 1, temperature: 2}': line 1, column 18: invalid YAML: "
        "duplicate key 'temperature' (first at line 1); a key may appear once per mapping",
    )


def test_merge_keys_may_override_what_they_merge():
    data = parse_yaml("base: &b {steps: 3, lr: 0.1}\ntrain:\n  <<: *b\n  steps: 5\n", "t.yaml")
    assert data["train"] == {"steps": 5, "lr": 0.1}


def test_config_yaml_is_json_like_data_only(tmp_path):
    assert parse_yaml("name: 2024-01-01\n", "t.yaml") == {"name": "2024-01-01"}  # not a datetime.date
    path = write(tmp_path, "name: !!binary aGVsbG8=\n")
    assert_one_error(
        validate(path),
        f"{path}: line 1, column 7: invalid YAML: the tag !!binary is not allowed in a config "
        "(strings, numbers, booleans, null, lists and mappings only)",
    )


def test_aliases_that_expand_past_a_million_values_are_refused(tmp_path):
    lines = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for prev, name in zip("abcdef", "bcdefg", strict=True):  # 10^7 values from 70 aliases
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]")
    path = write(tmp_path, "\n".join(lines) + "\n")
    assert_one_error(
        validate(path),
        f"{path}: the config expands to more than 1000000 values "
        "(YAML aliases that repeat a large block, or refer to themselves)",
    )


def test_deep_nesting_is_one_line(tmp_path):
    path = write(tmp_path, "name: " + "[" * 5000 + "\n")
    assert_one_error(
        validate(path), f"{path}: invalid YAML: nested too deeply (lists or mappings inside each other)"
    )


# -- 4. empty files -------------------------------------------------------------------------------------------

EMPTY = "the file is empty (no settings, only comments or blank lines); a config needs at least one setting, e.g. `name: my_run`"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   # and another\n", "{}\n"])
def test_an_empty_file_is_refused(tmp_path, text):
    path = write(tmp_path, text)
    assert_one_error(validate(path), f"{path}: {EMPTY}")


def test_no_config_argument_is_the_default_recipe():
    result = validate()
    assert result.exit_code == 0, result.output
    assert "name: digits" in result.stdout


def test_a_top_level_list_is_refused_before_overrides(tmp_path):
    path = write(tmp_path, "- name: x\n")
    assert_one_error(
        validate(path, "name=y"), f"{path}: expected a mapping of config keys at the top level, got list"
    )


# -- 5. loss weights that train nothing -----------------------------------------------------------------------

NOTHING = "every loss weight is 0: nothing would train the student"


def test_classic_loss_weights_all_zero(tmp_path):
    path = write(tmp_path, CLASSIC)
    assert_one_error(validate(path, "loss.0.weight=0", "loss.1.weight=0"), f"{path}: loss: {NOTHING}")


def test_one_nonzero_weight_trains_and_method_none_ignores_the_weights(tmp_path):
    path = write(tmp_path, CLASSIC)
    assert load_config(path, ["loss.0.weight=0"]).loss[1].weight == 1.0
    cfg = load_config(path, ["loss.0.weight=0", "loss.1.weight=0", "method.name=none"])
    assert [t.weight for t in cfg.loss] == [0.0, 0.0]


def test_lm_distill_weights_all_zero(tmp_path):
    path = write(tmp_path, LM)
    assert_one_error(validate(path, "distill.kd_weight=0"), f"{path}: distill: {NOTHING}")


def test_lm_cross_tokenizer_arm_that_weighs_nothing(tmp_path):
    path = write(tmp_path, LM + "  cross_tokenizer: {loss: uld, unmatched_weight: 0}\n")
    assert_one_error(validate(path), f"{path}: distill.cross_tokenizer: {NOTHING}")
    path = write(
        tmp_path,
        LM + "  cross_tokenizer: {loss: hybrid}\n  compare_with: [{loss: uld, unmatched_weight: 0}]\n",
    )
    assert_one_error(validate(path), f"{path}: distill.compare_with.0: {NOTHING}")


def test_lm_weights_that_still_train():
    for overrides in (
        ["distill.kd_weight=0", "distill.ce_weight=0.5"],  # SFT on the same tokens
        ["distill.signal=none", "distill.kd_weight=0"],  # plain SFT: no weights
        # the recipe's text phase needs the teacher's tokenizer: dropped for a cross-tokenizer student
        [
            "distill.signal=cached",
            "distill.cross_tokenizer={loss: hybrid, unmatched_weight: 0}",
            "student.recover=null",
        ],
    ):
        load_config("smollm2", overrides)


def test_encoder_loss_weights_all_zero(tmp_path):
    path = write(tmp_path, ENCODER)
    assert_one_error(
        validate(path, "students.0.losses={cosine: 0}"),
        f"{path}: students.0: {NOTHING} (loss weights must be >= 0 with at least one > 0, got {{'cosine': 0.0}})",
    )


# -- 6. seeds -------------------------------------------------------------------------------------------------


def test_seeds_are_capped_in_files_and_overrides(tmp_path):
    many = "[" + ", ".join(str(i) for i in range(1001)) + "]"
    path = write(tmp_path, f"name: s\nseeds: {many}\n")
    assert_one_error(
        validate(path), f"{path}: seeds: List should have at most 1000 items after validation, not 1001"
    )
    path = write(tmp_path, CLASSIC)
    assert_one_error(
        validate(path, f"seeds={many}"),
        f"{path}: seeds: List should have at most 1000 items after validation, not 1001",
    )
    assert len(load_config(path, ["seeds=[" + ", ".join(str(i) for i in range(1000)) + "]"]).seeds) == 1000


def test_seeds_must_be_distinct_and_in_range(tmp_path):
    path = write(tmp_path, CLASSIC)
    assert_one_error(validate(path, "seeds=[1, 1]"), f"{path}: seeds: must be distinct")
    assert_one_error(
        validate(path, "seeds=[-1]"), f"{path}: seeds.0: Input should be greater than or equal to 0 (got -1)"
    )
    assert_one_error(
        validate(path, f"seeds=[{2**32}]"),
        f"{path}: seeds.0: Input should be less than or equal to 4294967295 (got 4294967296)",
    )


# -- 7. numbers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.1.params.temperature=0", "loss.1.params.temperature: must be > 0 (got 0)"),
        ("loss.1.params.temperature=-2.5", "loss.1.params.temperature: must be > 0 (got -2.5)"),
        ("loss.1.params.temperature=1000.0", "loss.1.params.temperature: must be <= 100 (got 1000.0)"),
        (
            "loss.1.params.temperature=warm",
            "loss.1.params.temperature: expected a finite number (got 'warm')",
        ),
        ("loss.1.params.temperature=.inf", "loss.1.params.temperature: expected a finite number (got inf)"),
        ("loss.1.params.temperature=.nan", "loss.1.params.temperature: expected a finite number (got nan)"),
        ("train.lr=.inf", "train.lr: Input should be a finite number (got inf)"),
        ("train.lr=.nan", "train.lr: Input should be a finite number (got nan)"),
        ("train.lr=1.0e+30", "train.lr: Input should be less than or equal to 10 (got 1e+30)"),
        ("teacher.train.lr=-.inf", "teacher.train.lr: Input should be a finite number (got -inf)"),
        ("loss.0.weight=1.0e+30", "loss.0.weight: Input should be less than or equal to 1000 (got 1e+30)"),
        ("loss.0.weight=.inf", "loss.0.weight: Input should be a finite number (got inf)"),
        ("data.test_fraction=.nan", "data.test_fraction: Input should be a finite number (got nan)"),
    ],
)
def test_classic_numbers(tmp_path, override, message):
    path = write(tmp_path, CLASSIC)
    assert_one_error(validate(path, override), f"{path}: {message}")


@pytest.mark.parametrize(
    "loss, message",
    [
        (
            "{name: crd, student_layer: fc, teacher_layer: fc, params: {momentum: 1}}",
            "params.momentum: must be < 1 (got 1)",
        ),
        (
            "{name: crd, student_layer: fc, teacher_layer: fc, params: {dim: 3.5}}",
            "params.dim: must be a whole number (got 3.5)",
        ),
        (
            "{name: crd, student_layer: fc, teacher_layer: fc, params: {negatives: 0}}",
            "params.negatives: must be >= 1 (got 0)",
        ),
        ("{name: dkd, params: {beta: -1}}", "params.beta: must be >= 0 (got -1)"),
        (
            "{name: attention_transfer, student_layer: a, teacher_layer: b, params: {p: 0}}",
            "params.p: must be > 0 (got 0)",
        ),
    ],
)
def test_loss_params_are_checked_by_name(tmp_path, loss, message):
    path = write(tmp_path, CLASSIC)
    assert_one_error(validate(path, f"loss.1={loss}"), f"{path}: loss.1.{message}")


@pytest.mark.parametrize(
    "override, message",
    [
        ("distill.temperature=0", "distill.temperature: Input should be greater than 0 (got 0)"),
        ("distill.temperature=.inf", "distill.temperature: Input should be a finite number (got inf)"),
        (
            "distill.temperature=1000.0",
            "distill.temperature: Input should be less than or equal to 100 (got 1000.0)",
        ),
        (
            "distill.on_policy_temperature=-1",
            "distill.on_policy_temperature: Input should be greater than 0 (got -1)",
        ),
        ("distill.kd_weight=.nan", "distill.kd_weight: Input should be a finite number (got nan)"),
        (
            "distill.ce_weight=5000",
            "distill.ce_weight: Input should be less than or equal to 1000 (got 5000)",
        ),
        (
            "distill.divergence_kwargs={beta: .nan}",
            "distill.divergence_kwargs.beta: Input should be a finite number (got nan)",
        ),
        ("train.lr=11", "train.lr: Input should be less than or equal to 10 (got 11)"),
        ("generation.temperature=.inf", "generation.temperature: Input should be a finite number (got inf)"),
        (
            "student.keep_layers=some",
            "student.keep_layers: expected a layer count or a list of layer indices (got 'some')",
        ),
    ],
)
def test_lm_numbers(tmp_path, override, message):
    path = write(tmp_path, LM)
    assert_one_error(validate(path, override), f"{path}: {message}")


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "students.0.losses={cosine: .inf}",
            "students.0.losses.cosine: Input should be a finite number (got inf)",
        ),
        (
            "students.0.losses={cosine: 2000}",
            "students.0: loss weights must be >= 0 and <= 1000, got {'cosine': 2000.0}",
        ),
        ("students.0.train.lr=.nan", "students.0.train.lr: Input should be a finite number (got nan)"),
        (
            "students.0.keep_layers=[a]",
            "students.0.keep_layers: expected a layer count or a list of layer indices",
        ),
    ],
)
def test_encoder_numbers(tmp_path, override, message):
    path = write(tmp_path, ENCODER)
    assert_one_error(validate(path, override), f"{path}: {message}")


# -- 8. names -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, field",
    [(CLASSIC, "name"), (LM, "name"), (ENCODER, "name"), (ENCODER, "students.0.name")],
)
def test_a_name_over_100_characters_is_refused(tmp_path, body, field):
    path = write(tmp_path, body)
    (line,) = error_lines(validate(path, f"{field}={'n' * 300}"))
    assert line.startswith(f"error: {path}: {field}: String should have at most 100 characters (got 'nnnn")
    assert len(line) < len(path) + 200  # the value is quoted cut short, not in full
    assert load_config(path, [f"{field}={'n' * 100}"])


def test_an_over_long_registry_name_is_not_echoed_in_full(tmp_path):
    path = write(tmp_path, CLASSIC)
    (line,) = error_lines(validate(path, f"student.arch={'m' * 5000}"))
    assert line.startswith(
        f"error: {path}: student.arch: String should have at most 100 characters (got 'mmm"
    )
    assert len(line) < len(path) + 200


def test_load_config_raises_the_same_lines():
    with pytest.raises(
        ConfigError, match=r"^recipe digits: train\.lr: Input should be a finite number \(got inf\)$"
    ):
        load_config("digits", ["train.lr=.inf"])


# -- what the fuzzer found ------------------------------------------------------------------------------------


def test_text_that_looks_like_rich_markup_is_printed_as_written(tmp_path):
    # rich read `[/x]` as a closing tag: a MarkupError traceback instead of the error line
    assert_one_error(validate(write(tmp_path, CLASSIC), "[/x]"), "override '[/x]': expected key.path=value")
    assert_one_error(
        validate(write(tmp_path, CLASSIC), "[red]x"), "override '[red]x': expected key.path=value"
    )


@pytest.mark.parametrize(
    "override, message",
    [
        (
            f"teacher.checkpoint=runs/{'c' * 256}.safetensors",
            "a path component is longer than 255 bytes; not a usable path",
        ),
        ('teacher.checkpoint="a\\0b"', "contains a NUL character; not a usable path"),
    ],
)
def test_an_unusable_path_is_a_config_error_not_an_os_error(tmp_path, override, message):
    path = write(tmp_path, CLASSIC)
    assert_one_error(validate(path, override), f"{path}: teacher.checkpoint: {message}")


@pytest.mark.parametrize(
    "override, message",
    [
        ("teacher.model=~nosuchuser/model", "~nosuchuser: no such user's home directory"),
        (
            "teacher.model=pkg:...",
            "pkg:<package>[/subdir] needs the name of an installed top-level package, got '...'",
        ),
        (
            "teacher.model=pkg:os.path",  # finding os.path would import os: a config never runs code
            "pkg:<package>[/subdir] needs the name of an installed top-level package, got 'os.path'",
        ),
    ],
)
def test_model_references_that_would_fail_far_from_the_config(tmp_path, override, message):
    path = write(tmp_path, LM)
    assert_one_error(validate(path, override), f"{path}: teacher.model: {message}")


@pytest.mark.parametrize(
    ("text", "task", "keys"),
    [
        ("name: l\ngeneration:\n  max_new_tokens: 8\nprompts:\n  limit: 4\n", "lm", "generation, prompts"),
        ("name: e\nstudents:\n  - {name: s, kind: static}\n", "encoder", "students"),
    ],
)
def test_a_missing_task_line_is_named_when_the_unknown_keys_are_another_tasks(tmp_path, text, task, keys):
    path = write(tmp_path, text)
    lines = error_lines(validate(path))
    assert lines[-1] == (
        f"error: {path}: {keys}: keys of a `task: {task}` config; is the `task: {task}` line missing?"
    )
    assert all(line.endswith("unknown key") for line in lines[:-1]) and len(lines) == 1 + keys.count(",") + 1


def test_keys_no_task_knows_get_no_task_hint(tmp_path):
    lines = error_lines(validate(write(tmp_path, "name: x\nbogus: 1\n")))
    assert len(lines) == 1 and lines[0].endswith("bogus: unknown key")
