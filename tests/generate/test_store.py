"""The output directory: torn journal tails, crashes between seal steps, hash checks, the lock, export."""

import json

import pyarrow.parquet as pq
import pytest

from kdistill.generate.store import (
    COLUMNS,
    ERRORS,
    JOURNAL,
    MANIFEST,
    REJECTS,
    GenerationStore,
    GenerationStoreError,
    export_generations,
    iter_generations,
    journal_line,
    load_generations,
    read_journal,
)


def _row(i: int, prompt_id: str | None = None) -> dict:
    return {
        "record_id": f"r{i:04d}",
        "prompt_id": prompt_id or str(i),
        "sample_index": 0,
        "prompt": f"p{i}",
        "messages": None,
        "completion": f"c{i}",
        "finish_reason": "stop",
        "teacher": "{}",
        "sampling": "{}",
        "prompt_tokens": 3,
        "completion_tokens": None,
        "logprobs": None,
        "created": "2026-01-01T00:00:00.000Z",
    }


def _store(path, **kw) -> GenerationStore:
    store = GenerationStore(path, **kw)
    store.open()
    return store


def test_rows_survive_close_and_reopen_as_one_shard(tmp_path):
    store = _store(tmp_path)
    store.append_rows([_row(1), _row(2)])
    store.append_rows([_row(3)])
    store.close()
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert [(s["file"], s["rows"]) for s in manifest["shards"]] == [("shards/shard-00000.parquet", 3)]
    assert (tmp_path / JOURNAL).stat().st_size == 0
    ds = load_generations(tmp_path)
    assert ds.column_names == list(COLUMNS)
    assert ds["record_id"] == ["r0001", "r0002", "r0003"]
    reopened = _store(tmp_path)
    assert reopened.done_ids == {"r0001", "r0002", "r0003"}
    with pytest.raises(GenerationStoreError, match="committed twice"):
        reopened.append_rows([_row(2)])
    reopened.close()


def test_journal_rotates_into_shards_of_shard_rows(tmp_path):
    store = _store(tmp_path, shard_rows=2)
    for i in range(5):
        store.append_rows([_row(i)])
    store.close()
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert [s["rows"] for s in manifest["shards"]] == [2, 2, 1]
    assert manifest["rows"] == 5
    assert len(load_generations(tmp_path)) == 5


def test_torn_journal_tail_is_never_read_and_is_dropped_at_open(tmp_path):
    store = _store(tmp_path)
    store.append_rows([_row(1), _row(2)])
    # the process dies: no close(); the last write was torn half-way through a line
    store._journal.write(journal_line(_row(3))[:40])
    store._journal.flush()
    store._lock.close()  # the OS releases the lock of a dead process
    rows, skipped = read_journal(tmp_path / JOURNAL)
    assert [r["record_id"] for r in rows] == ["r0001", "r0002"] and skipped == 1
    assert load_generations(tmp_path)["record_id"] == ["r0001", "r0002"]  # journal rows count as committed

    store = GenerationStore(tmp_path)
    report = store.open()
    assert (report.journal_rows_sealed, report.journal_lines_skipped) == (2, 1)
    assert store.done_ids == {"r0001", "r0002"}
    store.append_rows([_row(3)])  # the record whose line was torn is simply done again
    store.close()
    assert load_generations(tmp_path)["record_id"] == ["r0001", "r0002", "r0003"]


def test_a_corrupt_journal_line_is_skipped_not_trusted(tmp_path):
    line = journal_line(_row(1))
    corrupt = line.replace(b'"c1"', b'"cX"')  # same length, checksum no longer matches
    (tmp_path / JOURNAL).write_bytes(corrupt + journal_line(_row(2)))
    (tmp_path / MANIFEST).write_text(
        json.dumps({"format": "kdistill.generations/1", "shards": [], "rows": 0, "next_shard": 0})
    )
    rows, skipped = read_journal(tmp_path / JOURNAL)
    assert [r["record_id"] for r in rows] == ["r0002"] and skipped == 1


def test_crash_after_shard_written_before_manifest_leaves_no_duplicate(tmp_path):
    store = _store(tmp_path)
    store.append_rows([_row(1), _row(2)])
    store._journal.close()
    # simulate a crash between "shard renamed into place" and "manifest lists it"
    from kdistill.generate.store import _rows_to_parquet

    orphan = tmp_path / "shards" / "shard-00000.parquet"
    orphan.write_bytes(_rows_to_parquet(store._journal_rows))
    (tmp_path / "shards" / ".shard-00001.parquet.abc.tmp").write_bytes(b"half")
    store._lock.close()

    store = GenerationStore(tmp_path)
    report = store.open()
    assert sorted(report.orphan_files_removed) == [
        "shards/.shard-00001.parquet.abc.tmp",
        "shards/shard-00000.parquet",
    ]
    assert report.journal_rows_sealed == 2
    store.close()
    assert load_generations(tmp_path)["record_id"] == ["r0001", "r0002"]


def test_crash_after_manifest_before_journal_truncation_drops_the_doubles(tmp_path):
    store = _store(tmp_path)
    store.append_rows([_row(1), _row(2)])
    journal = (tmp_path / JOURNAL).read_bytes()
    store.close()  # sealed: shard listed, journal truncated
    (tmp_path / JOURNAL).write_bytes(journal)  # ... but pretend the truncation never happened
    assert load_generations(tmp_path)["record_id"] == ["r0001", "r0002"]
    store = GenerationStore(tmp_path)
    report = store.open()
    assert report.duplicate_rows_dropped == 2 and report.journal_rows_sealed == 0
    store.close()
    ds = load_generations(tmp_path)
    assert ds["record_id"] == ["r0001", "r0002"]


def test_manifest_hash_mismatch_is_a_clear_error(tmp_path):
    store = _store(tmp_path)
    store.append_rows([_row(1), _row(2)])
    store.close()
    shard = tmp_path / "shards" / "shard-00000.parquet"
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, 1), shard)  # a valid parquet file, but not the one that was committed
    with pytest.raises(
        GenerationStoreError, match=r"shard-00000.parquet: sha256 mismatch .*modified or corrupted"
    ):
        load_generations(tmp_path)
    with pytest.raises(GenerationStoreError, match="sha256 mismatch"):
        GenerationStore(tmp_path).open()  # a writer refuses to continue on a corrupt directory too
    shard.unlink()
    with pytest.raises(
        GenerationStoreError, match=r"shard-00000.parquet: listed in manifest.json but missing"
    ):
        load_generations(tmp_path)


def test_not_an_output_directory(tmp_path):
    with pytest.raises(GenerationStoreError, match="not a generation output directory"):
        load_generations(tmp_path)
    (tmp_path / MANIFEST).write_text('{"format": "other"}')
    with pytest.raises(GenerationStoreError, match="not a kdistill generation manifest"):
        load_generations(tmp_path)


def test_one_writer_at_a_time(tmp_path):
    store = _store(tmp_path)
    with pytest.raises(GenerationStoreError, match="another process is writing"):
        GenerationStore(tmp_path).open()
    store.close()
    GenerationStore(tmp_path).open()


def test_rejects_and_errors_logs_lose_only_a_torn_tail(tmp_path):
    store = _store(tmp_path)
    store.append_rejects([{"record_id": "a", "reason": "length"}])
    store.append_errors([{"record_id": "b", "code": "http_500"}])
    store.close()
    with (tmp_path / REJECTS).open("ab") as f:
        f.write(b'{"record_id": "c", "rea')
    store = GenerationStore(tmp_path)
    report = store.open()
    assert report.log_bytes_cut == len(b'{"record_id": "c", "rea')
    assert store.rejected_ids == {"a"}
    store.append_rejects([{"record_id": "d", "reason": "length"}])
    store.close()
    lines = [json.loads(x) for x in (tmp_path / REJECTS).read_text().splitlines()]
    assert [x["record_id"] for x in lines] == ["a", "d"]
    assert json.loads((tmp_path / ERRORS).read_text())["code"] == "http_500"


def test_rows_are_ordered_by_prompt_id_then_sample(tmp_path):
    store = _store(tmp_path)
    rows = [_row(1, "10"), _row(2, "9"), _row(3, "b"), _row(4, "a")]
    rows.append({**_row(5, "9"), "sample_index": 1})
    rows[1]["sample_index"] = 2
    store.append_rows(rows)
    store.close()
    ds = load_generations(tmp_path)
    assert list(zip(ds["prompt_id"], ds["sample_index"], strict=True)) == [
        ("9", 1),
        ("9", 2),
        ("10", 0),
        ("a", 0),
        ("b", 0),
    ]


def test_export_jsonl_and_parquet_round_trip(tmp_path):
    store = _store(tmp_path / "out")
    chat = {**_row(2), "prompt": None, "messages": [{"role": "user", "content": "hi"}], "logprobs": "[]"}
    store.append_rows([_row(1), chat])
    store.close()
    expected = load_generations(tmp_path / "out").to_list()
    export_generations(tmp_path / "out", tmp_path / "x.jsonl")
    export_generations(tmp_path / "out", tmp_path / "x.parquet")
    as_jsonl = [json.loads(line) for line in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert as_jsonl == expected
    assert pq.read_table(tmp_path / "x.parquet").to_pylist() == expected
    assert expected[1]["messages"] == [{"role": "user", "content": "hi"}] and expected[0]["messages"] is None
    with pytest.raises(GenerationStoreError, match=r"x.csv: export format by suffix: .jsonl or .parquet"):
        export_generations(tmp_path / "out", tmp_path / "x.csv")


# ---------------------------------------------------------------- streaming


def _shard_files_in_order(path) -> list[str]:
    """Record ids shard after shard as the files hold them: what a naive shard-by-shard reader yields."""
    manifest = json.loads((path / MANIFEST).read_text())
    return [
        rid for s in manifest["shards"] for rid in pq.read_table(path / s["file"])["record_id"].to_pylist()
    ]


def _interleaved_store(path) -> None:
    """Shards whose prompt ranges interleave (a later run added sample 1 of the same prompts, in another
    commit order), tied keys (allow_mixed), and journal rows left by a crash, one already in a shard."""
    rows = [_row(i, str(p)) for i, p in enumerate([3, 1, 10, 2, 7, 5, 4], start=1)]
    rows += [{**_row(i, str(p)), "sample_index": 1} for i, p in enumerate([2, 10, 1, 3], start=20)]
    rows += [_row(30, "a"), _row(31, "3"), _row(32, "b")]  # prompt 3, sample 0 again: a tie with r0001
    store = _store(path, shard_rows=3)
    for row in rows:
        store.append_rows([row])
    store.close()
    store = _store(path, shard_rows=100)
    store.append_rows([_row(40, "2"), {**_row(41, "7"), "sample_index": 1}, _row(42, "0")])
    journal = (path / JOURNAL).read_bytes()
    store._journal.close()  # a crash: these rows stay in the journal
    store._lock.close()
    # a seal that died before truncating the journal: its first row is both in a shard and in the journal
    (path / JOURNAL).write_bytes(journal_line(_row(1, "3")) + journal)


def test_streaming_gives_the_eager_rows_in_the_eager_order(tmp_path):
    _interleaved_store(tmp_path)
    eager = load_generations(tmp_path).to_list()
    assert len(eager) == 17 and len({r["record_id"] for r in eager}) == 17
    assert len(json.loads((tmp_path / MANIFEST).read_text())["shards"]) == 5
    # the files alone are not in that order: the streaming reader must merge, not concatenate
    assert _shard_files_in_order(tmp_path) != [r["record_id"] for r in eager if r["record_id"] < "r0040"]
    assert list(iter_generations(tmp_path)) == eager
    streamed = load_generations(tmp_path, streaming=True)
    assert list(streamed) == eager
    assert list(streamed) == eager  # iterable again, from the start
    shards_only = load_generations(tmp_path, include_journal=False).to_list()
    assert len(shards_only) == 14
    assert list(iter_generations(tmp_path, include_journal=False)) == shards_only
    assert list(load_generations(tmp_path, include_journal=False, streaming=True)) == shards_only


def test_streaming_checks_a_shard_only_when_it_reaches_it(tmp_path):
    store = _store(tmp_path, shard_rows=2)
    for i in range(1, 7):
        store.append_rows([_row(i)])  # shards: prompts 1-2, 3-4, 5-6
    store.close()
    expected = load_generations(tmp_path).to_list()
    last = tmp_path / "shards" / "shard-00002.parquet"
    pq.write_table(pq.read_table(last).slice(0, 1), last)  # valid Parquet, not the committed bytes
    streamed = load_generations(tmp_path, streaming=True)  # reads the manifest only: no error yet
    got = []
    with pytest.raises(
        GenerationStoreError, match=r"shard-00002.parquet: sha256 mismatch .*modified or corrupted"
    ):
        for row in streamed:
            got.append(row)
    assert got == expected[:4]  # the first two shards' rows came out before the bad one was read

    last.write_bytes(b"not parquet at all")
    with pytest.raises(GenerationStoreError, match=r"shard-00002.parquet: sha256 mismatch"):
        next(iter_generations(tmp_path))  # unreadable while planning: the hash says why
    last.unlink()
    rows = iter_generations(tmp_path)  # a generator: nothing read yet
    with pytest.raises(
        GenerationStoreError, match=r"shard-00002.parquet: listed in manifest.json but missing"
    ):
        next(rows)
    with pytest.raises(GenerationStoreError, match="not a generation output directory"):
        load_generations(tmp_path / "nowhere", streaming=True)
