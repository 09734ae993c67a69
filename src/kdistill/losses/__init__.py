"""Loss functions as pure functions of tensors, one family per module; importing this registers them all."""

from kdistill.losses.feature import attention_transfer, fitnet_hint
from kdistill.losses.relation import rkd_angle, rkd_distance, similarity_preserving
from kdistill.losses.response import cross_entropy, dkd, hinton_kd
from kdistill.losses.spec import LOSSES, LossSpec

__all__ = [
    "LOSSES",
    "LossSpec",
    "attention_transfer",
    "cross_entropy",
    "dkd",
    "fitnet_hint",
    "hinton_kd",
    "rkd_angle",
    "rkd_distance",
    "similarity_preserving",
]
