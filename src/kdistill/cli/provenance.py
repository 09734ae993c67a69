"""`kdistill provenance`: watermark detection, radioactivity, model equality; each prints a report with a p-value.

Printing happens here only: the detectors (`kdistill.provenance.*`) return `ProvenanceReport`s. Keys are
read from the environment variable named by `--key-env` and never printed; reports show a fingerprint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from kdistill.cli.output import console, fail

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


def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise fail(f"{path}: cannot load a tokenizer ({str(err).splitlines()[0]})") from None


def _texts(source: Path) -> list[str]:
    """The completions of a generation output directory, or the whole of a text file as one text."""
    from kdistill.generate.store import GenerationStoreError, load_generations_table

    if source.is_dir():
        try:
            return [t for t in load_generations_table(source).column("completion").to_pylist() if t]
        except GenerationStoreError as err:
            raise fail(str(err)) from None
    try:
        return [source.read_text()]
    except (OSError, UnicodeDecodeError) as err:
        raise fail(f"{source}: cannot read ({err})") from None


def _print(reports: dict[str, Any], as_json: bool) -> None:

    if as_json:
        typer.echo(json.dumps({k: None if r is None else r.to_dict() for k, r in reports.items()}, indent=2))
        return
    for report in reports.values():
        if report is not None:
            console.print(report.summary(), soft_wrap=True, highlight=False, markup=False)


SourceArg = Annotated[
    Path,
    typer.Argument(help="a generation output directory (its completions) or a text file", show_default=False),
]


@provenance_app.command("detect")
def detect_command(
    source: SourceArg,
    tokenizer: Annotated[
        str, typer.Option(help="the watermarking model's tokenizer (a model directory or hub id)")
    ],
    key_env: KeyEnvOpt = "KDISTILL_WATERMARK_KEY",
    gamma: GammaOpt = 0.25,
    context_width: WidthOpt = 1,
    as_json: JsonOpt = False,
) -> None:
    """Test whether text carries the green-list watermark of a key (all texts of SOURCE pooled).

    Examples:

      KDISTILL_WATERMARK_KEY=... kdistill provenance detect gens/ --tokenizer ./teacher

      kdistill provenance detect answer.txt --tokenizer ./teacher --key-env MY_KEY --json
    """
    from kdistill.provenance.watermark import detect_watermark

    key = _key(key_env)
    tok = _tokenizer(tokenizer)
    texts = _texts(source)
    ids = tok(texts, add_special_tokens=False)["input_ids"] if texts else []
    report = detect_watermark(ids, key, gamma=gamma, context_width=context_width, vocab_size=len(tok))
    _print({"watermark": report}, as_json)


@provenance_app.command("radioactivity")
def radioactivity_command(
    suspect: Annotated[
        str, typer.Argument(help="the suspect model (a directory or hub id)", show_default=False)
    ],
    texts: Annotated[
        Path,
        typer.Option(
            help="texts to feed it: a generation output directory (ideally watermarked) or a text file"
        ),
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
    from transformers import AutoModelForCausalLM

    from kdistill.provenance.radioactivity import radioactivity_test

    key = _key(key_env)
    tok = _tokenizer(tokenizer or suspect)
    docs = _texts(texts)[:max_texts]
    ids = tok(docs, add_special_tokens=False)["input_ids"] if docs else []
    try:
        model = AutoModelForCausalLM.from_pretrained(suspect)
    except (OSError, ValueError) as err:
        raise fail(f"{suspect}: cannot load the model ({str(err).splitlines()[0]})") from None
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
    from kdistill.provenance.model_equality import mmd_hamming_test, read_generation_samples

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
    except (GenerationStoreError, ValueError) as err:
        raise fail(str(err)) from None
    _print({"model_equality": report}, as_json)


__all__ = ["provenance_app"]
