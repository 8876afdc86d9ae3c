"""CANet's config keys: the rules each is checked by when the config is built, and the values
its choice keys take (:meth:`CANet.check_config` relates the keys to each other)."""

from __future__ import annotations

from recbole_flame.config.rules import (
    Rule,
    boolean,
    int_list,
    integer,
    number,
    one_of,
    probability,
    show,
    structured,
)
from recbole_flame.model.canet.routes import parse_route

#: The keys listing the routing space's values: hidden widths, depths, embedding sizes.
LIST_KEYS = ("hidden_size_list", "n_layers_list", "embedding_size_list")
ROUTER_GRADIENTS = ("gate", "pair", "picked")
FFN_WIDTHS = ("full", "route")
ATTENTION_SCALES = ("full", "route")
GUIDE_FORMS = ("raw", "marginal")
BALANCE_LOSSES = ("uniform", "batch")
FIXED_ROUTES = ("full", "smallest")
SUPERNET_TRAININGS = ("route", "sandwich")


def _explain_fixed_route(key: str, value: object) -> str | None:
    if value is None or value in FIXED_ROUTES or parse_route(value) is not None:
        return None
    return (
        f"{key} must be ~ (the router decides), full, smallest or a route named "
        f"h<hidden>-l<layers>-e<embedding> such as h48-l2-e48, not {show(value)}"
    )


#: CANet's keys (CANet.yaml's) and the common key it narrows, checked when the config is built;
#: CANet.check_config relates them.
KEY_RULES: dict[str, Rule] = {
    "hidden_size_list": int_list(),  # each divisible by n_heads: check_config
    "n_layers_list": int_list(),
    "embedding_size_list": int_list(),
    "router_hidden_size": integer(),  # a multiple of router_n_heads: check_config
    "router_n_layers": integer(),
    "router_n_heads": integer(),
    "router_inner_size": integer(),
    "router_dropout_prob": probability(),
    "gumbel_tau": number(),
    "guide_weight": number(strict=False),
    "uniform_weight": number(strict=False),
    "guide_topk": integer(),
    "balance_loss": one_of(*BALANCE_LOSSES),
    "fixed_route": structured(
        "~, full, smallest or a route such as h48-l2-e48", _explain_fixed_route
    ),  # a named route must be in the routing space: check_config
    "router_gradient": one_of(*ROUTER_GRADIENTS),
    "ffn_width": one_of(*FFN_WIDTHS),
    "attention_scale": one_of(*ATTENTION_SCALES),
    "guide_form": one_of(*GUIDE_FORMS),
    "inference_timing_batches": integer(lo=0),
    "eval_chunk_size": integer(lo=0),
    "supernet_training": one_of(*SUPERNET_TRAININGS),  # sandwich: not with fixed_route
    "inplace_distillation": boolean(),  # needs supernet_training: sandwich
    "flops_budget": number(0.0, hi=1.0, none=True),  # not with fixed_route
    "flops_budget_weight": number(strict=False),
    "loss_type": one_of("CE", why="CANet trains with the full-softmax cross-entropy"),
}
