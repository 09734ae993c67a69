"""`kdistill verify`: every answer of a generations directory checked by the configured verifiers, each
verdict stored once; optionally the selected, cleaned answers exported as a training file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from kdistill.cli.output import CountBar, console, err_console, fail

EXIT_UNVERIFIED = 1
EXIT_INTERRUPTED = 130


def verify_command(
    generations: Annotated[
        list[Path],
        typer.Option(help="a generations directory (`kdistill generate --out`); repeat it for several"),
    ],
    config: Annotated[Path, typer.Option(help="a YAML file with a `verify:` section")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="dotted overrides of the verify section, e.g. require=any", show_default=False),
    ] = None,
    prompts: Annotated[
        Path | None, typer.Option(help="the prompt file with the references (overrides verify.prompts)")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="verdicts directory (default: verify.out, else <generations>/verdicts)"),
    ] = None,
    export: Annotated[
        Path | None,
        typer.Option(
            help="write the selected, deduplicated, decontaminated answers (.jsonl or .parquet) with their verdicts"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Check every teacher answer with the configured verifiers; store each verdict exactly once.

    Examples:

      kdistill verify --generations gens/ --config verify.yaml

      kdistill verify --generations gens/ --config verify.yaml --export train.jsonl --json

    A `verify.yaml`:

      verify:

        prompts: problems.jsonl          # with an `answer` (or `tests`, ...) column per prompt

        verifiers: [{name: answer_match, mode: numeric}]

        select: {keep: all_correct}

    Rerun the same command after a crash or Ctrl-C: stored verdicts are kept, only missing ones are computed;
    a changed verifier option or reference re-verifies only the answers it concerns.

    Exit codes: 0 done, 1 answers left unverified (a verifier could not decide: rerun), 2 user error, 130 interrupted.
    """
    from kdistill.generate.prompts import PromptFileError
    from kdistill.generate.store import GenerationStoreError
    from kdistill.schema import ConfigError
    from kdistill.verify.config import load_verify_config
    from kdistill.verify.run import VerificationError, verify_generations
    from kdistill.verify.store import VerdictStoreError

    try:
        cfg = load_verify_config(config, overrides)
    except ConfigError as err:
        raise fail(str(err), "`kdistill verify --help` shows an example config") from None
    gen_dirs: Any = generations[0] if len(generations) == 1 else generations
    view = None if as_json else CountBar(err_console, "verify", "answers")
    try:
        try:
            result = verify_generations(gen_dirs, cfg, prompts=prompts, out_dir=out, progress=view)
        finally:
            if view is not None:
                view.stop()
        exported = _export(gen_dirs, result, cfg, export) if export is not None else None
    except KeyboardInterrupt:
        err_console.print("interrupted: stored verdicts are kept; rerun the same command to continue")
        raise typer.Exit(code=EXIT_INTERRUPTED) from None
    except (
        VerificationError,
        PromptFileError,
        GenerationStoreError,
        VerdictStoreError,
        ConfigError,
        OSError,
    ) as err:
        raise fail(str(err).strip("'\"")) from None

    summary = result.to_dict() | ({"export": exported} if exported else {})
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        console.print(_summary_table(result))
        if exported:
            console.print(_filters_table(exported["filters"]))
            console.print(f"{exported['rows']} answers written to {exported['path']}")
        for failure in result.failures[:5]:
            err_console.print(
                f"[yellow]unverified:[/] {failure['record_id']} ({failure['verifier']}): {failure['error']}",
                soft_wrap=True,
            )
    if result.failures:
        raise typer.Exit(code=EXIT_UNVERIFIED)


def _export(gen_dirs: Any, result: Any, cfg: Any, path: Path) -> dict[str, Any]:
    """The curated rows (verify.select, dedup, decontaminate against verify.decontaminate.against) as a file."""
    from kdistill.curate.pipeline import curate, with_verdicts
    from kdistill.generate.prompts import load_prompts
    from kdistill.generate.store import load_generations
    from kdistill.io import atomic_write_text

    rows = with_verdicts([dict(r) for r in load_generations(gen_dirs)], result.records)
    against = cfg.decontaminate.against
    eval_texts = [p.as_messages()[-1]["content"] for p in load_prompts(against)] if against else []
    curated = curate(rows, cfg, eval_texts=eval_texts)
    if path.suffix == ".jsonl":
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in curated.rows))
    elif path.suffix == ".parquet":
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        from kdistill.io import atomic_write_bytes

        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(curated.rows), buffer)
        atomic_write_bytes(path, buffer.getvalue())
    else:
        raise OSError(f"--export {path}: expected a .jsonl or .parquet file name")
    return {"path": str(path), "rows": len(curated.rows), "filters": curated.table()}


def _summary_table(result: Any) -> Any:
    from rich.table import Table

    table = Table("verifier", "reason", "answers", title=f"verdicts in {result.out_dir}")
    for name, counts in result.reasons().items():
        for reason, n in counts.most_common():
            table.add_row(name, reason, str(n))
    table.add_section()
    total = len(result.records)
    share = f" ({result.accepted / total:.1%})" if total else ""
    table.add_row("accepted", f"require {len(result.verifiers)} verifier(s)", f"{result.accepted}{share}")
    for k, value in result.to_dict()["pass_at_k"].items():
        if value is not None:
            table.add_row(f"pass@{k}", "unbiased, over prompts", f"{value:.3f}")
    table.add_row("computed / reused", "", f"{result.computed} / {result.reused}")
    return table


def _filters_table(filters: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table("filter", "before", "removed", "after", "why", title="what the student would train on")
    for f in filters:
        why = ", ".join(f"{k} {v}" for k, v in f["reasons"].items() if v)
        table.add_row(f["name"], str(f["before"]), str(f["removed"]), str(f["after"]), why)
    return table
