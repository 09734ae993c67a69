"""Sharded training of a causal-LM objective with PyTorch FSDP2 (`train.parallel: fsdp`).

`shard_objective` applies `torch.distributed.fsdp.fully_shard` to every decoder layer of the student and
then to the `Objective` itself, which becomes the FSDP root: each process keeps 1/N of every parameter,
gradient and (because the optimizer is built on the sharded parameters afterwards) AdamW state.

Why the objective is the root: the chunked losses (`kdistill.losses.chunked`) read `head.weight` directly
instead of calling the head. The root's forward all-gathers the parameters outside the layers (embeddings,
final norm, head, the objective's projections) and keeps them whole until its backward, so inside
`Objective.forward` the head weight is the whole (V, H) matrix while the logits are still formed a chunk of
tokens at a time: no (tokens x vocabulary) tensor, and the head's gradient flows into the gathered weight
and is reduce-scattered with the root's other gradients after backward.

An online teacher is sharded the same way over its `TeacherBackbone` (layers, then the backbone module as a
root of its own); it has no gradients, each layer is resharded after its forward, and `OnlineTeacher.release`
frees its gathered head once the loss has read it.

Gradients are averaged over processes by the reduce-scatter, as DDP's all-reduce does, so the loop's loss
scaling (num_processes / window tokens) gives the one-process gradient under either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from kdistill.lm.objectives import Objective, OnlineTeacher, TokenDistillObjective

__all__ = [
    "consolidated_student",
    "decoder_layers",
    "gradient_sync",
    "local_numel",
    "mixed_precision_policy",
    "process_mesh",
    "shard_objective",
    "shard_online_teacher",
]


def process_mesh(device: torch.device) -> DeviceMesh:
    """A 1-D mesh of all processes of the torchrun / accelerate group, on `device`'s type."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        raise ValueError(
            "train.parallel fsdp shards over processes: launch with `torchrun --nproc_per_node N` or "
            "`accelerate launch` (examples/accelerate/), or use train.parallel ddp in one process"
        )
    return init_device_mesh(device.type, (torch.distributed.get_world_size(),))


def mixed_precision_policy(mixed_precision: str) -> MixedPrecisionPolicy:
    """bf16: parameters gathered and computed in bfloat16, gradients reduced in float32, the sharded master
    weights and AdamW state stay in their own dtype (float32)."""
    if mixed_precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if mixed_precision == "fp16":
        raise ValueError(
            "train.mixed_precision fp16 needs a loss scaler, which train.parallel fsdp does not run: use bf16"
        )
    return MixedPrecisionPolicy()


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks, one FSDP unit each: the classes transformers lists in `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} names no decoder layer class (_no_split_modules): train.parallel fsdp "
            "shards transformers causal LMs layer by layer"
        )
    return layers


def shard_objective(
    objective: Objective,
    *,
    mesh: DeviceMesh,
    mixed_precision: str = "no",
    activation_checkpointing: bool = False,
) -> Objective:
    """Shard `objective` in place (its student per decoder layer, then itself as the root) and an online
    teacher with it; returns the objective, now also an `FSDPModule`. Build the optimizer afterwards."""
    if hasattr(objective.student, "peft_config"):
        raise ValueError(
            "train.parallel fsdp does not train LoRA adapters (student.lora): use ddp, or drop lora"
        )
    policy = mixed_precision_policy(mixed_precision)
    if activation_checkpointing:
        enable_activation_checkpointing(objective.student)
    for layer in decoder_layers(objective.student):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(objective, mesh=mesh, mp_policy=policy)
    if isinstance(objective, TokenDistillObjective):
        # the student generates (on-policy steps) outside forward: gather the root for it too
        register_fsdp_forward_method(objective, "sample_answers")
        if isinstance(objective.teacher, OnlineTeacher):
            shard_online_teacher(objective.teacher, mesh=mesh)
    return objective


def enable_activation_checkpointing(student: nn.Module) -> None:
    """Recompute each decoder layer in backward (transformers' gradient checkpointing, non-reentrant, which
    composes with FSDP's per-layer hooks)."""
    student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def shard_online_teacher(teacher: OnlineTeacher, *, mesh: DeviceMesh) -> None:
    """Shard a frozen teacher per decoder layer (resharded after each forward) with its `runner` as root;
    it keeps its own dtype (`distill.teacher_dtype`)."""
    if isinstance(teacher.runner, FSDPModule):
        return
    for layer in decoder_layers(teacher.model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    fully_shard(teacher.runner, mesh=mesh)


@contextlib.contextmanager
def gradient_sync(module: FSDPModule, enabled: bool) -> Iterator[None]:
    """Within: reduce-scatter gradients after backward (enabled) or keep accumulating them unsharded
    (the micro-batches before a window's last)."""
    module.set_requires_gradient_sync(enabled)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def local_numel(tensor: torch.Tensor) -> int:
    """Elements this process holds of `tensor` (its shard for a DTensor)."""
    return tensor.to_local().numel() if isinstance(tensor, DTensor) else tensor.numel()


def consolidated_student(objective: Objective, *, main: bool) -> nn.Module | None:
    """The sharded student gathered into one plain transformers model (collective; on the main process,
    in CPU memory; None elsewhere). It is a new model of the student's class: `save_pretrained` works."""
    student = objective.student
    dtype = next(student.parameters()).dtype  # the sharded master weights' dtype (not the compute one)
    state = get_model_state_dict(objective, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not main:
        return None
    prefix = "student."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    with torch.random.fork_rng(devices=[]):  # its throwaway initialisation must not move the training RNG
        plain = type(student)(student.config).to(dtype)
    missing, unexpected = plain.load_state_dict(weights, strict=False)
    tied = {k for k in missing if plain.get_parameter(k) is plain.get_input_embeddings().weight}
    if unexpected or set(missing) - tied:
        raise RuntimeError(
            f"consolidated weights do not fit the student: missing {missing}, unexpected {unexpected}"
        )
    plain.tie_weights()
    return plain.eval()
