"""`kdistill generate --shard i/N`: N jobs fill disjoint directories that, read as one, are the whole run."""

from __future__ import annotations

import json
import re

import pytest
from tests.generate.cli_main import cli_app
from typer.testing import CliRunner

from kdistill.generate.config import load_generation_config
from kdistill.generate.store import GenerationStoreError, iter_generations, load_generations
from kdistill.runs.sharding import Shard
from kdistill.schema import ConfigError

runner = CliRunner()
KEPT = ("record_id", "prompt_id", "sample_index", "prompt", "completion", "teacher", "sampling")


def _generate(server, prompts, out, *extra):
    flags = ["--prompts", str(prompts), "--out", str(out), "--base-url", server.base_url, "--model", "m"]
    flags += ["--api-key-env", "NO_SUCH_KEY_VAR", "--samples", "2", "--seed", "5", "--json", *extra]
    result = runner.invoke(cli_app(), ["generate", *flags])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _rows(dataset):
    return [{c: row[c] for c in KEPT} for row in dataset]


def test_two_shards_are_disjoint_and_together_equal_the_unsharded_run(server, prompts_file, tmp_path):
    prompts = prompts_file(12)
    whole = _generate(server, prompts, tmp_path / "whole")
    server.clear()
    parts = [tmp_path / "part-0", tmp_path / "part-1"]
    summaries = []
    for i, out in enumerate(parts):
        summaries.append(_generate(server, prompts, out, "--shard", f"{i}/2"))
    assert len(server.requests) == whole["total"] == 24  # each record asked for by exactly one job

    shard_ids = [set(load_generations(out)["record_id"]) for out in parts]
    assert shard_ids[0] and shard_ids[1] and not shard_ids[0] & shard_ids[1]
    for i, ids in enumerate(shard_ids):  # each holds exactly its hash part of the records
        assert all(Shard(i, 2).holds(r) for r in ids)
        assert summaries[i]["total"] == summaries[i]["committed"] == len(ids)
        assert summaries[i]["missing"] == 0

    expected = _rows(load_generations(tmp_path / "whole"))
    assert _rows(load_generations(parts)) == expected  # same rows, same order
    assert _rows(load_generations(parts[::-1])) == expected  # whatever order the parts are given in
    assert _rows(load_generations(parts, streaming=True)) == expected
    assert [r["record_id"] for r in iter_generations(parts)] == [r["record_id"] for r in expected]

    rerun = _generate(server, prompts, parts[0], "--shard", "0/2")  # a shard resumes like any run
    assert rerun["already_done"] == len(shard_ids[0]) and rerun["committed"] == 0


def test_overlapping_directories_are_refused_naming_the_id_and_both(server, prompts_file, tmp_path):
    prompts = prompts_file(4)
    _generate(server, prompts, tmp_path / "whole")
    _generate(server, prompts, tmp_path / "part-1", "--shard", "1/2")
    in_part = set(load_generations(tmp_path / "part-1")["record_id"])
    assert in_part  # 8 records: an empty part has odds 1/256
    # the whole run holds part 1's records too: reading both would train on them twice
    for read in (
        lambda dirs: load_generations(dirs),
        lambda dirs: list(iter_generations(dirs)),
        lambda dirs: list(load_generations(dirs, streaming=True)),
    ):
        with pytest.raises(GenerationStoreError) as err:
            read([tmp_path / "part-1", tmp_path / "whole"])
        named = re.match(r"record (\w+) is in both (\S+) and (\S+):", str(err.value))
        assert named is not None, str(err.value)
        assert named.group(1) in in_part  # an id the two really share
        assert named.groups()[1:] == (str(tmp_path / "part-1"), str(tmp_path / "whole"))
    with pytest.raises(GenerationStoreError, match="no output directory"):
        load_generations([])


def test_bad_shard_values_name_the_flag_or_field(server, prompts_file, tmp_path):
    flags = ["--prompts", str(prompts_file(2)), "--out", str(tmp_path / "o"), "--base-url", server.base_url]
    result = runner.invoke(cli_app(), ["generate", *flags, "--model", "m", "--shard", "2/2"])
    assert result.exit_code == 2 and "--shard: expected 0 <= i < N" in result.output
    assert not server.requests
    with pytest.raises(ConfigError, match="shard: expected 'i/N'"):
        load_generation_config(
            None, {"prompts": "p.jsonl", "out": "o", "teacher": {"model": "m"}, "shard": "half"}
        )
    cfg = load_generation_config(
        None, {"prompts": "p.jsonl", "out": "o", "teacher": {"model": "m"}, "shard": "1/3"}
    )
    assert cfg.shard == "1/3"
