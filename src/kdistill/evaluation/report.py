"""Turn a run's `metrics.json` into something a person reads: a table, two plots and an HTML page.

The terminal table (`results_table`) and the HTML table come from the same `results_rows`, so the two
can never disagree on a number. Plots use matplotlib's object-oriented API with the Agg canvas, never
pyplot, so making a report neither changes the global backend nor leaks figures in a long process.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich import box
from rich.table import Table
from rich.text import Text

from kdistill.evaluation.metrics import mean_std
from kdistill.io import atomic_write_bytes, atomic_write_text

REPORT_FILENAME = "report.html"
LEARNING_CURVES_FILENAME = "learning_curves.png"
TRADEOFF_FILENAME = "tradeoff.png"

RESULT_COLUMNS: tuple[str, ...] = (
    "model",
    "role",
    "accuracy",
    "params",
    "extra params",
    "size",
    "ms / sample",
    "agrees w/ teacher",
    "params vs teacher",
    "speedup",
)
# Language-model runs (metrics["task"] == "lm"): quality is measured against the teacher's answers.
LM_RESULT_COLUMNS: tuple[str, ...] = (
    "model",
    "role",
    "ppl on teacher answers",
    "top-1 agreement",
    "ROUGE-L",
    "exact match",
    "repeated 4-grams",
    "cut at max tokens",
    "params",
    "size",
    "ms / answer",
    "tokens / s",
    "params vs teacher",
    "speedup",
    "train time",
)
# Text-encoder runs (metrics["task"] == "encoder"): retrieval on held-out pairs, geometry vs the teacher.
ENCODER_RESULT_COLUMNS: tuple[str, ...] = (
    "model",
    "role",
    "recall@1",
    "recall@10",
    "recall@10 kept",
    "Spearman vs teacher",
    "params",
    "size",
    "texts / s",
    "params vs teacher",
    "speedup",
    "train time",
)
# Object-detection runs (metrics["task"] == "detection"): COCO box mAP on held-out images, per image timings.
DETECTION_RESULT_COLUMNS: tuple[str, ...] = (
    "model",
    "role",
    "mAP@[.5:.95]",
    "mAP@.5",
    "agrees w/ teacher",
    "params",
    "size",
    "ms / image",
    "onnxruntime ms",
    "params vs teacher",
    "speedup",
)
_TEXT_COLUMNS = frozenset({"model", "role"})  # every other column is a number, right-aligned
_MISSING = "—"
# Columns that come from the timing phase (metrics["timing"]); marked when it ran on a busy machine.
SPEED_COLUMNS = frozenset(
    {"ms / sample", "ms / answer", "ms / image", "onnxruntime ms", "tokens / s", "texts / s", "speedup"}
)
BUSY_MARK = "*"
# LM runs with `evaluation.deploy` (metrics["deploy"]): each model's GGUF size and llama.cpp generated tokens/s,
# inserted after "size" and after "tokens / s"; the speed is marked when metrics["deploy"] says busy
GGUF_SIZE_COLUMN, DEPLOY_SPEED_COLUMN = "GGUF size", "llama.cpp tok/s"
DEPLOY_SPEED_COLUMNS = frozenset({DEPLOY_SPEED_COLUMN})
# metrics["timing"] keys that say how the phase ran; every other key is a task setting (batch size, ...)
_TIMING_KEYS = frozenset({"rounds", "warmup_rounds", "repeats", "threads", "load", "busy", "models"})

# A model's headline quality per task: (metrics key, its std key, label). It is the trade-off plot's y value,
# and `<key>_per_seed` counts the seeds behind a table's "±". LM and encoder recipes fill "accuracy" with
# their own headline number (top-1 agreement, recall@10), so only the label differs for them.
_QUALITY: dict[str | None, tuple[str, str, str]] = {
    "lm": ("accuracy", "accuracy_std", "top-1 agreement with teacher"),
    "encoder": ("accuracy", "accuracy_std", "recall@10"),
    "detection": ("map", "map_std", "mAP@[.5:.95]"),
}
_DEFAULT_QUALITY = ("accuracy", "accuracy_std", "accuracy")

# tab10: distinguishable, colour-blind friendlier than the old default cycle.
_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


# ---------------------------------------------------------------------------------------------------------
# Number formatting shared by the terminal table and the HTML page


def _number(value: Any) -> float | None:
    """A finite float, or None for a missing / non-numeric / NaN entry (shown as a dash, not a crash)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _significant(value: float, digits: int = 3) -> str:
    """`value` to `digits` significant digits without scientific notation: 0.0512, 4.27, 1234."""
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def _format_percent(value: Any, std: Any = None, n_seeds: int = 1) -> str:
    """0.931, 0.008 over 3 seeds -> "93.1 ± 0.8 %"; the ± only when several seeds actually varied."""
    mean = _number(value)
    if mean is None:
        return _MISSING
    spread = _number(std)
    if spread is not None and spread > 0 and n_seeds > 1:
        return f"{100 * mean:.1f} ± {100 * spread:.1f} %"
    return f"{100 * mean:.1f} %"


def _format_count(value: Any) -> str:
    count = _number(value)
    return _MISSING if count is None else f"{round(count):,}"


def _format_bytes(value: Any) -> str:
    """Decimal (SI) units, as file browsers show them: 380000 -> "380 kB", 12345 -> "12.3 kB"."""
    size = _number(value)
    if size is None:
        return _MISSING
    if abs(size) < 1000:
        return f"{round(size)} B"
    for unit in ("kB", "MB", "GB"):
        size /= 1000
        text = _significant(size)
        if abs(float(text)) < 1000:  # 999.96 kB rounds to "1000": show "1.00 MB" instead
            return f"{text} {unit}"
    return f"{_significant(size / 1000)} TB"


def _format_ms(value: Any) -> str:
    latency = _number(value)
    return _MISSING if latency is None else f"{_significant(latency)} ms"


def format_duration(value: Any) -> str:
    """Seconds as people read them: "42 s", "3 min 12 s", "2 h 05 min"; "—" when unknown."""
    seconds = _number(value)
    if seconds is None or seconds < 0:
        return _MISSING
    if seconds < 59.5:
        return f"{_significant(seconds, 2)} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _format_params_ratio(params: Any, teacher_params: Any) -> str:
    """How many times smaller than the teacher, as a fraction: "1/60"; "1" for the same size; "2.5x" if larger."""
    own, teacher = _number(params), _number(teacher_params)
    if own is None or teacher is None or own <= 0 or teacher <= 0:
        return _MISSING
    smaller_by = teacher / own
    if round(smaller_by, 1) == 1.0:
        return "1"
    if smaller_by > 1:
        return f"1/{smaller_by:.0f}" if smaller_by >= 10 else f"1/{smaller_by:.1f}"
    return f"{1 / smaller_by:.1f}x"


def _format_speedup(latency: Any, teacher_latency: Any) -> str:
    """teacher latency / model latency: "4.2x" faster (below 1 means slower than the teacher)."""
    own, teacher = _number(latency), _number(teacher_latency)
    if own is None or teacher is None or own <= 0 or teacher <= 0:
        return _MISSING
    speedup = teacher / own
    return f"{speedup:.0f}x" if speedup >= 10 else f"{speedup:.1f}x"


def _format_value(value: Any) -> str:
    """A free-form summary / manifest value: numbers to 4 significant digits, containers as JSON."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


# ---------------------------------------------------------------------------------------------------------
# Reading metrics.json


def _models_teacher_first(metrics: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    models = list(metrics.get("models", []))
    # sorted() is stable: teachers first, every other model keeps the engine's order.
    return sorted(models, key=lambda model: model.get("role") != "teacher")


def _teacher(metrics: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next((m for m in metrics.get("models", []) if m.get("role") == "teacher"), None)


def _quality(metrics: Mapping[str, Any]) -> tuple[str, str, str]:
    return _QUALITY.get(metrics.get("task"), _DEFAULT_QUALITY)


def _seed_count(model: Mapping[str, Any], metrics: Mapping[str, Any]) -> int:
    per_seed = model.get(f"{_quality(metrics)[0]}_per_seed")
    if per_seed:
        return len(per_seed)
    return len(metrics.get("run", {}).get("seeds", [])) or 1


def _model_colours(metrics: Mapping[str, Any]) -> dict[str, str]:
    """One colour per model name, the same in every plot: table order first, then history-only models."""
    names = [str(model.get("name")) for model in _models_teacher_first(metrics)]
    names += [str(entry.get("model")) for entry in metrics.get("history", [])]
    unique = list(dict.fromkeys(names))
    return {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(unique)}


def has_deploy_columns(metrics: Mapping[str, Any]) -> bool:
    """Whether an LM run's models carry a GGUF size or llama.cpp speed (runs without keep today's columns)."""
    return metrics.get("task") == "lm" and any(
        model.get("gguf_bytes") is not None or model.get("deploy_tokens_per_s") is not None
        for model in metrics.get("models", [])
    )


def result_columns(metrics: Mapping[str, Any]) -> tuple[str, ...]:
    task = metrics.get("task")
    if task == "lm":
        columns = list(LM_RESULT_COLUMNS)
        if metrics.get("reasoning"):  # verified reasoning: problems solved comes first
            columns.insert(2, "held-out solved")
        if has_deploy_columns(metrics):
            columns.insert(columns.index("size") + 1, GGUF_SIZE_COLUMN)
            columns.insert(columns.index("tokens / s") + 1, DEPLOY_SPEED_COLUMN)
        return tuple(columns)
    by_task = {
        "lm": LM_RESULT_COLUMNS,
        "encoder": ENCODER_RESULT_COLUMNS,
        "detection": DETECTION_RESULT_COLUMNS,
    }
    return by_task.get(task, RESULT_COLUMNS)


def _encoder_row(model: Mapping[str, Any], name: str, role: str, ratio: str, speedup: str) -> list[str]:
    def fixed(key: str) -> str:
        value = _number(model.get(key))
        return _MISSING if value is None else f"{value:.3f}"

    texts_per_s = _number(model.get("texts_per_s"))
    return [
        name,
        role,
        fixed("recall@1"),
        fixed("recall@10"),
        _format_percent(model.get("recall@10_kept")) if role != "teacher" else _MISSING,
        fixed("spearman_vs_teacher") if role != "teacher" else _MISSING,
        _format_count(model.get("params")),
        _format_bytes(model.get("size_bytes")),
        _MISSING if texts_per_s is None else _significant(texts_per_s, 3),
        ratio,
        speedup,
        format_duration(model.get("train_seconds")),
    ]


def _detection_row(
    model: Mapping[str, Any], name: str, role: str, ratio: str, speedup: str, n_seeds: int
) -> list[str]:
    return [
        name,
        role,
        _format_percent(model.get("map"), model.get("map_std"), n_seeds),
        _format_percent(model.get("map_50"), model.get("map_50_std"), n_seeds),
        _format_percent(model.get("agreement_f1"), model.get("agreement_f1_std"), n_seeds),
        _format_count(model.get("params")),
        _format_bytes(model.get("size_bytes")),
        _format_ms(model.get("latency_ms")),
        _format_ms(model.get("onnx_latency_ms")),  # None when ONNX timing was off or failed
        ratio,
        speedup,  # PyTorch latencies, measured the same way for every model
    ]


def timing_busy(metrics: Mapping[str, Any]) -> bool:
    """Whether the speed figures were timed while other processes kept the machine busy."""
    timing = metrics.get("timing")
    return isinstance(timing, Mapping) and bool(timing.get("busy"))


def deploy_busy(metrics: Mapping[str, Any]) -> bool:
    """Whether the llama.cpp speeds (metrics["deploy"]) were timed while other processes kept the machine busy."""
    deploy = metrics.get("deploy")
    return isinstance(deploy, Mapping) and bool(deploy.get("busy"))


def _plural(count: Any, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _setting(key: str, value: Any) -> str:
    if isinstance(value, list | tuple):
        value = "x".join(str(v) for v in value)  # an image size [64, 64] -> 64x64
    return f"{key.replace('_', ' ')} {value}"


def timing_line(metrics: Mapping[str, Any]) -> str | None:
    """How the speed columns were measured, from metrics["timing"] (None for metrics from before it):
    rounds, warm-up, threads, the task's settings and the machine's load; a busy machine is called out."""
    timing = metrics.get("timing")
    if not isinstance(timing, Mapping):
        return None
    rounds = _plural(timing.get("rounds", "?"), "round")
    warmup = _plural(timing.get("warmup_rounds", "?"), "warm-up round")
    calls = _plural(timing.get("repeats", "?"), "call")
    how = [
        f"{rounds} after {warmup}, models in turns, {calls} per turn, {_plural(timing.get('threads', '?'), 'thread')}"
    ]
    # the task's settings: scalars and lists (an image size); per-model tables are the columns' business,
    # and a setting named "...note" is a sentence of its own
    settings = {k: v for k, v in timing.items() if k not in _TIMING_KEYS and not isinstance(v, Mapping)}
    notes = [str(v) for k, v in settings.items() if k.endswith("note")]
    how += [_setting(key, value) for key, value in settings.items() if not key.endswith("note")]
    load = timing.get("load")
    described = load.get("description") if isinstance(load, Mapping) else None
    line = "Timing: " + ", ".join(how) + "; " + (described or "machine load not recorded") + "."
    line += "".join(f" {note[:1].upper()}{note[1:].rstrip('.')}." for note in notes)
    if timing_busy(metrics):
        line += (
            f" Speed figures marked {BUSY_MARK} were taken on a busy machine (other processes competed for "
            "the cores) and are not reliable."
        )
    return line


def deploy_line(metrics: Mapping[str, Any]) -> str | None:
    """How the llama.cpp column was measured, from metrics["deploy"] (None without one): runtime version, GGUF
    type, rounds, tokens, threads and the machine's load; or why there are no speeds or sizes."""
    deploy = metrics.get("deploy")
    if not isinstance(deploy, Mapping):
        return None
    gguf = f"{deploy.get('gguf_type', '?')} GGUF"
    if deploy.get("not_measured"):
        line = f"llama.cpp: {gguf} sizes; speed not measured: {str(deploy['not_measured']).rstrip('.')}."
    else:
        prompts = deploy.get("prompts")
        count = max(prompts.values(), default="?") if isinstance(prompts, Mapping) else prompts
        how = [
            f"llama-cpp-python {deploy.get('llama_cpp_python', '?')}",
            gguf,
            f"{_plural(deploy.get('rounds', '?'), 'round')} after "
            f"{_plural(deploy.get('warmup_rounds', '?'), 'warm-up round')}, models in turns",
            f"{_plural(count, 'prompt')} of {_plural(deploy.get('new_tokens', '?'), 'generated token')} each",
            _plural(deploy.get("threads", "?"), "thread"),
        ]
        load = deploy.get("load")
        described = load.get("description") if isinstance(load, Mapping) else None
        line = "llama.cpp: " + ", ".join(how) + "; " + (described or "machine load not recorded") + "."
    not_exported = deploy.get("not_exported") or {}
    if not_exported:
        line += (
            " Not exported to GGUF: "
            + "; ".join(f"{name} ({why})" for name, why in not_exported.items())
            + "."
        )
    if deploy_busy(metrics):
        line += (
            f" llama.cpp speeds marked {BUSY_MARK} were taken on a busy machine (other processes competed for "
            "the cores) and are not reliable."
        )
    return line


def _headline(metrics: Mapping[str, Any]) -> str | None:
    headline = metrics.get("summary", {}).get("headline")
    if headline and timing_busy(metrics):
        return f"{headline} (speed timed on a busy machine: not reliable)"
    return None if headline is None else str(headline)


def results_rows(metrics: Mapping[str, Any]) -> list[list[str]]:
    """The formatted cells of the results table, teacher first, one list per model (see result_columns); speed
    cells end in BUSY_MARK when the timing phase ran on a busy machine (the llama.cpp column: when
    metrics["deploy"] did)."""
    rows = _plain_results_rows(metrics)
    marked = (SPEED_COLUMNS if timing_busy(metrics) else frozenset()) | (
        DEPLOY_SPEED_COLUMNS if deploy_busy(metrics) else frozenset()
    )
    speed = [i for i, column in enumerate(result_columns(metrics)) if column in marked]
    for row in rows:
        for i in speed:
            if row[i] != _MISSING:
                row[i] += BUSY_MARK
    return rows


def _plain_results_rows(metrics: Mapping[str, Any]) -> list[list[str]]:
    teacher = _teacher(metrics) or {}
    deploy = has_deploy_columns(metrics)
    rows = []
    for model in _models_teacher_first(metrics):
        n_seeds = _seed_count(model, metrics)
        ratio = _format_params_ratio(model.get("params"), teacher.get("params"))
        speedup = _format_speedup(model.get("latency_ms"), teacher.get("latency_ms"))
        name, role = str(model.get("name", _MISSING)), str(model.get("role", _MISSING))
        if metrics.get("task") == "encoder":
            rows.append(_encoder_row(model, name, role, ratio, speedup))
            continue
        if metrics.get("task") == "detection":
            rows.append(_detection_row(model, name, role, ratio, speedup, n_seeds))
            continue
        if metrics.get("task") == "lm":
            ppl = _number(model.get("perplexity_on_teacher_answers"))
            tokens_per_s = _number(model.get("tokens_per_s"))
            deploy_tokens_per_s = _number(model.get("deploy_tokens_per_s"))
            gguf_size = [_format_bytes(model.get("gguf_bytes"))] if deploy else []
            deploy_speed = (
                [_MISSING if deploy_tokens_per_s is None else _significant(deploy_tokens_per_s, 3)]
                if deploy
                else []
            )
            solved = (
                [_format_percent((model.get("verified") or {}).get("accuracy"))]
                if metrics.get("reasoning")
                else []
            )
            rows.append(
                [
                    name,
                    role,
                    *solved,
                    _MISSING if ppl is None else _significant(ppl, 3),
                    _format_percent(model.get("agreement_with_teacher")),
                    _MISSING if _number(model.get("rouge_l")) is None else f"{model['rouge_l']:.3f}",
                    _format_percent(model.get("exact_match")),
                    _format_percent(model.get("repeated_4gram_rate")),
                    _format_percent(model.get("hit_max_tokens")),
                    _format_count(model.get("params")),
                    _format_bytes(model.get("size_bytes")),
                    *gguf_size,
                    _format_ms(model.get("latency_ms")),
                    _MISSING if tokens_per_s is None else _significant(tokens_per_s, 3),
                    *deploy_speed,
                    ratio,
                    speedup,
                    format_duration(model.get("train_seconds")),
                ]
            )
            continue
        rows.append(
            [
                name,
                role,
                _format_percent(model.get("accuracy"), model.get("accuracy_std"), n_seeds),
                _format_count(model.get("params")),
                _format_count(model.get("extra_params", 0)),
                _format_bytes(model.get("size_bytes")),
                _format_ms(model.get("latency_ms")),
                _format_percent(model.get("agreement_with_teacher"), model.get("agreement_std"), n_seeds),
                ratio,
                speedup,
            ]
        )
    return rows


def domain_rows(metrics: Mapping[str, Any]) -> tuple[list[str], list[list[str]], str]:
    """Encoder runs scored off-domain: (columns, one row per model with recall@10 per domain, their mean and
    the mean's share of the teacher's, a note naming the domains this machine lacked); empty without."""
    evaluation = metrics.get("evaluation") or {}
    found, missing = list(evaluation.get("off_domain") or {}), evaluation.get("off_domain_missing") or {}
    note = "; ".join(str(reason) for reason in missing.values())
    if not found:
        return [], [], note
    teacher_mean = _number((_teacher(metrics) or {}).get("off_domain_recall@10"))
    rows = []
    for model in _models_teacher_first(metrics):
        domains = model.get("domains") or {}
        mean = _number(model.get("off_domain_recall@10"))
        cells = [f"{domains[d]['recall@10']:.3f}" if d in domains else _MISSING for d in found]
        kept = _format_percent(mean / teacher_mean) if mean is not None and teacher_mean else _MISSING
        rows.append([str(model.get("name", "")), *cells, _MISSING if mean is None else f"{mean:.3f}", kept])
    pairs = [f"{d} ({evaluation['off_domain'][d].get('pairs', '?')} pairs)" for d in found]
    return ["model", *pairs, "mean", "of teacher"], rows, note


def domain_table(metrics: Mapping[str, Any]) -> Table | None:
    """recall@10 off the distillation domain, per model, for the terminal; None when the run had none."""
    columns, rows, note = domain_rows(metrics)
    if not rows:
        return None
    table = Table(
        title=Text("recall@10 on text unlike the distillation text"),
        caption=Text(f"not scored: {note}") if note else None,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for i, column in enumerate(columns):
        table.add_column(Text(column), justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def results_table(metrics: Mapping[str, Any]) -> Table:
    """The results as a rich Table for the terminal (the caller decides where to print it)."""
    headline, timing = _headline(metrics), timing_line(metrics)
    deploy = deploy_line(metrics)
    timing = "\n".join(line for line in (timing, deploy) if line) or None
    # Text, not str: rich would read "[bold]" or "[0.1]" in a model name as markup and drop it.
    table = Table(
        title=Text(headline) if headline else None,
        caption=Text(timing) if timing else None,  # under the table: how the speed columns were measured
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in result_columns(metrics):
        table.add_column(Text(column), justify="left" if column in _TEXT_COLUMNS else "right")
    for row in results_rows(metrics):
        table.add_row(*(Text(cell) for cell in row))
    return table


def _final_loss_terms(metrics: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per model, the last logged value of the total loss and of each term, mean ± std over seeds."""
    last_entry: dict[tuple[str, Any], Mapping[str, Any]] = {}
    for entry in metrics.get("history", []):
        key = (str(entry.get("model")), entry.get("seed"))
        previous = last_entry.get(key)
        if previous is None or _progress(entry) >= _progress(previous):
            last_entry[key] = entry
    if not any(entry.get("terms") for entry in last_entry.values()):
        return [], []

    term_names = list(dict.fromkeys(name for entry in last_entry.values() for name in entry.get("terms", {})))
    columns = ["model", "seeds", "loss", *term_names]
    rows = []
    for model in _model_colours(metrics):  # table order, then history-only models
        finals = [entry for (name, _), entry in last_entry.items() if name == model]
        if not finals:
            continue
        cells = [model, str(len(finals)), _format_mean_std([entry.get("loss") for entry in finals])]
        for term in term_names:
            cells.append(_format_mean_std([entry.get("terms", {}).get(term) for entry in finals]))
        rows.append(cells)
    return columns, rows


def _progress(entry: Mapping[str, Any]) -> tuple[float, float]:
    step, epoch = _number(entry.get("step")), _number(entry.get("epoch"))
    return (-math.inf if step is None else step, -math.inf if epoch is None else epoch)


def _format_mean_std(values: Iterable[Any]) -> str:
    numbers = [number for number in map(_number, values) if number is not None]
    if not numbers:
        return _MISSING
    mean, std = mean_std(numbers)
    return f"{_significant(mean, 4)} ± {_significant(std, 2)}" if std > 0 else _significant(mean, 4)


# ---------------------------------------------------------------------------------------------------------
# Plots


def _plot_text(text: Any) -> str:
    """Escape "$" so matplotlib shows a model name as written instead of parsing it as mathtext."""
    return str(text).replace("$", r"\$")


def _save_figure(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)  # attaches itself to the figure: renders without touching pyplot's backend
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue())


def plot_learning_curves(metrics: Mapping[str, Any], path: Path) -> Path | None:
    """Training loss and held-out accuracy vs optimizer step, one line per (model, seed); None if no history.

    Step, not epoch, on both x axes: arms of a comparison train on sets of different sizes (the scratch
    baseline sees only the labeled samples), so their epochs are not comparable but their steps are.
    """
    history = metrics.get("history", [])
    if not history:
        return None
    colours = _model_colours(metrics)
    loss_curves: dict[tuple[str, Any], dict[float, float]] = {}
    accuracy_curves: dict[tuple[str, Any], dict[float, float]] = {}
    for entry in history:
        key = (str(entry.get("model")), entry.get("seed"))
        step = _number(entry.get("step"))
        loss, val_accuracy = _number(entry.get("loss")), _number(entry.get("val_accuracy"))
        if step is not None and loss is not None:
            loss_curves.setdefault(key, {})[step] = loss
        if step is not None and val_accuracy is not None:
            accuracy_curves.setdefault(key, {})[step] = 100 * val_accuracy

    if accuracy_curves:
        figure = Figure(figsize=(11, 4.2), layout="constrained")
        loss_axes, accuracy_axes = figure.subplots(1, 2)
        panels = ((loss_axes, loss_curves), (accuracy_axes, accuracy_curves))
    else:  # no held-out accuracy during training (LM, encoder, detection runs): the loss panel alone
        figure = Figure(figsize=(6.5, 4.2), layout="constrained")
        loss_axes, accuracy_axes = figure.subplots(1, 1), None
        panels = ((loss_axes, loss_curves),)
    for axes, curves in panels:
        labelled: set[str] = set()
        for (model, _seed), points in sorted(
            curves.items(), key=lambda item: list(colours).index(item[0][0])
        ):
            xs = sorted(points)
            label = (
                None if model in labelled else _plot_text(model)
            )  # one legend entry per model, not per seed
            labelled.add(model)
            axes.plot(
                xs, [points[x] for x in xs], color=colours[model], alpha=0.8, linewidth=1.3, label=label
            )
        axes.grid(True, alpha=0.3)
        if not curves:
            axes.text(0.5, 0.5, "nothing logged", ha="center", va="center", transform=axes.transAxes)
    loss_axes.set(title="training loss (all terms)", xlabel="step", ylabel="loss")
    if accuracy_axes is not None:
        accuracy_axes.set(
            title="held-out accuracy (not used for model selection)", xlabel="step", ylabel="accuracy (%)"
        )
    if loss_curves or accuracy_curves:
        legend_axes = loss_axes if loss_curves or accuracy_axes is None else accuracy_axes
        legend_axes.legend(title="one line per seed", fontsize="small")
    figure.suptitle(_plot_text(metrics.get("run", {}).get("name", "")))
    return _save_figure(figure, path)


def plot_tradeoff(metrics: Mapping[str, Any], path: Path) -> Path:
    """Quality (± std over seeds) against parameters and against latency per sample, both log-scaled.

    Quality is the task's headline number (see _QUALITY): accuracy, or mAP@[.5:.95] for detection.
    """
    colours = _model_colours(metrics)
    y_key, std_key, quality = _quality(metrics)
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    params_axes, latency_axes = figure.subplots(1, 2)
    for axes, x_key in ((params_axes, "params"), (latency_axes, "latency_ms")):
        plotted = 0
        for model in _models_teacher_first(metrics):
            x, y = _number(model.get(x_key)), _number(model.get(y_key))
            if x is None or y is None or x <= 0:
                continue  # log axis: a missing or zero value has no place on it
            name = str(model.get("name"))
            std = _number(model.get(std_key)) or 0.0
            axes.errorbar(x, 100 * y, yerr=100 * std, fmt="o", color=colours[name], capsize=4, markersize=7)
            axes.annotate(
                _plot_text(name), (x, 100 * y), xytext=(7, 5), textcoords="offset points", fontsize="small"
            )
            plotted += 1
        axes.set_xscale("log")
        axes.margins(x=0.25, y=0.15)
        axes.grid(True, which="both", alpha=0.3)
        if plotted == 0:
            axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    per = {"lm": "answer", "encoder": "text", "detection": "image"}.get(metrics.get("task"), "sample")
    params_axes.set(title=f"{quality} vs size", xlabel="parameters (log)", ylabel=f"{quality} (%)")
    busy = " (busy machine: not reliable)" if timing_busy(metrics) else ""
    latency_axes.set(
        title=f"{quality} vs speed{busy}", xlabel=f"latency per {per}, ms (log)", ylabel=f"{quality} (%)"
    )
    figure.suptitle(_plot_text(metrics.get("run", {}).get("name", "")))
    return _save_figure(figure, path)


# ---------------------------------------------------------------------------------------------------------
# HTML


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1150px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.meta { color: #666; font-size: 0.9em; }
.busy { color: #a40000; }
.headline { font-size: 1.5em; font-weight: 600; margin: 0.8em 0; padding: 0.6em 0.9em;
            background: #f3f7fb; border-left: 4px solid #1f77b4; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
th, td { padding: 0.35em 0.8em; border-bottom: 1px solid #e4e4e4; text-align: left; }
th { background: #fafafa; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.small { font-size: 0.82em; }
img { max-width: 100%; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def _html_table(
    columns: Sequence[str], rows: Iterable[Sequence[str]], *, numeric_from: int, css_class: str = ""
) -> str:
    """An escaped <table>; columns from index `numeric_from` on are right-aligned numbers."""

    def cell(tag: str, index: int, text: str) -> str:
        align = ' class="num"' if index >= numeric_from else ""
        return f"<{tag}{align}>{html.escape(text)}</{tag}>"

    head = "".join(cell("th", i, column) for i, column in enumerate(columns))
    body = "\n".join(
        "<tr>" + "".join(cell("td", i, text) for i, text in enumerate(row)) + "</tr>" for row in rows
    )
    class_attribute = f' class="{html.escape(css_class)}"' if css_class else ""
    return f"<table{class_attribute}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _html_page(
    metrics: Mapping[str, Any],
    *,
    learning_curves: Path | None,
    tradeoff: Path,
    config_yaml: str | None,
    manifest: Mapping[str, Any] | None,
) -> str:
    run = metrics.get("run", {})
    summary = metrics.get("summary", {})
    name = str(run.get("name", "run"))
    meta = " · ".join(
        f"{label} {html.escape(_format_value(run[key]))}"
        for label, key in (
            ("dir", "run_dir"),
            ("started", "started"),
            ("finished", "finished"),
            ("seeds", "seeds"),
            ("device", "device"),
            ("config", "config_hash"),
        )
        if run.get(key) not in (None, "", [])
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>kdistill report: {html.escape(name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(name)}</h1>",
        f'<p class="meta">{meta}</p>',
    ]
    headline = _headline(metrics)
    if headline:
        parts.append(f'<p class="headline">{html.escape(headline)}</p>')

    parts += [
        "<h2>Results</h2>",
        _html_table(result_columns(metrics), results_rows(metrics), numeric_from=len(_TEXT_COLUMNS)),
    ]
    timing = timing_line(metrics)
    if timing:
        css = "meta timing busy" if timing_busy(metrics) else "meta timing"
        parts.append(f'<p class="{css}">{html.escape(timing)}</p>')
    deploy = deploy_line(metrics)
    if deploy:
        css = "meta deploy busy" if deploy_busy(metrics) else "meta deploy"
        parts.append(f'<p class="{css}">{html.escape(deploy)}</p>')
    parts += _reasoning_tables(metrics.get("reasoning"))
    domain_columns, domain_cells, missing = domain_rows(metrics)
    if domain_cells or missing:
        parts.append("<h2>Off-domain retrieval (recall@10)</h2>")
    if domain_cells:
        parts.append(_html_table(domain_columns, domain_cells, numeric_from=1))
    if missing:
        parts.append(f'<p class="meta">not scored: {html.escape(missing)}</p>')
    other_numbers = [[str(key), _format_value(value)] for key, value in summary.items() if key != "headline"]
    if other_numbers:
        parts.append(_html_table(["summary", "value"], other_numbers, numeric_from=1, css_class="small"))

    parts.append("<h2>Trade-off</h2>")
    quality = html.escape(_quality(metrics)[2])
    parts.append(f'<img src="{html.escape(tradeoff.name)}" alt="{quality} against parameters and latency">')
    if learning_curves is not None:
        parts.append("<h2>Learning curves</h2>")
        parts.append(
            f'<img src="{html.escape(learning_curves.name)}" alt="training loss and validation accuracy">'
        )

    loss_columns, loss_rows = _final_loss_terms(metrics)
    if loss_rows:
        parts.append("<h2>Final loss terms</h2>")
        parts.append(
            '<p class="meta">Last logged value of each (already weighted) term, mean ± std over seeds.</p>'
        )
        parts.append(_html_table(loss_columns, loss_rows, numeric_from=1))

    examples = metrics.get("examples") or []
    if examples:
        parts.append("<h2>Example answers (held-out prompts)</h2>")
        columns = list(examples[0])
        parts.append(
            _html_table(
                columns,
                [[str(e.get(c, "")) for c in columns] for e in examples],
                numeric_from=len(columns),
                css_class="small",
            )
        )

    if config_yaml is not None:
        parts += ["<h2>Resolved config</h2>", f"<pre>{html.escape(config_yaml)}</pre>"]
    if manifest:
        manifest_rows = [[str(key), _format_value(value)] for key, value in manifest.items()]
        parts += [
            "<h2>Manifest</h2>",
            _html_table(["key", "value"], manifest_rows, numeric_from=2, css_class="small"),
        ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def reasoning_rows(reasoning: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """(pass@k columns, the teacher's rows per problem set, the training data's rows per filter)."""
    teacher = reasoning.get("teacher", {})
    ks = sorted(
        {key for part in teacher.values() for key in part if key.startswith("pass@")},
        key=lambda k: int(k[5:]),
    )
    columns = ["problems", "count", "answers", "accepted", *ks]
    pass_rows = [
        [
            name.replace("_", "-"),
            str(part.get("problems", "")),
            str(part.get("answers", "")),
            _format_percent(part["accepted"] / part["answers"]) if part.get("answers") else _MISSING,
            *[_format_percent(part.get(k)) for k in ks],
        ]
        for name, part in teacher.items()
    ]
    filter_rows = [
        [
            arm["label"],
            f["name"],
            str(f["before"]),
            str(f["removed"]),
            str(f["after"]),
            ", ".join(f"{k} {v}" for k, v in f["reasons"].items() if v),
        ]
        for arm in reasoning.get("arms", [])
        for f in arm["filters"]
    ] + [
        [arm["label"], "training rows", "", "", str(arm["rows"]), arm["train_on"]]
        for arm in reasoning.get("arms", [])
    ]
    return columns, pass_rows, filter_rows


def _reasoning_tables(reasoning: Mapping[str, Any] | None) -> list[str]:
    if not reasoning:
        return []
    columns, pass_rows, filter_rows = reasoning_rows(reasoning)
    return [
        "<h2>The teacher's answers, verified</h2>",
        '<p class="meta">pass@k: the unbiased estimator of Chen et al. (2021) over the teacher\'s samples per '
        "problem; accepted: answers every verifier accepts.</p>",
        _html_table(columns, pass_rows, numeric_from=1, css_class="small"),
        "<h2>What each student trained on</h2>",
        _html_table(
            ["student", "filter", "before", "removed", "after", "why"],
            filter_rows,
            numeric_from=2,
            css_class="small",
        ),
    ]


def write_report(
    run_dir: Path,
    metrics: Mapping[str, Any],
    *,
    config_yaml: str | None = None,
    manifest: Mapping[str, Any] | None = None,
) -> Path:
    """Write report.html with learning_curves.png and tradeoff.png beside it into run_dir; return the html path.

    Every file is replaced atomically, so a browser or a second `kdistill report` never sees half a page.
    A learning-curves plot left by an earlier report is removed when the history is now empty, so the
    directory never holds a plot that the metrics no longer back.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    learning_curves = plot_learning_curves(metrics, run_dir / LEARNING_CURVES_FILENAME)
    if learning_curves is None:
        (run_dir / LEARNING_CURVES_FILENAME).unlink(missing_ok=True)
    tradeoff = plot_tradeoff(metrics, run_dir / TRADEOFF_FILENAME)
    page = _html_page(
        metrics,
        learning_curves=learning_curves,
        tradeoff=tradeoff,
        config_yaml=config_yaml,
        manifest=manifest,
    )
    return atomic_write_text(run_dir / REPORT_FILENAME, page)
