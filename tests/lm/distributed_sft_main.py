"""train_sft in one process of a torchrun group; the test compares what the main process saves.

Usage: torchrun --nproc_per_node=N distributed_sft_main.py MODEL_DIR EXAMPLES_JSON OUT_DIR MICRO ACCUM
[STOP_AFTER]. Every process trains; the main one writes OUT_DIR/weights.safetensors and history.json.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from kdistill.lm.models import load_causal_lm
from kdistill.lm.train import SFTConfig, train_sft


def main() -> None:
    model_dir, examples_file, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    micro, accum = int(sys.argv[4]), int(sys.argv[5])
    stop_after = int(sys.argv[6]) if len(sys.argv) > 6 else None
    torch.set_num_threads(1)
    examples = json.loads(examples_file.read_text())
    model = load_causal_lm(model_dir, dtype=torch.float64)
    cfg = SFTConfig(
        steps=4,
        micro_batch_size=micro,
        grad_accum=accum,
        lr=1e-2,
        warmup_steps=1,
        log_every=1,
        grad_clip=0.5,
        checkpoint_every=1,
    )
    result = train_sft(
        model, examples, cfg, pad_token_id=0, checkpoint_dir=out / "checkpoints", stop_after=stop_after
    )
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    state = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
    save_file(state, str(out / "weights.safetensors"))
    (out / "history.json").write_text(json.dumps({"history": result.history, "done": result.steps_done}))


if __name__ == "__main__":
    main()
