"""FSDP training runs in one process of a torchrun group; test_fsdp.py compares what the main process saves.

Usage: torchrun --nproc_per_node=N distributed_fsdp_main.py SPEC_JSON. The spec names the tiny model
directory, the examples file, an output directory and a list of runs, each trained with
train.parallel fsdp in turn in the same process group:
  {"name", "mode": sft | cached | online | on_policy, "micro", "accum", "steps", "stop_after", "kill",
   "mixed_precision", "activation_checkpointing", "signal_dir"}
The main process writes OUT/<name>/weights.safetensors (the consolidated student, finished runs),
history.json and, for finished runs, the save_pretrained folder OUT/<name>/model. With "kill" every
process SIGKILLs itself right after the run stops (after `stop_after` steps, past its last checkpoint).
With "shards": true every process also writes OUT/shards-<rank>.json: the elements it holds of the
parameters, gradients and AdamW state of a freshly sharded objective after one step, and how far its
gradients (gathered) are from an unsharded backward of the same rows.
"""

import json
import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from kdistill.lm.config import LMDistillConfig, LMTrainConfig
from kdistill.lm.fsdp import local_numel, process_mesh, shard_objective
from kdistill.lm.models import load_causal_lm, model_from_config
from kdistill.lm.objectives import CachedTeacher, OnlineTeacher, SFTObjective, TokenDistillObjective
from kdistill.lm.sft_data import collate
from kdistill.lm.signal_store import TeacherSignal
from kdistill.lm.train import close_process_group, train_objective

KD = {"divergence": "forward_kl", "temperature": 2.0, "ce_weight": 0.5, "chunk_size": 16}


def kd_student(teacher):
    """A 2-layer student with the teacher's vocabulary, the same in every process."""
    config = teacher.config.to_dict() | {"num_hidden_layers": 2}
    return model_from_config(config, seed=1).to(teacher.dtype)


def make_objective(model_dir, mode, signal_dir=None):
    """The objective of a run: SFT of the tiny model, or KD of it into `kd_student` (cached or online)."""
    model = load_causal_lm(model_dir, dtype=torch.float32)
    if mode == "sft":
        return SFTObjective(model)
    if mode == "cached":
        cfg = LMDistillConfig(signal="cached", **KD)
        return TokenDistillObjective(
            kd_student(model), cfg, teacher=CachedTeacher(TeacherSignal(signal_dir)), pad_token_id=0
        )
    on_policy = {"on_policy_fraction": 1.0, "on_policy_max_new_tokens": 4} if mode == "on_policy" else {}
    cfg = LMDistillConfig(signal="online", **KD, **on_policy)
    return TokenDistillObjective(
        kd_student(model), cfg, teacher=OnlineTeacher(model), pad_token_id=0, eos_token_id=2
    )


def train_config(run):
    return LMTrainConfig(
        micro_batch_size=run["micro"],
        grad_accum=run["accum"],
        lr=1e-2,
        warmup_steps=1,
        log_every=1,
        grad_clip=0.5,
        checkpoint_every=2,
        parallel="fsdp",
        mixed_precision=run.get("mixed_precision", "no"),
        activation_checkpointing=run.get("activation_checkpointing", False),
    )


def write_shard_counts(model_dir, examples, out, rank):
    """What this process holds after one optimizer step of a sharded SFT objective, element counts."""
    batch = collate(examples[:2], pad_token_id=0)  # the same rows in every process
    unsharded = SFTObjective(load_causal_lm(model_dir, dtype=torch.float32))
    unsharded(batch)["nll"].backward()
    expected = {name: p.grad for name, p in unsharded.named_parameters()}
    objective = SFTObjective(load_causal_lm(model_dir, dtype=torch.float32))
    total = sum(p.numel() for p in objective.parameters())
    shard_objective(objective, mesh=process_mesh(torch.device("cpu")))
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-3)
    objective(batch)["nll"].backward()
    # the gradients reduce-scattered to the shards, gathered again: the head's flowed into the gathered weight
    grad_error = {
        name: (p.grad.full_tensor() - expected[name]).abs().max().item()
        for name, p in objective.named_parameters()
    }
    optimizer.step()
    counts = {
        "grad_error": grad_error,
        "grad_scale": max(g.abs().max().item() for g in expected.values()),
        "total": total,
        "params": sum(local_numel(p) for p in objective.parameters()),
        "grads": sum(local_numel(p.grad) for p in objective.parameters()),
        "adam": sum(
            local_numel(state[key]) for state in optimizer.state.values() for key in ("exp_avg", "exp_avg_sq")
        ),
    }
    (out / f"shards-{rank}.json").write_text(json.dumps(counts))


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(1)
    examples = json.loads(Path(spec["examples"]).read_text())
    out = Path(spec["out"])
    rank = int(os.environ.get("RANK", "0"))
    for run in spec["runs"]:
        run_dir = out / run["name"]
        objective = make_objective(spec["model_dir"], run["mode"], run.get("signal_dir"))
        result = train_objective(
            objective,
            examples,
            train_config(run),
            steps=run["steps"],
            pad_token_id=0,
            checkpoint_dir=run_dir / "checkpoints",
            output_dir=run_dir / "model",
            stop_after=run.get("stop_after"),
        )
        if rank == 0:
            if result.finished:
                state = {k: v.detach().clone().contiguous() for k, v in result.model.state_dict().items()}
                save_file(state, str(run_dir / "weights.safetensors"))
            summary = {"history": result.history, "done": result.steps_done}
            (run_dir / "history.json").write_text(json.dumps(summary))
        if run.get("kill"):
            torch.distributed.barrier()  # both processes got here: the checkpoint on disk is the last one
            os.kill(os.getpid(), signal.SIGKILL)
    if spec.get("shards"):
        write_shard_counts(spec["model_dir"], examples, out, rank)
    close_process_group()


if __name__ == "__main__":
    main()
