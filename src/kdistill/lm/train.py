"""Training a causal LM student: lr -> step -> accumulate -> clip -> log -> eval/checkpoint.

`train_objective` is the loop; what it minimises is an `Objective` (an nn.Module owning the student and any
extra trainable parts) that returns named loss sums per micro-batch. `SFTObjective` (via `train_sft`) is
supervised fine-tuning on teacher answers; `kdistill.lm.distill` adds the white-box terms.

For SFT the loss is the negative log-likelihood of the response tokens (labels != -100), summed over every token
of the optimizer step's accumulation window and divided by the number of such tokens in that window. Each
micro-batch therefore contributes `its nll sum / window token count`, and the gradient is the same whether
a window is one batch of 8 or 8 micro-batches of 1 (a mean of per-micro-batch means would weight a short
answer's tokens more than a long one's).

Exact resume: the rows of step s are `batch_indices(s, n, global_batch, seed)`, so the data position is
the step number; a checkpoint holds the trainable parameters, AdamW's state, the scheduler, torch's RNG
(dropout, one state per process) and the running log sums. Device placement, mixed precision and data
parallelism come from `accelerate.Accelerator`.

Several processes (`accelerate launch` or `torchrun`): each optimizer step's window has
`micro_batch_size * grad_accum * num_processes` rows (the global batch), cut into micro-batches of
`micro_batch_size`; micro-batch j goes to process j % num_processes. The response tokens of the whole
window are summed over processes (one all-reduce), each process scales its loss sums by
num_processes / window tokens, and DDP's gradient average turns that into exactly the one-process
gradient. So 2 processes with grad_accum 1 and 1 process with grad_accum 2 take the same steps.
Only the main process writes checkpoints, evaluates and saves the model.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import GradientAccumulationPlugin, gather_object
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kdistill.io import atomic_write_text
from kdistill.lm.models import backbone_and_head
from kdistill.lm.sft_data import IGNORE_INDEX, collate, count_response_tokens
from kdistill.losses.chunked import chunked_cross_entropy
from kdistill.losses.numerics import compute_dtype
from kdistill.training.checkpoint import load_latest_checkpoint, save_checkpoint
from kdistill.training.loop import TrainingDiverged, batch_indices

__all__ = [
    "Objective",
    "SFTObjective",
    "LoraSettings",
    "SFTConfig",
    "SFTResult",
    "TrainingDiverged",
    "attach_lora",
    "lr_multiplier",
    "merge_lora",
    "response_nll_sum",
    "save_model",
    "train_objective",
    "train_sft",
]


@dataclass(frozen=True)
class LoraSettings:
    """Low-rank adapters (peft) on `target_modules`; only they train, and they are merged before saving."""

    r: int = 8  # rank of each adapter
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.0  # dropout on the adapter's input
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # module names to adapt


@dataclass(frozen=True)
class SFTConfig:
    """Every knob of `train_sft`, with its default."""

    steps: int = 100  # optimizer steps
    micro_batch_size: int = 4  # rows per forward pass
    # micro-batches per process per optimizer step; the window is micro_batch_size * grad_accum * processes rows
    grad_accum: int = 1
    lr: float = 1e-4  # peak learning rate
    warmup_steps: int = 0  # linear warmup from lr / warmup_steps to lr
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # decay after warmup
    min_lr_ratio: float = 0.0  # the decay ends at lr * min_lr_ratio
    weight_decay: float = 0.0  # AdamW decay, on matrices only (not norms, biases)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0  # max global grad norm; None = no clipping
    mixed_precision: Literal["no", "bf16", "fp16"] = (
        "no"  # autocast dtype (accelerate); the loss stays float32
    )
    seed: int = 0  # data order
    log_every: int = 10  # steps between history entries (and on_log calls)
    eval_every: int | None = None  # steps between `evaluate` calls; None = only at the end
    checkpoint_every: int | None = None  # steps between checkpoints; None = never
    lora: LoraSettings | None = None  # None = full fine-tuning

    def __post_init__(self) -> None:
        positive = {"steps": self.steps, "micro_batch_size": self.micro_batch_size}
        positive |= {"grad_accum": self.grad_accum, "log_every": self.log_every}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"SFTConfig.{name} must be >= 1, got {value}")
        for name in ("eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"SFTConfig.{name} must be >= 1 or None, got {value}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"SFTConfig.schedule must be cosine, linear or constant, got {self.schedule!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(
                f"SFTConfig.mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0 or self.warmup_steps < 0 or self.lr <= 0:
            raise ValueError("SFTConfig needs lr > 0, warmup_steps >= 0 and 0 <= min_lr_ratio <= 1")


@dataclass
class SFTResult:
    model: nn.Module  # the trained model: merged and plain when saved, still peft-wrapped otherwise (LoRA)
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per log/eval step
    steps_done: int = 0
    finished: bool = False  # False when `stop_after` ended the run early
    output_dir: Path | None = None  # where the model was saved, if it was


def response_nll_sum(logits: Tensor, labels: Tensor) -> Tensor:
    """Sum over response tokens of -log p(token | prefix), a scalar in float32 (or wider).

    logits (B, T, V) and labels (B, T), -100 where there is no loss; position t predicts token t + 1.
    All-masked gives 0.
    """
    shifted_logits = logits[:, :-1].flatten(0, 1)  # (B, T, V) -> (B*(T-1), V)
    shifted_labels = labels[:, 1:].flatten().to(logits.device)  # (B*(T-1),)
    return F.cross_entropy(
        shifted_logits.to(compute_dtype(logits)), shifted_labels, ignore_index=IGNORE_INDEX, reduction="sum"
    )


def lr_multiplier(
    step: int, *, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float = 0.0
) -> float:
    """Factor on the peak lr for optimizer step `step` (0-based): linear warmup, then cosine/linear/constant."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def attach_lora(model: PreTrainedModel, settings: LoraSettings) -> nn.Module:
    """Wrap `model` with peft LoRA adapters (injected in place); only the adapters stay trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA adapters into the base weights and return the plain model (a no-op for a plain model)."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def save_model(
    model: nn.Module, output_dir: str | os.PathLike[str], tokenizer: PreTrainedTokenizerBase | None = None
) -> Path:
    """`save_pretrained` (LoRA merged first) + tokenizer, written beside and renamed into place.

    A crash leaves either the previous directory or the new one, so `from_pretrained(output_dir)` never
    sees half a model.
    """
    target = Path(output_dir)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    merge_lora(model).save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def _make_accelerator(mixed_precision: str) -> Accelerator:
    """The GPU if there is one (one per process under `accelerate launch`); accelerate's accumulation off.

    num_steps=1 because accelerate's backward divides the loss by its accumulation steps (even when they
    come from the environment): the window normalisation in `train_sft` must be the only one.
    """
    kwargs = {
        "cpu": not torch.cuda.is_available(),
        "mixed_precision": mixed_precision,
        "gradient_accumulation_plugin": GradientAccumulationPlugin(num_steps=1),
    }
    try:
        return Accelerator(**kwargs)
    except ValueError as err:
        if "already been initialized" not in str(err):
            raise
        # accelerate keeps one mixed-precision setting per process; a later run in the same process asking
        # for another one resets it, as transformers' Trainer does between trials (the process group stays).
        AcceleratorState._reset_state()
        return Accelerator(**kwargs)


def close_process_group() -> None:
    """Leave the torchrun / accelerate process group, if any, once every process got here.

    A process that exits with the group still open can abort in the C++ teardown of gloo's threads
    ("terminate called without an active exception"), failing a run that finished: call this at the end
    of a script, never between runs that share the group.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _make_optimizer(model: nn.Module, cfg: SFTConfig) -> torch.optim.AdamW:
    # nanoGPT's rule: decay matrices (weights, embeddings), not vectors (norm scales, biases).
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("nothing to train: the model has no trainable parameters")
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas)


def _trainable_state(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def _load_trainable_state(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    expected = set(_trainable_state(model))
    if set(state) != expected:
        raise ValueError(
            "checkpoint does not match the model's trainable parameters (a different model or LoRA setting?): "
            f"missing {sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}"
        )
    model.load_state_dict(dict(state), strict=False)


class Objective(nn.Module):
    """What `train_objective` trains: owns the student (and any extra trainable parts) and scores a batch.

    forward(batch) returns named loss *sums* over the batch's tokens, already weighted; the loop adds
    them, divides by the window's loss-token count and backpropagates. Everything trainable must be a
    submodule so that DDP, the optimizer and the checkpoints see it; a teacher must not be one.
    `prepare_window` may replace a step's micro-batches before they are scored (on-policy sampling).
    """

    student: nn.Module

    def prepare_window(self, micro_batches: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
        return micro_batches


class SFTObjective(Objective):
    """Negative log-likelihood of the response tokens: learn the teacher's answers as text.

    For a transformers causal LM the loss is computed from the last hidden states and the head weights
    `chunk_size` tokens at a time (`chunked_cross_entropy`): the (batch, seq, vocab) logits and their
    gradient are never formed, which at a 150k vocabulary is most of a small model's training memory.
    Models whose logits are not plain hidden @ head (soft-capped, scaled: see `backbone_and_head`), other
    modules, or chunk_size=None take the full logits.
    """

    def __init__(self, student: nn.Module, *, chunk_size: int | None = 1024) -> None:
        super().__init__()
        self.student = student
        self.chunk_size = chunk_size if chunk_size is not None and _plain_head(student) else None

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        if self.chunk_size is None:
            logits = self.student(input_ids=input_ids, attention_mask=attention_mask).logits
            return {"nll": response_nll_sum(logits, labels)}
        backbone, head = backbone_and_head(self.student)  # through a LoRA wrapper attached after __init__
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
        targets = labels[:, 1:].to(hidden.device)  # position t predicts token t + 1
        nll = chunked_cross_entropy(
            hidden, head.weight, head_bias=head.bias, labels=targets, chunk_size=self.chunk_size
        )
        return {"nll": nll}


def _plain_head(model: nn.Module) -> bool:
    """Whether `model`'s logits are exactly backbone hidden states @ head weights (+ bias)."""
    try:
        backbone_and_head(model)
    except (ValueError, AttributeError):
        return False
    return True


def train_sft(
    model: PreTrainedModel,
    examples: Sequence[Mapping[str, Any]],
    cfg: SFTConfig,
    **kwargs: Any,
) -> SFTResult:
    """Fine-tune `model` (in place) on tokenized `examples` ({"input_ids", "labels"}, from tokenize_rows).

    The keyword arguments are those of `train_objective`.
    """
    return train_objective(SFTObjective(model), examples, cfg, **kwargs)


def train_objective(
    objective: Objective,
    examples: Sequence[Mapping[str, Any]],
    cfg: SFTConfig,
    *,
    pad_token_id: int,
    tokenizer: PreTrainedTokenizerBase | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    stop_after: int | None = None,
) -> SFTResult:
    """Train `objective.student` (in place) on tokenized `examples` ({"input_ids", "labels", "record_id"}).

    With `checkpoint_dir`, a rerun resumes from the latest checkpoint and ends with the same weights as an
    uninterrupted run. With `output_dir`, the finished student (LoRA merged) and tokenizer are saved there
    with `save_pretrained`, plus `sft_history.json`. `evaluate(student)` runs every `eval_every` steps and
    at the end (main process only); `on_log(entry)` receives every history entry. `stop_after` ends the
    run after that many steps (to simulate an interruption); the model is then neither merged nor saved.
    Under `accelerate launch`/`torchrun` every process calls this with the same arguments.
    """
    if not examples:
        raise ValueError("no training examples")
    accelerator = _make_accelerator(cfg.mixed_precision)
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.lora is not None:
        objective.student = attach_lora(objective.student, cfg.lora)
    optimizer = _make_optimizer(objective, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_multiplier(
            s,
            warmup_steps=cfg.warmup_steps,
            total_steps=cfg.steps,
            schedule=cfg.schedule,
            min_lr_ratio=cfg.min_lr_ratio,
        ),
    )
    model, optimizer = accelerator.prepare(objective, optimizer)
    plain: Objective = accelerator.unwrap_model(model)
    params = [p for p in plain.parameters() if p.requires_grad]

    start, history = 0, []
    running: dict[str, Any] = {"terms": {}, "tokens": 0}  # sums since the last log entry (all processes)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None and (found := load_latest_checkpoint(ckpt_dir)) is not None:
        start, state = found
        _load_trainable_state(plain, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng_states = state["torch_rng"]
        # one RNG state per process; a resume with another process count reuses the main one (dropout differs)
        torch.set_rng_state(rng_states[rank] if len(rng_states) == world else rng_states[0])
        if torch.cuda.is_available() and state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        history, running = state["history"], state["running"]

    window = cfg.micro_batch_size * cfg.grad_accum * world
    done = start
    model.train()
    for step in range(start, cfg.steps):
        # lr: the scheduler has already set this step's lr on the optimizer.
        rows = batch_indices(step, len(examples), window, cfg.seed).tolist()
        mine = [rows[k : k + cfg.micro_batch_size] for k in range(0, len(rows), cfg.micro_batch_size)]
        micro_batches = [_collate_rows(examples, r, pad_token_id) for r in mine[rank::world]]
        micro_batches = plain.prepare_window(micro_batches, step)
        window_tokens = _global_sum(
            accelerator, sum(count_response_tokens(b["labels"]) for b in micro_batches)
        )

        # step + accumulate: each micro-batch adds its loss sums / the window's token count (x processes,
        # which DDP's gradient average divides out again).
        window_terms: dict[str, float] = {}
        for k, batch in enumerate(micro_batches):
            batch = {
                key: v.to(accelerator.device) if isinstance(v, Tensor) else v for key, v in batch.items()
            }
            # gradients are all-reduced once per window, after its last micro-batch
            sync = accelerator.no_sync(model) if k < len(micro_batches) - 1 else contextlib.nullcontext()
            with sync:
                terms = model(batch)
                total = sum(terms.values())
                if not torch.isfinite(total):
                    values = {name: float(v.detach()) for name, v in terms.items()}
                    raise TrainingDiverged(
                        f"loss is not finite at step {step + 1} (sums {values}); lower the lr "
                        f"(lr={cfg.lr}) or check the model's dtype (fp16 overflows more easily than bf16)"
                    )
                accelerator.backward(total * world / max(window_tokens, 1))
            for name, value in terms.items():
                window_terms[name] = window_terms.get(name, 0.0) + value.item()
        if world > 1:
            names = sorted(window_terms)
            sums = accelerator.reduce(
                torch.tensor(
                    [window_terms[n] for n in names], dtype=torch.float64, device=accelerator.device
                ),
                "sum",
            )
            window_terms = dict(zip(names, sums.tolist(), strict=True))

        # clip
        grad_norm = None
        if cfg.grad_clip is not None:
            grad_norm = float(accelerator.clip_grad_norm_(params, cfg.grad_clip))
            # fp16's loss scaler expects an inf norm now and then, and skips that step itself
            if not math.isfinite(grad_norm) and cfg.mixed_precision != "fp16":
                raise TrainingDiverged(
                    f"gradient norm is not finite at step {step + 1}; lower the lr ({cfg.lr})"
                )
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1

        # log
        for name, value in window_terms.items():
            running["terms"][name] = running["terms"].get(name, 0.0) + value
        running["tokens"] += window_tokens
        entry: dict[str, Any] = {"step": done}
        if done % cfg.log_every == 0 or done == cfg.steps:
            per_token = {name: v / max(running["tokens"], 1) for name, v in running["terms"].items()}
            entry |= {
                "loss": sum(per_token.values()),  # the objective per loss token (SFT: mean response nll)
                "terms": per_token,
                "tokens": running["tokens"],
                "lr": lr,
                "grad_norm": grad_norm,
            }
            running = {"terms": {}, "tokens": 0}

        # eval / checkpoint
        if evaluate is not None and (done == cfg.steps or (cfg.eval_every and done % cfg.eval_every == 0)):
            if accelerator.is_main_process:
                model.eval()
                entry["eval"] = dict(evaluate(plain.student))
                model.train()
            accelerator.wait_for_everyone()
        if len(entry) > 1:
            history.append(entry)
            if on_log is not None and accelerator.is_main_process:
                on_log(entry)
        if (
            ckpt_dir is not None
            and cfg.checkpoint_every
            and done % cfg.checkpoint_every == 0
            and done < cfg.steps
        ):
            rng_states = [torch.get_rng_state()]
            if world > 1:
                rng_states = [t for per_rank in gather_object([rng_states]) for t in per_rank]
            if accelerator.is_main_process:
                save_checkpoint(
                    ckpt_dir,
                    done,
                    {
                        "model": _trainable_state(plain),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "torch_rng": rng_states,
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                        "history": history,
                        "running": running,
                    },
                )
            accelerator.wait_for_everyone()
        if stop_after is not None and done >= stop_after and done < cfg.steps:
            break

    model.eval()
    # the caller gets its student back without accelerate's autocast wrapper around forward
    final: nn.Module = accelerator.unwrap_model(model, keep_fp32_wrapper=False).student
    if done < cfg.steps:
        return SFTResult(model=final, history=history, steps_done=done, finished=False)
    saved = None
    if output_dir is not None:
        final = merge_lora(final)
        if accelerator.is_main_process:
            saved = save_model(final, output_dir, tokenizer)
            atomic_write_text(saved / "sft_history.json", json.dumps(history, indent=1))
        accelerator.wait_for_everyone()
        saved = Path(output_dir)
    return SFTResult(model=final, history=history, steps_done=done, finished=True, output_dir=saved)


def _collate_rows(examples: Sequence[Mapping[str, Any]], rows: Sequence[int], pad_token_id: int) -> dict:
    """A micro-batch of these rows, with their record ids (a cached teacher signal joins on them)."""
    batch: dict[str, Any] = collate([examples[i] for i in rows], pad_token_id=pad_token_id)
    batch["ids"] = [examples[i].get("record_id", str(i)) for i in rows]
    return batch


def _global_sum(accelerator: Accelerator, value: int) -> int:
    """`value` summed over processes (itself in one process)."""
    if accelerator.num_processes == 1:
        return value
    return int(accelerator.reduce(torch.tensor([value], dtype=torch.int64, device=accelerator.device), "sum"))
