"""kdistill vs TRL's GKD trainer: tokens/s of off-policy white-box distillation with an online teacher, on CPU.

Both arms train the same student from the same initial weights, on the same batches in the same order, against
the same teacher, with the same loss, optimizer, schedule, clipping, precision and thread count:

  loss       forward KL(teacher || student) per token, summed over the vocabulary, at temperature 1, summed
             over the completion tokens and divided by their number in the step. TRL: `GKDTrainer` (it lives in
             `trl.experimental.gkd` since TRL 1.x) with lmbda=0 (never samples from the student: off-policy)
             and beta=0, for which its `generalized_jsd_loss` is `F.kl_div(student_log_probs,
             teacher_log_probs, log_target=True)` = KL(teacher || student); its `compute_loss` never passes a
             temperature to that loss (GKDConfig.temperature is only the sampling temperature), so the loss runs
             at T = 1, and kdistill's `LMDistillConfig(divergence="forward_kl", temperature=1.0)` matches it.
             Each case first checks that both losses and their gradients agree on its first batch
             (`loss_check`), and after round 1 compares the two final students and the logged losses.
  teacher    one forward pass of the teacher per micro-batch in both (TRL: the full model under no_grad;
             kdistill: `OnlineTeacher`, the backbone under no_grad, its head applied per chunk of tokens).
  optimizer  torch AdamW (TRL: optim="adamw_torch", not the fused default), lr `--lr`, betas (0.9, 0.999),
             eps 1e-8, weight decay 0, grad-norm clip 1.0, cosine decay to 0 without warmup, float32 (TRL:
             bf16=False, gradient_checkpointing=False, which TRL turns on by default), no dropout.
  data       windows of `--seq` tokens of Python's reference docs (pydoc_data.topics) under a byte-level BPE
             trained on them; the first PROMPT tokens of each window are the "prompt" (label -100), the rest
             the completion. All windows have the same length, so every step has the same shape and the same
             number of loss tokens. The batch order is kdistill's (`batch_indices`); TRL gets the dataset in
             that order with train_sampling_strategy="sequential".
  models     tiny Llamas: teacher `--teacher-layers` blocks of width `--teacher-hidden` (briefly trained with
             kdistill's SFT on the same text first, so it is a real if weak LM), student `--student-layers`
             blocks of width `--student-hidden`, untied heads.
  cases      `--cases VOCAB:PROMPT,...`: vocabulary 4096 and 8192, prompt 16 and 1 tokens. kdistill computes
             logits only for loss rows, TRL for every position, so the prompt length moves the ratio; and at
             vocabulary 8192 one arm's (tokens x vocab) float32 tensors sit right at glibc malloc's 32 MiB
             mmap threshold, where a CPU run's speed flips with allocator state (README: notes).

What is timed: the end of every optimizer step (kdistill: `on_log` with log_every=1; TRL: a TrainerCallback's
`on_step_end`, with TRL's default logging_steps=10); a step's time is the gap from the previous step's end, so it
covers the whole loop iteration (batch, teacher forward, student forward + backward, clip, AdamW, scheduler,
logging). The first `--warmup` steps of every run are dropped. tokens/s = loss tokens per step / step time (the
median, and the total over all timed steps). Arms alternate over `--rounds` rounds in one process.

    # once: a separate venv with TRL next to kdistill's (torch first, from the local wheel cache)
    .venv/bin/python benchmarks/trl_comparison.py --setup
    .bench-venv-trl/bin/python benchmarks/trl_comparison.py          # writes results/trl_comparison.json
    .bench-venv-trl/bin/python benchmarks/trl_comparison.py --quick --cases 4096:16  # smoke run, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "trl_comparison.json"
VENV = ROOT / ".bench-venv-trl"
TRL_VERSION = "1.16.0"  # the version measured below
# installed at the versions of the running interpreter (kdistill's .venv), so both arms use the same libraries
SAME_AS_KDISTILL = (
    "transformers accelerate datasets tokenizers safetensors numpy peft scikit-learn pydantic typer rich "
    "pyyaml matplotlib openai jsonschema datasketch"
).split()


def setup() -> None:
    """Create .bench-venv-trl: torch first (the local CPU wheel), TRL, kdistill's deps at .venv's versions."""
    import torch

    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    (VENV / ".gitignore").write_text("*\n")  # keep the venv out of git whatever the repo's .gitignore says
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"torch=={torch.__version__.split('+')[0]}"], check=True)
    pins = [f"{name}=={metadata.version(name)}" for name in SAME_AS_KDISTILL]
    subprocess.run([*pip, f"trl=={TRL_VERSION}", *pins], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    print(f"ready: {python} benchmarks/trl_comparison.py")


def llama(vocab: int, hidden: int, layers: int, shape: str = "tiny") -> dict[str, Any]:
    """A Llama config: the tiny shape (4 heads, 2 KV heads, MLP 4x, untied head) or SmolLM2-135M's block shape
    (width 576, MLP 1536, 9 heads, 3 KV heads, tied embeddings), `layers` blocks of width `hidden`."""
    if shape == "smollm2-135m":
        blocks = {"intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3}
        blocks |= {"tie_word_embeddings": True, "rope_theta": 100000.0}
    else:
        blocks = {"intermediate_size": 4 * hidden, "num_attention_heads": 4, "num_key_value_heads": 2}
        blocks |= {"tie_word_embeddings": False}
    return {
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        **blocks,
        "max_position_embeddings": 512,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def pydoc_examples(tokenizer: Any, seq: int, prompt: int) -> list[dict[str, Any]]:
    """Consecutive `seq`-token windows of pydoc_data.topics; labels -100 on the first `prompt` tokens."""
    import pydoc_data.topics

    ids: list[int] = []
    for text in pydoc_data.topics.topics.values():
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    out = []
    for i, start in enumerate(range(0, len(ids) - seq + 1, seq)):
        window = ids[start : start + seq]
        out.append({"input_ids": window, "labels": [-100] * prompt + window[prompt:], "record_id": f"w{i}"})
    return out


def loss_check(student: Any, teacher: Any, batch: dict[str, Any]) -> dict[str, float]:
    """kdistill's forward-KL objective vs TRL's generalized_jsd_loss(beta=0) on one batch: values, gradients."""
    import torch
    from trl.experimental.gkd import GKDTrainer

    from kdistill.lm.config import LMDistillConfig
    from kdistill.lm.objectives import OnlineTeacher, TokenDistillObjective
    from kdistill.lm.sft_data import count_response_tokens

    n = count_response_tokens(batch["labels"])
    settings = LMDistillConfig(signal="online", divergence="forward_kl")
    objective = TokenDistillObjective(student, settings, teacher=OnlineTeacher(teacher), pad_token_id=0)
    ours = objective(batch)["kd/forward_kl"] / n
    ours_grads = torch.autograd.grad(ours, list(student.parameters()))

    s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    with torch.no_grad():
        t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    theirs = GKDTrainer.generalized_jsd_loss(
        s_logits[:, :-1], t_logits[:, :-1], labels=batch["labels"][:, 1:], beta=0.0, num_items_in_batch=n
    )
    theirs_grads = torch.autograd.grad(theirs, list(student.parameters()))
    grad_diff = max(float((a - b).abs().max()) for a, b in zip(ours_grads, theirs_grads, strict=True))
    grad_scale = max(float(b.abs().max()) for b in theirs_grads)
    ours, theirs = ours.item(), theirs.item()
    return {
        "kdistill_loss": ours,
        "trl_loss": theirs,
        "loss_rel_diff": abs(ours - theirs) / abs(theirs),
        "grad_max_abs_diff_over_max_abs_grad": grad_diff / grad_scale,
    }


def run_kdistill(student: Any, teacher: Any, examples: list[dict], args: argparse.Namespace) -> dict:
    from kdistill.lm.config import LMDistillConfig, LMTrainConfig
    from kdistill.lm.objectives import OnlineTeacher, TokenDistillObjective
    from kdistill.lm.train import train_objective

    ends: list[float] = []
    cpu_ends: list[float] = []
    losses: list[float] = []

    def on_log(entry: dict[str, Any]) -> None:
        ends.append(time.perf_counter())
        cpu_ends.append(time.process_time())
        losses.append(entry["loss"])

    settings = LMDistillConfig(
        signal="online", divergence="forward_kl", temperature=1.0, kd_weight=1.0, ce_weight=0.0
    )
    objective = TokenDistillObjective(student, settings, teacher=OnlineTeacher(teacher), pad_token_id=0)
    cfg = LMTrainConfig(
        micro_batch_size=args.batch,
        grad_accum=1,
        lr=args.lr,
        warmup_steps=0,
        schedule="cosine",
        grad_clip=1.0,
        weight_decay=0.0,
        log_every=1,
    )
    result = train_objective(
        objective, examples, cfg, steps=args.steps, seed=0, pad_token_id=0, on_log=on_log
    )
    assert result.finished and len(ends) == args.steps
    # mean loss over the same 10-step windows TRL logs
    windows = [statistics.fmean(losses[i : i + 10]) for i in range(0, len(losses), 10)]
    return {"ends": ends, "cpu_ends": cpu_ends, "logged_losses": windows, "student": result.model}


def run_trl(
    student: Any, teacher: Any, tokenizer: Any, ordered: list[dict], args: argparse.Namespace
) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    ends: list[float] = []
    cpu_ends: list[float] = []
    logged: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                logged.append(logs["loss"])

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        from kdistill.lm.sft_data import collate as kd_collate

        return kd_collate(rows, pad_token_id=0)  # right padding, the same batch tensors kdistill builds

    dataset = Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in ordered])
    with tempfile.TemporaryDirectory() as out:
        config = GKDConfig(
            output_dir=out,
            max_steps=args.steps,
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1,
            learning_rate=args.lr,
            lr_scheduler_type="cosine",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            optim="adamw_torch",
            bf16=False,
            fp16=False,
            use_cpu=True,
            gradient_checkpointing=False,
            train_sampling_strategy="sequential",
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            logging_steps=10,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            disable_tqdm=True,
            seed=0,
            lmbda=0.0,  # never the student's own samples: off-policy
            beta=0.0,  # forward KL(teacher || student)
            temperature=1.0,  # GKD's sampling temperature; its loss always runs at T = 1
        )
        trainer = GKDTrainer(
            model=student,
            teacher_model=teacher,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            data_collator=collate,
            callbacks=[StepClock()],
        )
        trainer.train()
    assert len(ends) == args.steps, len(ends)
    assert not trainer.model.is_gradient_checkpointing, "TRL's default gradient checkpointing is on"
    return {"ends": ends, "cpu_ends": cpu_ends, "logged_losses": logged, "student": trainer.model}


def step_times(ends: list[float], warmup: int) -> list[float]:
    """Step s takes from the end of step s - 1 to its own end; steps warmup + 1 .. last."""
    return [b - a for a, b in zip(ends[warmup - 1 : -1], ends[warmup:], strict=True)]


def summarise(
    ends_per_round: list[list[float]],
    cpu_ends_per_round: list[list[float]],
    warmup: int,
    tokens_per_step: int,
) -> dict[str, Any]:
    step_s = [step_times(e, warmup) for e in ends_per_round]
    cpu_step_s = [step_times(e, warmup) for e in cpu_ends_per_round]
    pooled = [t for run in step_s for t in run]
    q = statistics.quantiles(pooled, n=4, method="inclusive")
    median = statistics.median(pooled)
    cpu_median = statistics.median([t for run in cpu_step_s for t in run])
    return {
        "steps_timed": len(pooled),
        "median_step_s": median,
        "q25_step_s": q[0],
        "q75_step_s": q[2],
        "tokens_per_s_median": tokens_per_step / median,
        "tokens_per_s_total": tokens_per_step * len(pooled) / sum(pooled),
        "tokens_per_s_per_round": [tokens_per_step * len(r) / sum(r) for r in step_s],
        "cpu_median_step_s": cpu_median,
        "tokens_per_cpu_s_median": tokens_per_step / cpu_median,
        "step_s": step_s,
        "cpu_step_s": cpu_step_s,
    }


def run_case(vocab_size: int, prompt: int, args: argparse.Namespace) -> dict[str, Any]:
    """One (vocabulary, prompt length) setting: both arms, alternating over the rounds."""
    import torch
    from tests.fixtures.tiny_lm import train_tokenizer

    from kdistill.lm.config import LMTrainConfig
    from kdistill.lm.models import model_from_config
    from kdistill.lm.sft_data import collate
    from kdistill.lm.train import train_sft
    from kdistill.runs.steps import batch_indices

    started = time.perf_counter()
    tokenizer = train_tokenizer(vocab_size)
    # BPE on the pydoc text stops near 9,200 tokens: a larger VOCAB is the models' vocabulary (head and
    # embedding rows), the text using its first len(tokenizer) ids. The work per step depends only on shapes.
    vocab = max(len(tokenizer), vocab_size)
    examples = pydoc_examples(tokenizer, args.seq, prompt)
    teacher = model_from_config(llama(vocab, args.teacher_hidden, args.teacher_layers, args.shape), seed=0)
    teacher_loss = None
    if args.teacher_sft_steps:
        fit_cfg = LMTrainConfig(micro_batch_size=16, grad_accum=1, lr=3e-3, warmup_steps=0, log_every=60)
        teacher_fit = train_sft(teacher, examples, fit_cfg, steps=args.teacher_sft_steps, pad_token_id=0)
        teacher, teacher_loss = teacher_fit.model, teacher_fit.history[-1]["loss"]
    teacher = teacher.eval().requires_grad_(False)
    student_config = llama(vocab, args.student_hidden, args.student_layers, args.shape)
    # kdistill's batch order, handed to TRL as a sequential dataset: both arms see the same batches
    order = [i for s in range(args.steps) for i in batch_indices(s, len(examples), args.batch, 0).tolist()]
    ordered = [examples[i] for i in order]
    loss_tokens = args.batch * (args.seq - prompt)
    print(
        f"\n== vocab {vocab}, prompt {prompt}: {len(examples)} windows of {args.seq}; teacher loss after SFT "
        f"{teacher_loss}; {torch.get_num_threads()} thread(s)",
        flush=True,
    )
    check = loss_check(
        model_from_config(student_config, seed=1), teacher, collate(ordered[: args.batch], pad_token_id=0)
    )
    print(f"loss check: {check}", flush=True)

    ends: dict[str, list[list[float]]] = {"kdistill": [], "trl": []}
    cpu_ends: dict[str, list[list[float]]] = {"kdistill": [], "trl": []}
    logged: dict[str, list[list[float]]] = {"kdistill": [], "trl": []}
    finals: dict[str, Any] = {}
    for r in range(args.rounds):
        for arm in ("kdistill", "trl") if r % 2 == 0 else ("trl", "kdistill"):
            student = model_from_config(student_config, seed=1)  # the same initial weights every run
            out = (
                run_kdistill(student, teacher, examples, args)
                if arm == "kdistill"
                else run_trl(student, teacher, tokenizer, ordered, args)
            )
            assert torch.get_num_threads() == args.threads, torch.get_num_threads()
            ends[arm].append(out["ends"])
            cpu_ends[arm].append(out["cpu_ends"])
            logged[arm].append(out["logged_losses"])
            if r == 0:
                finals[arm] = {k: v.detach().clone() for k, v in out["student"].state_dict().items()}
            run = summarise([out["ends"]], [out["cpu_ends"]], args.warmup, loss_tokens)
            print(
                f"round {r + 1} {arm:>8}: {run['tokens_per_s_median']:7.0f} loss tokens/s (median step)",
                flush=True,
            )

    arms = {arm: summarise(ends[arm], cpu_ends[arm], args.warmup, loss_tokens) for arm in ends}
    k_arm, t_arm = arms["kdistill"], arms["trl"]
    per_round = zip(k_arm["tokens_per_s_per_round"], t_arm["tokens_per_s_per_round"], strict=True)
    return {
        "vocab": vocab,
        "prompt_tokens_without_loss": prompt,
        "loss_tokens_per_step": loss_tokens,
        # the largest (tokens x vocab) float32 tensors of each arm, in MiB (see the README on glibc's 32 MiB)
        "logits_mib": {
            "kdistill_loss_rows": args.batch * (args.seq - prompt) * vocab * 4 / 2**20,
            "trl_full_logits": args.batch * args.seq * vocab * 4 / 2**20,
        },
        "kdistill_over_trl_tokens_per_s": k_arm["tokens_per_s_median"] / t_arm["tokens_per_s_median"],
        "kdistill_over_trl_tokens_per_cpu_s": k_arm["tokens_per_cpu_s_median"]
        / t_arm["tokens_per_cpu_s_median"],
        "per_round_ratio": (ratios := [a / b for a, b in per_round]),
        "median_round_ratio": statistics.median(ratios),
        "arms": arms,
        "loss_check_first_batch": check,
        "final_weights_round1_max_abs_diff": max(
            float((finals["kdistill"][k] - finals["trl"][k]).abs().max()) for k in finals["trl"]
        ),
        "final_weights_max_abs": max(float(v.abs().max()) for v in finals["trl"].values()),
        "logged_losses_every_10_steps": logged,
        "teacher_sft_loss": teacher_loss,
        "wall_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--setup", action="store_true", help=f"create {VENV.name} (run with kdistill's .venv)"
    )
    parser.add_argument(
        "--cases",
        default="4096:16,4096:1,8192:16,8192:1",
        help="comma-separated VOCAB:PROMPT settings: BPE vocabulary size, leading tokens without loss",
    )
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=8, help="sequences per optimizer step (no accumulation)")
    parser.add_argument("--steps", type=int, default=25, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps dropped at the start of every run")
    parser.add_argument("--rounds", type=int, default=8, help="runs per arm and case, alternating")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--teacher-layers", type=int, default=4)
    parser.add_argument("--teacher-hidden", type=int, default=128)
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--student-hidden", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both arms")
    parser.add_argument(
        "--shape",
        choices=("tiny", "smollm2-135m"),
        default="tiny",
        help="block shape of both models; smollm2-135m: width 576, 30 blocks, MLP 1536, 9/3 heads, tied "
        "embeddings (use with --cases 49152:1 --teacher-sft-steps 0 and a small --batch)",
    )
    parser.add_argument(
        "--teacher-sft-steps", type=int, default=60, help="SFT steps that make the teacher a (weak) LM first"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 12 steps, 1 round; writes nothing")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON results go")
    args = parser.parse_args()
    if args.setup:
        return setup()
    if args.quick:
        args.steps, args.warmup, args.rounds = 12, 2, 1
    if args.shape == "smollm2-135m":
        args.teacher_hidden = args.student_hidden = 576
        args.teacher_layers = args.student_layers = 30
    if not 1 <= args.warmup < args.steps:
        parser.error("need 1 <= --warmup < --steps")
    try:
        cases = [tuple(int(x) for x in c.split(":")) for c in args.cases.split(",")]
        assert all(len(c) == 2 for c in cases)
    except (ValueError, AssertionError):
        parser.error(f"--cases must look like 4096:16,8192:1; got {args.cases!r}")

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    sys.path.insert(0, str(ROOT))
    load_before = os.getloadavg()
    started = time.perf_counter()
    results = [run_case(vocab, prompt, args) for vocab, prompt in cases]
    wall = time.perf_counter() - started
    load_after = os.getloadavg()

    print()
    print(
        "| vocab | prompt | arm | steps timed | median s/step | IQR s/step | loss tokens/s (median step) "
        "| CPU s/step (median) | kdistill / TRL tokens/s | median of per-round ratios [min-max] |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for case in results:
        for arm, s in case["arms"].items():
            ratio = rounds = ""
            if arm == "kdistill":
                ratio = f"**{case['kdistill_over_trl_tokens_per_s']:.2f}**"
                low, high = min(case["per_round_ratio"]), max(case["per_round_ratio"])
                rounds = f"{case['median_round_ratio']:.2f} [{low:.2f}-{high:.2f}]"
            print(
                f"| {case['vocab']} | {case['prompt_tokens_without_loss']} | {arm} | {s['steps_timed']} | "
                f"{s['median_step_s']:.3f} | {s['q25_step_s']:.3f}-{s['q75_step_s']:.3f} | "
                f"{s['tokens_per_s_median']:.0f} | {s['cpu_median_step_s']:.3f} | {ratio} | {rounds} |"
            )
    for case in results:
        print(
            f"vocab {case['vocab']} prompt {case['prompt_tokens_without_loss']}: loss check "
            f"{case['loss_check_first_batch']}; final weights after round 1 differ by at most "
            f"{case['final_weights_round1_max_abs_diff']:.1e}; logged losses kdistill "
            f"{[round(x, 5) for x in case['logged_losses_every_10_steps']['kdistill'][0]]} TRL "
            f"{[round(x, 5) for x in case['logged_losses_every_10_steps']['trl'][0]]}"
        )
    print(f"wall {wall:.0f} s; load average before {load_before}, after {load_after}")
    if args.quick:
        return
    result = {
        "benchmark": "trl_comparison",
        "target": "kdistill tokens/s >= TRL tokens/s",
        "cases": results,
        "settings": {
            "seq": args.seq,
            "batch": args.batch,
            "steps_per_run": args.steps,
            "warmup_steps_dropped": args.warmup,
            "rounds": args.rounds,
            "lr": args.lr,
            "shape": args.shape,
            "teacher_sft_steps": args.teacher_sft_steps,
            "teacher": llama(0, args.teacher_hidden, args.teacher_layers, args.shape)
            | {"vocab_size": "per case"},
            "student": llama(0, args.student_hidden, args.student_layers, args.shape)
            | {"vocab_size": "per case"},
            "threads": torch.get_num_threads(),
            "dtype": "float32",
            "trl": "GKDTrainer lmbda=0 beta=0 (loss at T=1), optim adamw_torch, cosine, clip 1.0, logging_steps 10",
            "kdistill": "TokenDistillObjective forward_kl T=1 ce_weight 0, OnlineTeacher, chunk_size 1024, "
            "train_objective log_every 1",
        },
        "versions": {
            name: metadata.version(name)
            for name in ("torch", "transformers", "accelerate", "datasets", "trl")
        },
        "wall_s": wall,
        "load_average_before_after": [load_before, load_after],
        "machine": {
            "nproc": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from kdistill.io import atomic_write_text

    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
