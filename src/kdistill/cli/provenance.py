"""`kdistill provenance`: watermark detection, radioactivity (open weights or behind an API), model equality.

Each command prints a report with a p-value.

Printing happens here only: the detectors (`kdistill.provenance.*`) return `ProvenanceReport`s. Keys are
read from the environment variable named by `--key-env` and never printed; reports show a fingerprint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from kdistill.cli.output import CountBar, console, err_console, fail

provenance_app = typer.Typer(
    help="Provenance tests with calibrated p-values: is a text watermarked, did a model learn from "
    "watermarked text, do two sources sample the same distribution.\n\n"
    "Every command prints the statistic, its p-value, what it was computed under, and how many items "
    "were scored; --json prints the full report. Evidence, not proof.",
    no_args_is_help=True,
)

KeyEnvOpt = Annotated[
    str,
    typer.Option(help="name of the environment variable holding the watermark key (never the key itself)"),
]
GammaOpt = Annotated[float, typer.Option(help="green fraction the watermark was made with")]
WidthOpt = Annotated[int, typer.Option(help="context width (previous tokens) the watermark was made with")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the full report(s) as JSON")]


def _key(env: str) -> bytes:
    from kdistill.provenance.watermark import WatermarkKeyError, key_from_env

    try:
        return key_from_env(env)
    except WatermarkKeyError as err:
        raise fail(str(err), f"export {env}=... (the key the watermark was made with)") from None


def _tokenizer(ref: str, field: str = "--tokenizer") -> Any:
    """The tokenizer of any model reference (a folder, a hub id, a .gguf file, pkg:<package>[/<path>]), or a
    one-line user error naming the option."""
    from kdistill.lm.models import load_tokenizer_ref

    try:
        return load_tokenizer_ref(ref, field=field)
    except (OSError, ValueError) as err:  # FileNotFoundError is an OSError
        raise fail(str(err).splitlines()[0]) from None


def _labelled_texts(source: Path) -> list[tuple[str, str]]:
    """(label, text) for each non-blank text of SOURCE; none at all is a user error that says why.

    SOURCE: a generation output directory (its completions), another directory (its *.txt files, one text
    each), a .jsonl file (one {"text": ...} per line) or any other file (one text).
    """
    from kdistill.generate.store import MANIFEST, GenerationStoreError, load_generations_table

    if source.is_dir() and (source / MANIFEST).exists():
        try:
            table = load_generations_table(source)
        except GenerationStoreError as err:
            raise fail(str(err)) from None
        columns = [table.column(c).to_pylist() for c in ("prompt_id", "sample_index", "completion")]
        found = [(f"prompt {p} sample {i}", t or "") for p, i, t in zip(*columns, strict=True)]
        what = f"all {len(found)} completions are blank" if found else "it holds no completions"
    elif source.is_dir():
        files = sorted(p for p in source.rglob("*.txt") if p.is_file())
        found = [(str(p.relative_to(source)), _read(p)) for p in files]
        what = (
            f"all {len(found)} .txt files are blank"
            if found
            else f"not a generation output directory (no {MANIFEST}) and no .txt files in it"
        )
    elif source.suffix == ".jsonl":
        found = _jsonl_texts(source)
        what = f"all {len(found)} texts are blank" if found else "the file holds no lines"
    else:
        found = [(str(source), _read(source))]
        what = "the file is empty" if not found[0][1] else "the file is blank"
    texts = [(label, text) for label, text in found if text.strip()]
    if not texts:
        raise fail(f"{source}: no test possible: {what}")
    return texts


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise fail(f"{path}: cannot read ({err})") from None


def _jsonl_texts(path: Path) -> list[tuple[str, str]]:
    texts = []
    for number, line in enumerate(_read(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise fail(f"{path}: line {number}: invalid JSON ({err.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise fail(f'{path}: line {number}: expected an object with a "text" string')
        texts.append((f"line {number}", row["text"]))
    return texts


def _texts(source: Path) -> list[str]:
    return [text for _, text in _labelled_texts(source)]


def _print(reports: dict[str, Any], as_json: bool) -> None:

    if as_json:
        typer.echo(json.dumps({k: None if r is None else r.to_dict() for k, r in reports.items()}, indent=2))
        return
    for report in reports.values():
        if report is not None:
            console.print(report.summary(), soft_wrap=True, highlight=False, markup=False)


def _warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True, highlight=False)


TEXTS_HELP = (
    "a generation output directory (its completions), a directory of .txt files (one text each), "
    'a .jsonl file (one {"text": ...} per line) or a text file (one text)'
)
SourceArg = Annotated[Path, typer.Argument(help=TEXTS_HELP, show_default=False)]


@provenance_app.command("detect")
def detect_command(
    source: SourceArg,
    tokenizer: Annotated[
        str,
        typer.Option(
            help="the watermarking model's tokenizer (a model folder, hub id, .gguf file or pkg:<package>/<path>)"
        ),
    ],
    key_env: KeyEnvOpt = "KDISTILL_WATERMARK_KEY",
    gamma: GammaOpt = 0.25,
    context_width: WidthOpt = 1,
    per_text: Annotated[
        bool,
        typer.Option(
            "--per-text", help="test each text on its own (default: all texts pooled into one test)"
        ),
    ] = False,
    reference: Annotated[
        Path | None,
        typer.Option(
            help="human-written reference texts (same forms as SOURCE): adds each text's empirical p-value, "
            "its z ranked among theirs under the same key; implies --per-text",
            show_default=False,
        ),
    ] = None,
    alpha: Annotated[
        float, typer.Option(help="level you will judge at; with --reference, notes when too few references")
    ] = 0.05,
    as_json: JsonOpt = False,
) -> None:
    """Test whether text carries the green-list watermark of a key (all texts of SOURCE pooled, or each alone).

    Pooling (the default) counts every distinct (context, token) pair once and is the recommended test.
    --per-text tests each text alone; under one fixed key those verdicts are correlated across texts
    (common word pairs share their green bits), so give --reference with human texts to calibrate them.

    Examples:

      KDISTILL_WATERMARK_KEY=... kdistill provenance detect gens/ --tokenizer ./teacher

      kdistill provenance detect answer.txt --tokenizer ./teacher --key-env MY_KEY --json

      kdistill provenance detect suspects/ --tokenizer ./teacher --reference human-texts/
    """
    from kdistill.provenance.watermark import NothingToScoreError, detect_watermark

    key = _key(key_env)
    tok = _tokenizer(tokenizer)
    labels, texts = zip(*_labelled_texts(source), strict=True)
    ids = tok(list(texts), add_special_tokens=False)["input_ids"]
    if reference is None and not per_text:
        try:
            report = detect_watermark(ids, key, gamma=gamma, context_width=context_width, vocab_size=len(tok))
        except NothingToScoreError as err:
            raise fail(f"{source}: no test possible: {err}") from None
        _print({"watermark": report}, as_json)
        return

    test = _per_text_test(key, tok, reference, gamma=gamma, context_width=context_width, alpha=alpha)
    reports, unscored = [], []
    for label, seq in zip(labels, ids, strict=True):
        try:
            reports.append((label, test(seq)))
        except NothingToScoreError:
            unscored.append(label)
    if not reports:
        raise fail(
            f"{source}: no test possible: none of its {len(unscored)} texts is longer than the context width "
            f"({context_width} token(s)), so no (context, token) pair can be scored"
        )
    if unscored:
        shown = ", ".join(unscored[:5]) + (", ..." if len(unscored) > 5 else "")
        _warn(f"{len(unscored)} of {len(labels)} texts too short to score a pair were left out: {shown}")
    if reference is None and not as_json:
        err_console.print(
            "[dim]note: per-text p-values under one key are correlated across texts and hold over random "
            "keys, not for this key; --reference calibrates them (docs/provenance.md)[/]",
            soft_wrap=True,
        )
    if as_json:
        rows = [{"text": label, "report": report.to_dict()} for label, report in reports]
        typer.echo(json.dumps({"per_text": rows, "unscored": unscored}, indent=2))
        return
    for label, report in reports:
        console.print(f"{label}: {report.summary()}", soft_wrap=True, highlight=False, markup=False)


def _per_text_test(
    key: bytes, tok: Any, reference: Path | None, *, gamma: float, context_width: int, alpha: float
) -> Any:
    """The test applied to each text's ids: plain `detect_watermark`, or calibrated on `reference` texts."""
    from kdistill.provenance.calibration import calibrated_detection, reference_null
    from kdistill.provenance.watermark import NothingToScoreError, detect_watermark

    if not 0.0 < alpha < 1.0:
        raise fail(f"--alpha must be in (0, 1), got {alpha}")
    if reference is None:
        return lambda ids: detect_watermark(
            ids, key, gamma=gamma, context_width=context_width, vocab_size=len(tok)
        )
    texts = [text for _, text in _labelled_texts(reference)]
    try:
        null = reference_null(
            tok(texts, add_special_tokens=False)["input_ids"], key, gamma=gamma, context_width=context_width
        )
    except NothingToScoreError as err:
        raise fail(f"{reference}: no test possible: {err}") from None
    if null.skipped:
        _warn(f"{reference}: {null.skipped} reference texts with fewer than {null.min_scored} pairs left out")
    return lambda ids: calibrated_detection(ids, key, null, alpha=alpha, vocab_size=len(tok))


@provenance_app.command("radioactivity")
def radioactivity_command(
    suspect: Annotated[
        str,
        typer.Argument(
            help="the suspect model (a folder, hub id, .gguf file or pkg:<package>/<path>)",
            show_default=False,
        ),
    ],
    texts: Annotated[
        Path,
        typer.Option(help=f"texts to feed it (ideally watermarked): {TEXTS_HELP}"),
    ],
    tokenizer: Annotated[
        str | None, typer.Option(help="tokenizer (default: the suspect's; must be the watermarking model's)")
    ] = None,
    key_env: KeyEnvOpt = "KDISTILL_WATERMARK_KEY",
    gamma: GammaOpt = 0.25,
    context_width: WidthOpt = 1,
    wrong_keys: Annotated[
        int, typer.Option(help="random keys for the green-mass rank test (0: skip it; smallest p = 1/(n+1))")
    ] = 100,
    max_texts: Annotated[int | None, typer.Option(help="use at most this many texts")] = None,
    max_length: Annotated[int, typer.Option(help="tokens per text fed to the suspect")] = 512,
    batch_size: Annotated[int, typer.Option(help="texts per forward pass")] = 8,
    device: Annotated[str, typer.Option(help="torch device; auto = cuda when available")] = "auto",
    seed: Annotated[int, typer.Option(help="seed of the random wrong keys")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Test whether a suspect model (open weights) learned from text watermarked with a key.

    Two reports: the binomial test on its greedy predictions (distinct window + token tuples) and its
    green probability mass ranked among random keys.

    Example: KDISTILL_WATERMARK_KEY=... kdistill provenance radioactivity ./student --texts gens/ --json
    """
    import torch

    from kdistill.lm.models import load_causal_lm_ref
    from kdistill.provenance.radioactivity import radioactivity_test

    key = _key(key_env)
    tok = _tokenizer(tokenizer or suspect, "--tokenizer" if tokenizer else "SUSPECT")
    docs = _texts(texts)[:max_texts]
    if not docs:
        raise fail(f"{texts}: no test possible: --max-texts {max_texts} leaves no text")
    ids = tok(docs, add_special_tokens=False)["input_ids"]
    # a position is scored once the suspect has read a full window: a text needs context_width tokens
    if not any(len(x[:max_length]) >= context_width for x in ids):
        raise fail(
            f"{texts}: no test possible: none of its {len(ids)} texts has context_width = {context_width} "
            f"token(s) within --max-length {max_length}, so the suspect predicts after no full window"
        )
    try:
        model = load_causal_lm_ref(suspect, field="SUSPECT", dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise fail(str(err).splitlines()[0]) from None
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    reports = radioactivity_test(
        model,
        ids,
        key,
        gamma=gamma,
        context_width=context_width,
        n_wrong_keys=wrong_keys,
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
    )
    _print({"binomial": reports.binomial, "green_mass": reports.green_mass}, as_json)


@provenance_app.command("suspect")
def suspect_command(
    base_url: Annotated[
        str, typer.Option(help="the suspect's OpenAI-compatible endpoint, up to and including /v1")
    ],
    model: Annotated[str, typer.Option(help="the model name the endpoint serves")],
    prompts: Annotated[
        Path, typer.Option(help="prompts to ask it (.jsonl, .csv, .parquet or a dataset directory)")
    ],
    out: Annotated[Path, typer.Option(help="where its answers are stored; rerun the same command to resume")],
    tokenizer: Annotated[
        str,
        typer.Option(
            help="the watermarking model's tokenizer (a model folder, hub id, .gguf file or pkg:<package>/<path>)"
        ),
    ],
    key_env: KeyEnvOpt = "KDISTILL_WATERMARK_KEY",
    gamma: GammaOpt = 0.25,
    context_width: WidthOpt = 1,
    samples: Annotated[int, typer.Option(min=1, help="answers per prompt")] = 1,
    max_tokens: Annotated[
        int, typer.Option(min=1, help="most tokens per answer (cut-off answers are kept)")
    ] = 256,
    temperature: Annotated[
        float, typer.Option(min=0.0, help="sampling temperature asked of the suspect")
    ] = 0.7,
    seed: Annotated[int, typer.Option(help="base seed sent with the requests (answer i: seed + i)")] = 0,
    concurrency: Annotated[int, typer.Option(min=1, help="requests in flight at once")] = 4,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            help="environment variable holding the suspect API's key (never the key itself); default: no "
            "key is sent, so that no key of yours reaches another party's server unasked",
            show_default=False,
        ),
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            help=f"texts like the answers written without the key ({TEXTS_HELP}): adds the empirical p, "
            "the answers' green count ranked among reference pools of as many distinct pairs",
            show_default=False,
        ),
    ] = None,
    alpha: Annotated[
        float,
        typer.Option(
            help="level you will judge at: --json reports the suspect tokens after which the pooled p first "
            "fell below it; with --reference, a note when the pools cannot reach it"
        ),
    ] = 1e-3,
    as_json: JsonOpt = False,
) -> None:
    """Test a suspect reachable only through an API: prompt it, pool its answers, detect the watermark.

    Closed-model radioactivity (Sander et al. 2024): a model trained on text sampled with our watermark
    says the key's green tokens a little more often than chance. The answers are stored in --out like a
    `kdistill generate` run (rerun to resume: answered prompts are not asked again), re-tokenised with
    the watermarking model's tokenizer and pooled; each distinct (context, token) pair is scored once,
    pairs that occur in the prompts not at all.

    Examples:

      KDISTILL_WATERMARK_KEY=... kdistill provenance suspect --base-url https://api.example.com/v1 \\
        --model their-model --api-key-env THEIR_API_KEY --prompts prompts.jsonl --out suspect/ \\
        --tokenizer ./teacher --samples 4

      kdistill provenance suspect ... --reference other-models-answers/ --json
    """
    from pydantic import ValidationError

    from kdistill.generate.prompts import PromptFileError, load_prompts
    from kdistill.generate.run import GenerationError
    from kdistill.generate.store import GenerationStoreError, load_generations_table
    from kdistill.generate.teachers import TeacherError
    from kdistill.provenance.closed_model import closed_model_test, query_suspect, tokens_needed
    from kdistill.provenance.watermark import NothingToScoreError
    from kdistill.schema import format_validation_errors

    if not 0.0 < alpha < 1.0:
        raise fail(f"--alpha must be in (0, 1), got {alpha}")
    key = _key(key_env)  # before any request: a run without the key would be paid for and untestable
    tok = _tokenizer(tokenizer)
    pool = None if reference is None else _reference_pool(key, tok, reference, gamma, context_width)
    view = None if as_json else CountBar(err_console, "query", "answers")
    try:
        asked = len(load_prompts(prompts)) * samples
        query_suspect(
            base_url,
            model,
            prompts,
            out,
            api_key_env=api_key_env,
            samples=samples,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            concurrency=concurrency,
            progress=view,
        )
        table = load_generations_table(out)
    except (GenerationError, GenerationStoreError, PromptFileError, TeacherError, OSError) as err:
        raise fail(str(err)) from None
    except ValidationError as err:  # the options, as the generation config they become
        raise fail(format_validation_errors(err, "options", hide=("openai",))) from None
    finally:
        if view is not None:
            view.stop()

    answers = [text or "" for text in table.column("completion").to_pylist()]
    if len(answers) < asked:
        _warn(
            f"{asked - len(answers)} of {asked} answers are missing (rejected or failed: see {out}/rejects.jsonl "
            f"and {out}/errors.jsonl); testing the {len(answers)} there are; rerun to retry failed requests"
        )
    if not answers:
        raise fail(f"{out}: no test possible: the suspect gave no answer")
    prompt_texts = _prompt_texts(table)
    ids = tok(answers, add_special_tokens=False)["input_ids"]
    prompt_ids = tok(prompt_texts, add_special_tokens=False)["input_ids"] if prompt_texts else []
    try:
        report = closed_model_test(
            ids,
            key,
            gamma=gamma,
            context_width=context_width,
            vocab_size=len(tok),
            null=pool,
            prompts_token_ids=prompt_ids,
            alpha=alpha,
        )
    except NothingToScoreError as err:
        raise fail(f"{out}: no test possible: {err}") from None
    if not as_json:
        console.print(report.summary(), soft_wrap=True, highlight=False, markup=False)
        return
    needed = tokens_needed(
        ids, key, gamma=gamma, context_width=context_width, alpha=alpha, prompts_token_ids=prompt_ids
    )
    payload = {"closed_model": report.to_dict(), "tokens_needed": {"alpha": alpha, "tokens": needed}}
    typer.echo(json.dumps(payload, indent=2))


def _reference_pool(key: bytes, tok: Any, reference: Path, gamma: float, context_width: int) -> Any:
    """The reference texts scored under the key, for pools as large as the answers (before any request)."""
    from kdistill.provenance.closed_model import reference_pool
    from kdistill.provenance.watermark import NothingToScoreError

    texts = [text for _, text in _labelled_texts(reference)]
    try:
        pool = reference_pool(
            tok(texts, add_special_tokens=False)["input_ids"], key, gamma=gamma, context_width=context_width
        )
    except NothingToScoreError as err:
        raise fail(f"{reference}: no test possible: {err}") from None
    if pool.skipped:
        _warn(f"{reference}: {pool.skipped} reference texts too short to score a pair left out")
    return pool


def _prompt_texts(table: Any) -> list[str]:
    """The distinct texts the suspect was shown: plain prompts and every message of a chat."""
    texts = [p for p in table.column("prompt").to_pylist() if p]
    for chat in table.column("messages").to_pylist():
        texts += [m["content"] for m in chat or () if isinstance(m.get("content"), str) and m["content"]]
    return list(dict.fromkeys(texts))


@provenance_app.command("compare")
def compare_command(
    first: Annotated[Path, typer.Argument(help="a generation output directory", show_default=False)],
    second: Annotated[Path, typer.Argument(help="another one, same prompts", show_default=False)],
    tokenizer: Annotated[str, typer.Option(help="tokenizer to split both sources' completions with")],
    length: Annotated[int, typer.Option(help="compare the first L tokens of each completion")] = 50,
    by_prompt: Annotated[
        bool, typer.Option("--by-prompt/--pooled", help="compare completions prompt by prompt")
    ] = True,
    permutations: Annotated[int, typer.Option(help="random relabellings for the p-value")] = 999,
    seed: Annotated[int, typer.Option(help="seed of the permutations")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Test whether two generation runs (endpoints, models) sample the same distribution (MMD, Hamming kernel).

    Example: kdistill provenance compare gens-api/ gens-local/ --tokenizer ./model --length 50
    """
    from kdistill.generate.store import GenerationStoreError
    from kdistill.provenance.model_equality import (
        UntestableComparisonError,
        mmd_hamming_test,
        read_generation_samples,
    )

    tok = _tokenizer(tokenizer)
    try:
        x, px = read_generation_samples(first, tok, length=length)
        y, py = read_generation_samples(second, tok, length=length)
        report = mmd_hamming_test(
            x,
            y,
            length=length,
            prompts_x=px if by_prompt else None,
            prompts_y=py if by_prompt else None,
            permutations=permutations,
            seed=seed,
        )
    except UntestableComparisonError as err:
        hint = "at least 2 samples from each source"
        if by_prompt and len(x) >= 2 and len(y) >= 2:  # enough samples, but not per prompt
            hint = (
                "compare with --pooled, or generate at least 2 samples per prompt from each source "
                "(sampling.samples: 2)"
            )
        raise fail(f"no test possible: {err}", hint) from None
    except (GenerationStoreError, ValueError) as err:
        raise fail(str(err)) from None
    if report.details["prompts_dropped"]:
        d = report.details
        _warn(
            f"{d['prompts_dropped']} of {d['prompts'] + d['prompts_dropped']} prompts dropped "
            f"({d['samples_dropped_x']} + {d['samples_dropped_y']} samples): answered by one source only, or "
            "one completion from each, which cannot change the by-prompt statistic"
        )
    _print({"model_equality": report}, as_json)


__all__ = ["provenance_app"]
