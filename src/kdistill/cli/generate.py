"""`kdistill generate`: a teacher answers a prompt file; the answers become a dataset directory.

Printing happens here only: the library (`kdistill.generate.run.generate`) reports through a progress
callback and returns a summary object.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from kdistill.cli.output import FittingProgress, console, err_console, fail

EXIT_MISSING = 1  # the run ended with records still missing (errors, or stopped early): rerun to fill
EXIT_INTERRUPTED = 130


def generate_command(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="a YAML file with a `generation:` section (flags override it)", show_default=False
        ),
    ] = None,
    prompts: Annotated[
        Path | None, typer.Option(help="prompt file: .jsonl, .csv, .parquet or a dataset directory")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="output directory (rerun the same command to resume)")
    ] = None,
    base_url: Annotated[
        list[str] | None,
        typer.Option(
            help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1; repeat it for several servers "
            "of the same model (requests go to the least busy one; record ids then name no server)"
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="model name the endpoint serves")] = None,
    hf_model: Annotated[
        str | None, typer.Option(help="use a local Hugging Face model (directory or hub id) as the teacher")
    ] = None,
    gguf_file: Annotated[
        str | None, typer.Option(help="with --hf-model: a GGUF file inside that directory or repo to load")
    ] = None,
    api: Annotated[
        str | None, typer.Option(help="auto | chat | completions (completions: plain prompts, raw text)")
    ] = None,
    concurrency: Annotated[int | None, typer.Option(help="requests in flight at once (default 16)")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="most new tokens per answer (default 512)")] = None,
    temperature: Annotated[
        float | None, typer.Option(help="sampling temperature, 0 = greedy (default 1.0)")
    ] = None,
    samples: Annotated[int | None, typer.Option(help="answers per prompt (default 1)")] = None,
    seed: Annotated[int | None, typer.Option(help="base seed (sample i is sent seed + i)")] = None,
    top_logprobs: Annotated[
        int | None,
        typer.Option(help="store logprobs with the top-K alternatives per token (OpenAI: at most 20)"),
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(help="name of the environment variable holding the API key (default OPENAI_API_KEY)"),
    ] = None,
    requests_per_minute: Annotated[
        float | None, typer.Option("--rpm", help="client-side limit on requests per minute")
    ] = None,
    tokens_per_minute: Annotated[
        float | None, typer.Option("--tpm", help="client-side limit on tokens per minute")
    ] = None,
    allow_length: Annotated[
        bool | None,
        typer.Option("--allow-length", help="keep answers cut off by --max-tokens", show_default=False),
    ] = None,
    retry_rejects: Annotated[
        bool | None,
        typer.Option("--retry-rejects", help="ask again for rejected records", show_default=False),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            help="i/N: only the records of part i (from 0) of N, by a hash of the record id, for N jobs of "
            "a cluster array; give each its own --out and read them together: load_generations([DIR, ...])"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Have a teacher answer every prompt; the answers become a dataset (resumable, exactly once).

    Examples:

      kdistill generate --prompts prompts.jsonl --out gens/ --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-7B-Instruct

      OPENAI_API_KEY=... kdistill generate --prompts p.csv --out gens/ --base-url https://api.openai.com/v1 --model gpt-4o-mini --samples 4 --top-logprobs 5 --concurrency 32

      kdistill generate my.yaml --out gens-2/        # a YAML with a `generation:` section; flags override it

    Rerun the same command after a crash or Ctrl-C: only records without a row are requested.

    Output: shards/ + manifest.json (the rows), rejects.jsonl (unusable answers, with a reason code), errors.jsonl (failed requests). Load the rows with kdistill.generate.store.load_generations(DIR) (streaming=True for a directory larger than memory).

    Exit codes: 0 done, 1 records still missing (rerun to retry them), 2 user error, 130 interrupted.
    """
    from pydantic import ValidationError

    from kdistill.generate.prompts import PromptFileError
    from kdistill.generate.run import GenerationError, check_servers, generate, load_generation_config
    from kdistill.generate.store import GenerationStoreError
    from kdistill.generate.teachers import TeacherError
    from kdistill.schema import ConfigError

    teacher: dict[str, Any] = {}
    if hf_model is not None:
        teacher.update(kind="hf_local", model=hf_model)
    _put_servers(teacher, base_url)
    _put(teacher, model=model, api=api, api_key_env=api_key_env, gguf_file=gguf_file)
    sampling: dict[str, Any] = {}
    _put(
        sampling,
        max_tokens=max_tokens,
        temperature=temperature,
        samples=samples,
        seed=seed,
        top_logprobs=top_logprobs,
    )
    overrides: dict[str, Any] = {}
    _put(
        overrides,
        prompts=prompts,
        out=out,
        concurrency=concurrency,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        allow_length=allow_length,
        retry_rejects=retry_rejects,
    )
    if teacher:
        overrides["teacher"] = teacher
    if sampling:
        overrides["sampling"] = sampling
    _put_shard(overrides, shard)

    try:
        cfg = load_generation_config(config, overrides)
    except ConfigError as err:
        raise fail(str(err), "flags: --prompts FILE --out DIR --base-url URL --model NAME") from None

    view = _ProgressView(err_console) if not as_json else None
    try:
        for note in check_servers(cfg):  # seconds: an absent server or a wrong model name fails here
            err_console.print(f"[dim]note: {escape(note)}[/]", soft_wrap=True, highlight=False)
        try:
            summary = generate(cfg, progress=view)
        finally:
            if view is not None:
                view.stop()
    except KeyboardInterrupt:
        err_console.print(
            f"interrupted: committed rows are kept; rerun the same command to continue ({cfg.out})"
        )
        raise typer.Exit(code=EXIT_INTERRUPTED) from None
    except (
        GenerationError,
        GenerationStoreError,
        PromptFileError,
        TeacherError,
        ValidationError,
        OSError,
        ValueError,  # transformers' way of saying a model directory is unusable
    ) as err:
        raise fail(str(err)) from None

    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        console.print(_summary_table(summary))
        for note in summary.notes:
            console.print(f"[dim]note: {note}[/]", soft_wrap=True)
    if summary.stopped:
        err_console.print(f"[bold red]stopped:[/] {summary.stopped}", soft_wrap=True, highlight=False)
    if summary.missing:
        todo = (
            "check the base URL (see the note above), then rerun the same command"
            if "http_404" in summary.error_codes
            else "rerun the same command to retry them"
        )
        err_console.print(
            f"{summary.missing} records have no row yet (see {Path(summary.out_dir) / 'errors.jsonl'}); {todo}",
            soft_wrap=True,
            highlight=False,
        )
        raise typer.Exit(code=EXIT_MISSING)


def _put_shard(overrides: dict[str, Any], shard: str | None) -> None:
    """--shard i/N, checked here so that its error names the flag."""
    from kdistill.runs.sharding import ShardSpecError, parse_shard

    if shard is None:
        return
    try:
        overrides["shard"] = str(parse_shard(shard, flag="--shard"))
    except ShardSpecError as err:
        raise fail(str(err), "e.g. --shard 0/4 ... --shard 3/4 for 4 jobs") from None


def _put_servers(teacher: dict[str, Any], base_urls: list[str] | None) -> None:
    """--base-url once: teacher.base_url (one server, as always); repeated: teacher.endpoints (a pool)."""
    if not base_urls:
        return
    teacher["kind"] = "openai"
    if len(base_urls) == 1:
        teacher["base_url"] = base_urls[0]
    else:
        teacher["endpoints"] = [{"base_url": url} for url in base_urls]


def _put(target: dict[str, Any], **values: Any) -> None:
    target.update({k: v for k, v in values.items() if v is not None})


class _ProgressView:
    """A rich progress bar fed by the library's progress callback: done/total, answered requests per
    second, tokens per second, trouble (retries, rejects, errors: only those that happened), elapsed, ETA.

    The line fits the console (`FittingProgress`): the bar goes first, then tok/s, then the trouble, so
    that the count, rate, elapsed time and ETA are always there. The rate counts answered requests only
    ("ok req/s"): failed attempts say nothing about how fast the work gets done.
    """

    def __init__(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        bar = BarColumn(bar_width=30)
        tokens = TextColumn("{task.fields[tps]:.0f} tok/s")
        trouble = TextColumn("{task.fields[trouble]}")
        self.progress = _with_endpoint_lines(FittingProgress)(
            TextColumn("[bold]generate"),
            bar,
            MofNCompleteColumn(),
            TextColumn("{task.fields[rps]:.1f} ok req/s"),
            tokens,
            trouble,
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            drop_first=[bar, tokens, trouble],
        )
        self.task: Any = None

    def __call__(self, stats: Any) -> None:
        elapsed = max(stats.elapsed, 1e-6)
        counts = {"retries": stats.retries, "rejects": stats.rejected, "errors": stats.errors}
        fields = {
            "rps": stats.answered / elapsed,
            "tps": stats.completion_tokens / elapsed,
            "trouble": " ".join(f"{name} {n}" for name, n in counts.items() if n),
        }
        self.progress.endpoint_lines = [_endpoint_line(e) for e in getattr(stats, "endpoints", ())]
        if self.task is None:  # rows done before this run must not count towards the speed (ETA)
            self.progress.start()
            self.task = self.progress.add_task("generate", total=stats.total, completed=stats.done, **fields)
        else:
            self.progress.update(self.task, total=stats.total, completed=stats.done, **fields)

    def stop(self) -> None:
        if self.task is not None:
            self.progress.stop()


def _with_endpoint_lines(progress_class: Any) -> Any:
    """`progress_class` that shows one line per server of a pool under its bars (rich's documented way
    to add renderables: override `get_renderables`)."""

    class ProgressWithEndpoints(progress_class):
        endpoint_lines: list[str] = []

        def get_renderables(self) -> Any:
            yield from super().get_renderables()
            if self.endpoint_lines:
                from rich.text import Text

                yield Text.from_markup("\n".join(self.endpoint_lines))

    return ProgressWithEndpoints


def _endpoint_line(status: Any) -> str:
    """One server of a pool: URL, health, answer rate, requests in flight (of its cap), sent / failed."""
    from rich.markup import escape

    health = {"up": "[green]up[/]", "probing": "[yellow]probing[/]", "down": "[red]down[/]"}[status.state]
    if status.state == "down" and status.retry_in_s is not None:
        health += f" (probe in {status.retry_in_s:.0f} s)"
    cap = "" if status.concurrency is None else f"/{status.concurrency}"
    return (
        f"  {escape(status.url)}  {health}  {status.rate:.1f} req/s  in flight {status.outstanding}{cap}  "
        f"answered {status.answered}  failed {status.failed}"
    )


def _summary_table(summary: Any) -> Any:
    from rich.table import Table

    done_before = f" ({summary.already_done} before this run)" if summary.already_done else ""
    table = Table(title=f"generation: {summary.rows_in_dataset} rows in {summary.out_dir}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("records", f"{summary.total}{done_before}")
    table.add_row("rows committed", str(summary.committed))
    table.add_row("rejected", _with_counts(summary.rejected, summary.reject_reasons))
    table.add_row("errors", _with_counts(summary.errors, summary.error_codes))
    table.add_row("missing", str(summary.missing))
    table.add_row("requests / retries", f"{summary.requests} / {summary.retries}")
    elapsed = max(summary.elapsed_s, 1e-6)
    table.add_row(
        "tokens (prompt + completion)",
        f"{summary.prompt_tokens:,} + {summary.completion_tokens:,} "
        f"({summary.completion_tokens / elapsed:,.0f} completion tok/s)",
    )
    if summary.cost is not None:
        table.add_row("cost", f"{summary.cost:.4f}")
    table.add_row("time", f"{summary.elapsed_s:.1f} s ({summary.requests / elapsed:.1f} req/s)")
    for e in getattr(summary, "endpoints", ()):  # the servers of a pool (teacher.endpoints)
        table.add_row(
            f"server {e['url']}",
            f"{e['answered']} answered, {e['failed']} failed, out of rotation {e['ejections']} times",
        )
    return table


def _with_counts(total: int, counts: dict[str, int]) -> str:
    if not counts:
        return str(total)
    return f"{total} (" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + ")"


__all__ = ["generate_command"]
