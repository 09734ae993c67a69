"""Record the golden loss values: `python tests/golden/record.py` (run by hand, never by a test).

Rerun only when a loss's semantics change on purpose, and say why in the commit: the test
tests/losses/test_golden.py then guards every loss against silent changes of its value (a change
detector), and tests/losses/test_ref_golden.py checks every recorded value against an independent
reference, so a value recorded from a wrong loss does not pass. A new entry needs a reference there too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kdistill import losses

GOLDEN = Path(__file__).with_name("losses.json")


def golden_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    return {
        "s_logits": torch.randn(6, 5, generator=g, dtype=torch.float64) * 2,
        "t_logits": torch.randn(6, 5, generator=g, dtype=torch.float64) * 2,
        "target": torch.tensor([0, 3, 1, 4, 2, 2]),
        "partial_target": torch.tensor([0, -1, 1, -1, -1, 2]),
        "s_map": torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64),
        "t_map": torch.randn(6, 7, 4, 4, generator=g, dtype=torch.float64),
        "s_emb": torch.randn(6, 4, generator=g, dtype=torch.float64),
        "t_emb": torch.randn(6, 9, generator=g, dtype=torch.float64),
    }


def compute() -> dict[str, float]:
    x = golden_inputs()
    values = {
        "cross_entropy": losses.cross_entropy(x["s_logits"], x["partial_target"]),
        "hinton_kd": losses.hinton_kd(x["s_logits"], x["t_logits"]),
        "hinton_kd@T=1": losses.hinton_kd(x["s_logits"], x["t_logits"], temperature=1.0),
        "dkd": losses.dkd(x["s_logits"], x["t_logits"], x["target"]),
        "fitnet_hint": losses.fitnet_hint(x["s_map"], x["t_map"][:, :3]),
        "attention_transfer": losses.attention_transfer(x["s_map"], x["t_map"]),
        "rkd_distance": losses.rkd_distance(x["s_emb"], x["t_emb"]),
        "rkd_angle": losses.rkd_angle(x["s_emb"], x["t_emb"]),
        "similarity_preserving": losses.similarity_preserving(x["s_map"], x["t_map"]),
    }
    return {k: float(v) for k, v in values.items()}


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(compute(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
