"""Loss functions as pure functions of tensors, one family per module; importing this registers them all."""

from kdistill.losses.chunked import ChunkedLoss, chunked_cross_entropy, chunked_distill_loss
from kdistill.losses.crd import CRDLoss
from kdistill.losses.cross_chunked import CrossTokenizerLoss, chunked_cross_tokenizer_loss
from kdistill.losses.divergence import DIVERGENCES, Divergence, register
from kdistill.losses.embedding import (
    EMBEDDING_LOSSES,
    embedding_cosine,
    embedding_mse,
    similarity_matrix_loss,
)
from kdistill.losses.feature import attention_transfer, fitnet_hint
from kdistill.losses.hidden import hidden_cosine, hidden_mse
from kdistill.losses.hybrid import hybrid, hybrid_topk
from kdistill.losses.relation import rkd_angle, rkd_distance, similarity_preserving
from kdistill.losses.response import cross_entropy, dkd, hinton_kd
from kdistill.losses.spec import LOSSES, LossSpec
from kdistill.losses.token import (
    TOKEN_DIVERGENCES,
    alpha_beta,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_kl,
    tvd,
)
from kdistill.losses.token_sparse import (
    SPARSE_TOKEN_DIVERGENCES,
    sparse_forward_kl,
    sparse_generalized_jsd,
    sparse_reverse_kl,
    sparse_skew_kl,
    sparse_tvd,
)
from kdistill.losses.uld import uld, uld_topk

__all__ = [
    "CRDLoss",
    "ChunkedLoss",
    "CrossTokenizerLoss",
    "DIVERGENCES",
    "Divergence",
    "EMBEDDING_LOSSES",
    "LOSSES",
    "LossSpec",
    "SPARSE_TOKEN_DIVERGENCES",
    "TOKEN_DIVERGENCES",
    "alpha_beta",
    "attention_transfer",
    "chunked_cross_entropy",
    "chunked_cross_tokenizer_loss",
    "chunked_distill_loss",
    "cross_entropy",
    "dkd",
    "embedding_cosine",
    "embedding_mse",
    "fitnet_hint",
    "forward_kl",
    "generalized_jsd",
    "hidden_cosine",
    "hidden_mse",
    "hinton_kd",
    "hybrid",
    "hybrid_topk",
    "register",
    "reverse_kl",
    "rkd_angle",
    "rkd_distance",
    "similarity_matrix_loss",
    "similarity_preserving",
    "skew_kl",
    "sparse_forward_kl",
    "sparse_generalized_jsd",
    "sparse_reverse_kl",
    "sparse_skew_kl",
    "sparse_tvd",
    "tvd",
    "uld",
    "uld_topk",
]
