"""Prompt files: every format, ids, duplicates, and errors that name the file, the line and the expectation."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdistill.generate.prompts import Prompt, PromptFileError, load_prompts

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


def _jsonl(tmp_path, lines, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line if isinstance(line, str) else json.dumps(line) for line in lines))
    return path


def test_jsonl_ids_default_to_line_numbers_and_blank_lines_count(tmp_path):
    path = _jsonl(
        tmp_path, ['{"prompt": "a"}\n', "\n", '{"id": "x", "messages": ' + json.dumps(CHAT) + "}\n"]
    )
    prompts = load_prompts(path)
    assert [p.id for p in prompts] == ["1", "x"]
    assert prompts[0].prompt == "a" and prompts[0].messages is None
    assert prompts[1].messages == tuple(CHAT) and prompts[1].prompt is None
    assert prompts[1].as_messages() == CHAT
    assert prompts[0].as_messages() == [{"role": "user", "content": "a"}]


def test_integer_ids_become_strings_and_duplicate_texts_stay_apart(tmp_path):
    path = _jsonl(
        tmp_path, [{"id": 7, "prompt": "same"}, "\n", {"prompt": "same"}, "\n", {"prompt": "same"}, "\n"]
    )
    prompts = load_prompts(path)
    assert [p.id for p in prompts] == ["7", "2", "3"]
    assert {p.prompt for p in prompts} == {"same"}


def test_canonical_form_is_independent_of_key_order():
    a = Prompt(id="1", messages=({"role": "user", "content": "x"},))
    b = Prompt(id="2", messages=({"content": "x", "role": "user"},))
    assert a.canonical() == b.canonical() == '{"messages":[{"content":"x","role":"user"}]}'
    assert Prompt(id="1", prompt="x").canonical() == '{"prompt":"x"}'


def test_csv_with_prompt_and_messages_columns(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(
        'id,prompt,messages,extra\na,"hello, world",,1\n,,"[{""role"": ""user"", ""content"": ""x""}]",2\n'
    )
    prompts = load_prompts(path)
    assert [(p.id, p.prompt) for p in prompts] == [("a", "hello, world"), ("2", None)]
    assert prompts[1].messages == ({"role": "user", "content": "x"},)


def test_parquet_and_dataset_directory(tmp_path):
    import datasets

    table = pa.table({"id": ["q1", "q2"], "prompt": ["one", None], "messages": [None, CHAT]})
    pq.write_table(table, tmp_path / "p.parquet")
    from_parquet = load_prompts(tmp_path / "p.parquet")
    datasets.Dataset(table).save_to_disk(str(tmp_path / "ds"))
    from_dir = load_prompts(tmp_path / "ds")
    assert [(p.id, p.canonical()) for p in from_parquet] == [(p.id, p.canonical()) for p in from_dir]
    assert [p.id for p in from_dir] == ["q1", "q2"]
    assert from_dir[1].messages == tuple(CHAT)


def test_dataset_dict_directory_asks_for_a_split(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"prompt": ["a"]})}).save_to_disk(
        str(tmp_path / "dd")
    )
    with pytest.raises(PromptFileError, match=r"dd: a DatasetDict with splits \[train\].*dd/train"):
        load_prompts(tmp_path / "dd")
    assert load_prompts(tmp_path / "dd" / "train")[0].prompt == "a"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"prompt": "ok"', r"p.jsonl: line 3: invalid JSON .* expected one object per line"),
        ('["a"]', r"p.jsonl: line 3: expected an object with 'prompt' or 'messages', got list"),
        ('{"text": "a"}', r"p.jsonl: line 3: expected exactly one of 'prompt' .* got neither"),
        ('{"prompt": "a", "messages": []}', r"line 3: expected exactly one of .* got both"),
        ('{"prompt": ""}', r"line 3: 'prompt' must be a non-empty string"),
        ('{"prompt": 5}', r"line 3: 'prompt' must be a non-empty string"),
        (
            '{"messages": [{"role": "user"}]}',
            r"line 3: messages\[0\] must be \{\"role\": str, \"content\": str\}",
        ),
        ('{"messages": []}', r"line 3: 'messages' must be a non-empty list"),
        ('{"id": 1.5, "prompt": "a"}', r"line 3: 'id' must be a string or an integer"),
        ('{"id": "1", "prompt": "a"}', r"line 3: duplicate id '1' \(first at line 1\)"),
    ],
)
def test_jsonl_errors_name_file_line_and_expectation(tmp_path, line, expected):
    path = _jsonl(tmp_path, ['{"prompt": "first"}\n', "\n", line + "\n"])
    with pytest.raises(PromptFileError, match=expected) as info:
        load_prompts(path)
    assert str(path) in str(info.value)


def test_csv_errors_name_the_row(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("id,prompt\na,x\nb,\n")
    with pytest.raises(PromptFileError, match=r"p.csv: row 2: expected exactly one of 'prompt'"):
        load_prompts(path)
    path.write_text("question\nx\n")
    with pytest.raises(
        PromptFileError, match=r"p.csv: row 0 \(header\): expected a 'prompt' or 'messages' column"
    ):
        load_prompts(path)


def test_unsupported_missing_and_empty_files(tmp_path):
    (tmp_path / "p.txt").write_text("hello\n")
    with pytest.raises(PromptFileError, match=r"p.txt: unsupported prompt file type '.txt'"):
        load_prompts(tmp_path / "p.txt")
    with pytest.raises(PromptFileError, match=r"nope.jsonl: no such file"):
        load_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(PromptFileError, match=r"e.jsonl: no prompts found"):
        load_prompts(tmp_path / "e.jsonl")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(PromptFileError, match=r"bad.parquet: not a readable Parquet file"):
        load_prompts(tmp_path / "bad.parquet")


def test_extra_columns_are_read_when_asked_for_in_every_format_and_never_change_the_prompt(tmp_path):
    rows = [
        {"id": "a", "prompt": "2+2?", "answer": "4", "tests": "assert f() == 4", "other": 1},
        {"id": "b", "prompt": "3+3?", "answer": "6", "tests": "assert f() == 6", "other": 2},
    ]
    jsonl = _jsonl(tmp_path, [json.dumps(r) + "\n" for r in rows])
    csv = tmp_path / "p.csv"
    csv.write_text(
        "id,prompt,answer,tests\n"
        + "".join(f'{r["id"]},{r["prompt"]},{r["answer"]},"{r["tests"]}"\n' for r in rows)
    )
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    for path in (jsonl, csv, parquet):
        plain = load_prompts(path)
        with_refs = load_prompts(path, columns=("answer", "tests"))
        assert [p.extra for p in with_refs] == [{"answer": r["answer"], "tests": r["tests"]} for r in rows]
        assert plain == with_refs and [p.canonical() for p in plain] == [p.canonical() for p in with_refs]
        assert plain[0].extra == {}


def test_a_prompt_without_an_asked_for_column_names_its_line_and_the_column(tmp_path):
    path = _jsonl(tmp_path, ['{"id": "a", "prompt": "x", "answer": 1}\n', '{"id": "b", "prompt": "y"}\n'])
    with pytest.raises(
        PromptFileError, match=r"p.jsonl: line 2: no 'answer' \(expected a value in every row"
    ):
        load_prompts(path, columns=("answer",))
