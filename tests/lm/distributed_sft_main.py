"""train_objective in one process of a torchrun group; the test compares what the main process saves.

Usage: torchrun --nproc_per_node=N distributed_sft_main.py MODEL_DIR EXAMPLES_JSON OUT_DIR MICRO ACCUM
[STOP_AFTER|-] [sft|kd]. Every process trains; the main one writes OUT_DIR/weights.safetensors and
history.json. sft fine-tunes MODEL_DIR's model; kd distils it (online teacher, forward KL + CE) into
`kd_student(teacher)`.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from kdistill.lm.config import LMDistillConfig, LMTrainConfig
from kdistill.lm.models import load_causal_lm, model_from_config
from kdistill.lm.objectives import OnlineTeacher, SFTObjective, TokenDistillObjective
from kdistill.lm.train import close_process_group, train_objective

KD = LMDistillConfig(signal="online", divergence="forward_kl", temperature=2.0, ce_weight=0.5, chunk_size=16)


def kd_student(teacher):
    """A 2-layer student with the teacher's vocabulary, the same in every process."""
    config = teacher.config.to_dict() | {"num_hidden_layers": 2}
    return model_from_config(config, seed=1).to(teacher.dtype)


def main() -> None:
    model_dir, examples_file, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    micro, accum = int(sys.argv[4]), int(sys.argv[5])
    stop_after = int(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[6] != "-" else None
    mode = sys.argv[7] if len(sys.argv) > 7 else "sft"
    torch.set_num_threads(1)
    examples = json.loads(examples_file.read_text())
    model = load_causal_lm(model_dir, dtype=torch.float64)
    cfg = LMTrainConfig(
        micro_batch_size=micro,
        grad_accum=accum,
        lr=1e-2,
        warmup_steps=1,
        log_every=1,
        grad_clip=0.5,
        checkpoint_every=1,
    )
    if mode == "kd":
        objective = TokenDistillObjective(kd_student(model), KD, teacher=OnlineTeacher(model), pad_token_id=0)
    else:
        objective = SFTObjective(model)
    result = train_objective(
        objective,
        examples,
        cfg,
        steps=4,
        pad_token_id=0,
        checkpoint_dir=out / "checkpoints",
        stop_after=stop_after,
    )
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        state = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
        save_file(state, str(out / "weights.safetensors"))
        (out / "history.json").write_text(json.dumps({"history": result.history, "done": result.steps_done}))
    close_process_group()


if __name__ == "__main__":
    main()
