"""Training a causal LM student: lr -> step -> accumulate -> clip -> log -> eval/checkpoint.

`train_objective` is the loop; what it minimises is an `Objective` (an nn.Module owning the student and any
extra trainable parts) that returns named loss sums per micro-batch. `kdistill.lm.objectives` holds them:
`SFTObjective` (via `train_sft`) is supervised fine-tuning on teacher answers, `TokenDistillObjective` adds
the white-box terms.

For SFT the loss is the negative log-likelihood of the response tokens (labels != -100), summed over every token
of the optimizer step's accumulation window and divided by the number of such tokens in that window. Each
micro-batch therefore contributes `its nll sum / window token count`, and the gradient is the same whether
a window is one batch of 8 or 8 micro-batches of 1 (a mean of per-micro-batch means would weight a short
answer's tokens more than a long one's).

The loop's knobs are the run config's `train` section (`LMTrainConfig`) itself; what a run computes from
it (the number of optimizer steps, the seed) and the student's `lora` section come as arguments.

Exact resume: the rows of step s are `batch_indices(s, n, global_batch, seed)`, so the data position is
the step number; a checkpoint (`save_training_state`) holds the trainable parameters, AdamW's state, the
scheduler, torch's RNG (dropout, one state per process) and the running log sums. Device placement, mixed
precision and data parallelism come from `accelerate.Accelerator`.

Several processes (`accelerate launch` or `torchrun`): each optimizer step's window has
`micro_batch_size * grad_accum * num_processes` rows (the global batch), cut into micro-batches of
`micro_batch_size`; micro-batch j goes to process j % num_processes. The response tokens of the whole
window are summed over processes (one all-reduce), each process scales its loss sums by
num_processes / window tokens, and DDP's gradient average turns that into exactly the one-process
gradient. So 2 processes with grad_accum 1 and 1 process with grad_accum 2 take the same steps.
Only the main process writes checkpoints, evaluates and saves the model.

`train.parallel: fsdp` shards instead of replicating (`kdistill.lm.fsdp`): the objective is sharded with
FSDP2 before the optimizer is built, micro-batches before a window's last skip the gradient reduce-scatter
(as DDP's no_sync), the gradient norm is taken over the shards, checkpoints are sharded
(`save_sharded_training_state`: every process writes its part) and the finished student is gathered into
one plain model on the main process to evaluate and save. The same window arithmetic holds, so FSDP over 2
processes takes the steps of 1 process with accumulation too.
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
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, GradientAccumulationPlugin, gather_object
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kdistill.io import atomic_write_text, make_readable
from kdistill.lm.config import LMTrainConfig, LoraConfig
from kdistill.lm.objectives import LOGGED_ONLY, Objective, SFTObjective
from kdistill.lm.sft_data import collate, count_response_tokens
from kdistill.runs.checkpoint import (
    restore_sharded_training_state,
    restore_training_state,
    save_sharded_training_state,
    save_training_state,
)
from kdistill.runs.schedule import lr_scheduler
from kdistill.runs.steps import TrainingDiverged, batch_indices

__all__ = [
    "SFTResult",
    "TrainingDiverged",
    "attach_lora",
    "merge_lora",
    "save_model",
    "train_objective",
    "train_sft",
]


@dataclass
class SFTResult:
    model: nn.Module  # the trained model: merged and plain when saved, still peft-wrapped otherwise (LoRA)
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per log/eval step
    steps_done: int = 0
    finished: bool = False  # False when `stop_after` ended the run early
    output_dir: Path | None = None  # where the model was saved, if it was


def attach_lora(model: PreTrainedModel, lora: LoraConfig) -> nn.Module:
    """Wrap `model` with peft LoRA adapters (injected in place); only the adapters stay trainable."""
    import peft

    config = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, config)


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
    make_readable(tmp)  # save_pretrained leaves its safetensors files 0600
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def _make_accelerator(mixed_precision: str) -> Accelerator:
    """The GPU if there is one (one per process under `accelerate launch`); accelerate's accumulation off.

    num_steps=1 because accelerate's backward divides the loss by its accumulation steps (even when they
    come from the environment): the window normalisation in `train_objective` must be the only one.
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


def _make_optimizer(model: nn.Module, cfg: LMTrainConfig) -> torch.optim.AdamW:
    """AdamW with torch's betas (0.9, 0.999); nanoGPT's rule: decay matrices (weights, embeddings), not
    vectors (norm scales, biases)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("nothing to train: the model has no trainable parameters")
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.999))


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


def train_sft(
    model: PreTrainedModel,
    examples: Sequence[Mapping[str, Any]],
    cfg: LMTrainConfig,
    *,
    steps: int,
    **kwargs: Any,
) -> SFTResult:
    """Fine-tune `model` (in place) on tokenized `examples` ({"input_ids", "labels"}, from tokenize_rows).

    The keyword arguments are those of `train_objective`.
    """
    return train_objective(SFTObjective(model), examples, cfg, steps=steps, **kwargs)


def train_objective(
    objective: Objective,
    examples: Sequence[Mapping[str, Any]],
    cfg: LMTrainConfig,
    *,
    steps: int,
    seed: int = 0,
    lora: LoraConfig | None = None,
    pad_token_id: int,
    tokenizer: PreTrainedTokenizerBase | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    stop_after: int | None = None,
) -> SFTResult:
    """Train `objective.student` (in place) on tokenized `examples` ({"input_ids", "labels", "record_id"})
    for `steps` optimizer steps; `seed` decides the data order, `lora` (None: full fine-tuning) trains
    adapters only. The warmup is cut to steps - 1, so a short run still reaches the peak lr.

    With `checkpoint_dir`, a rerun resumes from the latest checkpoint and ends with the same weights as an
    uninterrupted run. With `output_dir`, the finished student (LoRA merged) and tokenizer are saved there
    with `save_pretrained`, plus `sft_history.json`. `evaluate(student)` runs every `cfg.eval_every` steps
    and at the end (main process only); `on_log(entry)` receives every history entry. `stop_after` ends the
    run after that many steps (to simulate an interruption); the model is then neither merged nor saved.
    Under `accelerate launch`/`torchrun` every process calls this with the same arguments.
    """
    if not examples:
        raise ValueError("no training examples")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    fsdp = cfg.parallel == "fsdp"
    # under FSDP its MixedPrecisionPolicy casts, not accelerate's autocast
    accelerator = _make_accelerator("no" if fsdp else cfg.mixed_precision)
    world, rank = accelerator.num_processes, accelerator.process_index
    if accelerator.distributed_type == DistributedType.FSDP:
        raise ValueError(
            "accelerate's FSDP plugin (--use_fsdp, distributed_type: FSDP) is not how kdistill shards: launch "
            "with a multi-process config (examples/accelerate/*.yaml) and set train.parallel: fsdp"
        )
    if lora is not None:
        if fsdp:
            raise ValueError(
                "train.parallel fsdp does not train LoRA adapters (student.lora): use ddp, or drop lora"
            )
        objective.student = attach_lora(objective.student, lora)
    if fsdp:
        from kdistill.lm.fsdp import process_mesh, shard_objective

        shard_objective(
            objective,
            mesh=process_mesh(accelerator.device),
            mixed_precision=cfg.mixed_precision,
            activation_checkpointing=cfg.activation_checkpointing,
        )
    elif cfg.activation_checkpointing:
        objective.student.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    optimizer = _make_optimizer(objective, cfg)
    scheduler = lr_scheduler(
        optimizer,
        total_steps=steps,
        warmup_steps=min(cfg.warmup_steps, steps - 1),
        schedule=cfg.schedule,
        min_lr_ratio=cfg.min_lr_ratio,
    )
    if fsdp:
        model, plain = objective, objective
    else:
        model, optimizer = accelerator.prepare(objective, optimizer)
        plain = accelerator.unwrap_model(model)
    params = [p for p in plain.parameters() if p.requires_grad]
    log_every = cfg.log_every or max(1, steps // 20)

    start, history = 0, []
    running: dict[str, Any] = {"terms": {}, "tokens": 0}  # sums since the last log entry (all processes)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if fsdp:
        resumed = restore_sharded_training_state(
            ckpt_dir, model=model, optimizer=optimizer, scheduler=scheduler, rank=rank, world=world
        )
    else:
        resumed = restore_training_state(
            ckpt_dir, optimizer=optimizer, scheduler=scheduler, rank=rank, world=world
        )
        if resumed is not None:
            _load_trainable_state(plain, resumed[1]["model"])
    if resumed is not None:
        start, state = resumed
        history, running = state["history"], state["running"]

    window = cfg.micro_batch_size * cfg.grad_accum * world
    done = start
    gathered: nn.Module | None = None  # fsdp: the student gathered for the last evaluation
    model.train()
    for step in range(start, steps):
        # lr: the scheduler has already set this step's lr on the optimizer.
        rows = batch_indices(step, len(examples), window, seed).tolist()
        mine = [rows[k : k + cfg.micro_batch_size] for k in range(0, len(rows), cfg.micro_batch_size)]
        micro_batches = [_collate_rows(examples, r, pad_token_id) for r in mine[rank::world]]
        micro_batches = plain.prepare_window(micro_batches, step)
        window_tokens = _global_sum(
            accelerator, sum(count_response_tokens(b["labels"]) for b in micro_batches)
        )

        # step + accumulate
        window_terms = _accumulate(
            accelerator, model, micro_batches, window_tokens, step=step, lr=cfg.lr, sharded=fsdp
        )

        # clip
        grad_norm = None
        if cfg.grad_clip is not None:
            if fsdp:  # the norm over all shards (a DTensor reduced across processes)
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            else:
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
        if done % log_every == 0 or done == steps:
            per_token = {name: v / max(running["tokens"], 1) for name, v in running["terms"].items()}
            entry |= {
                # the objective per loss token (SFT: mean response nll); logged-only parts are inside other terms
                "loss": sum(v for name, v in per_token.items() if not name.startswith(LOGGED_ONLY)),
                "terms": per_token,
                "tokens": running["tokens"],
                "lr": lr,
                "grad_norm": grad_norm,
            }
            running = {"terms": {}, "tokens": 0}

        # eval / checkpoint
        if evaluate is not None and (done == steps or (cfg.eval_every and done % cfg.eval_every == 0)):
            model.eval()
            if fsdp:  # collective; the plain model on the main process
                student = gathered = _gathered_student(plain, accelerator.is_main_process)
            else:
                student = plain.student
            if accelerator.is_main_process:
                entry["eval"] = dict(evaluate(student))
            model.train()
            accelerator.wait_for_everyone()
        if len(entry) > 1:
            history.append(entry)
            if on_log is not None and accelerator.is_main_process:
                on_log(entry)
        if ckpt_dir is not None and done % cfg.checkpoint_every == 0 and done < steps:
            _save_resume_point(
                accelerator,
                ckpt_dir,
                done,
                plain,
                optimizer,
                scheduler,
                sharded=fsdp,
                history=history,
                running=running,
            )
        if stop_after is not None and done >= stop_after and done < steps:
            break

    model.eval()
    if fsdp:
        # the main process gets the gathered plain student; the others keep their shards of it
        if done == steps and gathered is None:  # not gathered for the last evaluation already
            gathered = _gathered_student(plain, accelerator.is_main_process)
        final: nn.Module = gathered if done == steps and gathered is not None else plain.student
    else:
        # the caller gets its student back without accelerate's autocast wrapper around forward
        final = accelerator.unwrap_model(model, keep_fp32_wrapper=False).student
    if done < steps:
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


def _accumulate(
    accelerator: Accelerator,
    model: nn.Module,
    micro_batches: list[dict[str, Any]],
    window_tokens: int,
    *,
    step: int,
    lr: float,
    sharded: bool = False,
) -> dict[str, float]:
    """Backpropagate one optimizer step's micro-batches; the window's loss sums per term, all processes.

    Each micro-batch adds its loss sums / the window's token count (x processes, which DDP's or FSDP's
    gradient average divides out again), so the gradient does not depend on how the window is split.
    """
    world = accelerator.num_processes
    window_terms: dict[str, float] = {}
    for k, batch in enumerate(micro_batches):
        batch = {key: v.to(accelerator.device) if isinstance(v, Tensor) else v for key, v in batch.items()}
        # gradients are all-reduced once per window, after its last micro-batch
        last = k == len(micro_batches) - 1
        if sharded:
            from kdistill.lm.fsdp import gradient_sync

            sync = gradient_sync(model, last)
        else:
            sync = accelerator.no_sync(model) if not last else contextlib.nullcontext()
        with sync:
            terms = model(batch)
            total = sum(v for name, v in terms.items() if not name.startswith(LOGGED_ONLY))
            if not torch.isfinite(total):
                values = {name: float(v.detach()) for name, v in terms.items()}
                raise TrainingDiverged(
                    f"loss is not finite at step {step + 1} (sums {values}); lower the lr "
                    f"(lr={lr}) or check the model's dtype (fp16 overflows more easily than bf16)"
                )
            accelerator.backward(total * world / max(window_tokens, 1))
        for name, value in terms.items():
            window_terms[name] = window_terms.get(name, 0.0) + value.item()
    if world > 1:
        names = sorted(window_terms)
        sums = accelerator.reduce(
            torch.tensor([window_terms[n] for n in names], dtype=torch.float64, device=accelerator.device),
            "sum",
        )
        window_terms = dict(zip(names, sums.tolist(), strict=True))
    return window_terms


def _save_resume_point(
    accelerator: Accelerator,
    ckpt_dir: Path,
    done: int,
    plain: Objective,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    sharded: bool,
    **progress: Any,
) -> None:
    """The main process writes the checkpoint, with every process's RNG state (dropout differs per rank);
    sharded, every process writes its shards of the model and optimizer too."""
    rng_states = [torch.get_rng_state()]
    if accelerator.num_processes > 1:
        rng_states = [t for per_rank in gather_object([rng_states]) for t in per_rank]
    if sharded:
        save_sharded_training_state(
            ckpt_dir,
            done,
            model=plain,
            optimizer=optimizer,
            scheduler=scheduler,
            rng=rng_states,
            is_main=accelerator.is_main_process,
            **progress,
        )
        return
    if accelerator.is_main_process:
        save_training_state(
            ckpt_dir,
            done,
            model=_trainable_state(plain),
            optimizer=optimizer,
            scheduler=scheduler,
            rng=rng_states,
            **progress,
        )
    accelerator.wait_for_everyone()


def _gathered_student(objective: Objective, main: bool) -> nn.Module | None:
    from kdistill.lm.fsdp import consolidated_student

    return consolidated_student(objective, main=main)


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
