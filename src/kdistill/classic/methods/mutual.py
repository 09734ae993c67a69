"""Online distillation, deep mutual learning (Zhang et al. 2018): peers teach each other while they learn.

Peer i minimises its label loss plus the mean over the other peers j of each response term with peer j's
(detached) logits as the teacher; with hinton_kd at T=1 that is the paper's 1/(K-1) sum_j KL(p_j || p_i).
Updating all peers on one summed loss equals updating each on its own loss, since the targets are detached.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from kdistill.classic.config import LossTerm
from kdistill.classic.loop import Batch
from kdistill.classic.methods.base import METHODS, RunContext, TrainedModel
from kdistill.classic.methods.terms import LossTerms


class MutualLearning(nn.Module):
    def __init__(self, peers: Sequence[nn.Module], terms: Sequence[LossTerm]) -> None:
        super().__init__()
        self.peers = nn.ModuleList(peers)
        self.terms = LossTerms(terms)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        logits = [peer(batch.x) for peer in self.peers]
        out: dict[str, Tensor] = {}
        for i, own in enumerate(logits):
            others = [logits[j].detach() for j in range(len(logits)) if j != i]
            per_teacher = [self.terms(own, other, batch.target) for other in others]
            for name in per_teacher[0]:
                out[f"peer{i + 1}/{name}"] = sum(t[name] for t in per_teacher) / len(others)
        return out


@METHODS.register(
    "mutual", "online: 2+ peers of the student architecture learn together (deep mutual learning)"
)
def mutual(ctx: RunContext, seed: int) -> list[TrainedModel]:
    x, target = ctx.transfer_set()
    peers = [ctx.new_student(seed * 100 + k) for k in range(ctx.cfg.method.peers)]
    group = MutualLearning(peers, ctx.cfg.loss)
    history = ctx.run_job(
        f"mutual-s{seed}", group, group, x=x, target=target, seed=seed, evaluate=ctx.evaluator(peers[0])
    )
    return [TrainedModel("student (mutual, peer 1)", "distilled", peers[0], seed, history)]
