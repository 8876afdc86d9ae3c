"""CANet: one sub-model per user, sliced out of one supernet and chosen by a router.

Zhongyu Liu et al. "One Person, One Model -- Learning Compound Router for Sequential
Recommendation." ICDM 2022 (authors' code: github.com/icantnamemyself/CANet).

The package, by concern: :mod:`.keys` (config keys), :mod:`.routes` (route names and
summaries), :mod:`.block` and :mod:`.supernet` (the sliced supernet and its weight cache),
:mod:`.scoring` (the per-route reference path and the batched paths), :mod:`.router` (the
router, its Gumbel samples and losses), :mod:`.flops` (FLOPs accounting) and :mod:`.model`
(the :class:`CANet` class). Design notes: docs/models/canet.md.
"""

from recbole_flame.model.canet.block import SupernetBlock, Weights, masked_layer_norm
from recbole_flame.model.canet.flops import (
    block_flops,
    last_block_flops,
    route_flops,
    router_flops,
)
from recbole_flame.model.canet.keys import (
    ATTENTION_SCALES,
    BALANCE_LOSSES,
    FFN_WIDTHS,
    FIXED_ROUTES,
    GUIDE_FORMS,
    KEY_RULES,
    ROUTER_GRADIENTS,
)
from recbole_flame.model.canet.model import CANet
from recbole_flame.model.canet.router import guide_labels
from recbole_flame.model.canet.routes import Route, route_name, route_summary

__all__ = [
    "ATTENTION_SCALES",
    "BALANCE_LOSSES",
    "CANet",
    "FFN_WIDTHS",
    "FIXED_ROUTES",
    "GUIDE_FORMS",
    "KEY_RULES",
    "ROUTER_GRADIENTS",
    "Route",
    "SupernetBlock",
    "Weights",
    "block_flops",
    "guide_labels",
    "last_block_flops",
    "masked_layer_norm",
    "route_flops",
    "route_name",
    "route_summary",
    "router_flops",
]
