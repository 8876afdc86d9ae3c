"""CANet: one sub-model per user, sliced out of one supernet and chosen by a router.

Reference:
    Zhongyu Liu et al. "One Person, One Model -- Learning Compound Router for Sequential
    Recommendation." ICDM 2022. Authors' code: github.com/icantnamemyself/CANet.

Supernet. A SASRec-style causal transformer at the largest size (embedding E, hidden H, depth
D, ``n_heads`` heads, post-LayerNorm, residual branches scaled by a learnable scalar that starts
near 0). A route (h, l, e) uses the first e embedding dims, an input projection ``W_in[:h, :e]``,
the first l blocks and an output layer ``W_out[:, :h]`` over all items. In a block every Linear
keeps its first rows/columns and every LayerNorm its first h entries, except attention, which
is sliced **per head**: head j of width h / n_heads uses the first h / n_heads dims of head j of
the full projection (rows ``j*H/n + [0, h/n)`` of W_q, W_k, W_v and the same columns of W_o).
``ffn_width: full`` (the authors' training network) gives every route the supernet's whole FFN,
``W_1[:, :h]`` (4H x h) and ``W_2[:h, :]``; ``route`` gives it ``4h`` (``W_1[:4h, :h]``).
``attention_scale: full`` (the authors') scales scores by ``1/sqrt(H/n_heads)`` at every width
(their gated heads are full-width heads with zeroed dims); ``route`` by ``1/sqrt(h/n_heads)``.
The same slicing serves training, the guide and inference (the authors' code slices heads one
way in its gated training network and another in its per-route one).

Output layer. As in the authors' code and METHODS ("output layer h x N"), items are scored by
a Linear over all items whose input is sliced to the route's width, ``W_out[:, :h]`` plus the
full per-item bias, so e never meets the output and e != h needs no extra projection.

Router. Its own 32-d item and position embeddings, one transformer block, a Linear to one logit
per route at the last real step. Inference takes the argmax (no noise) and runs each route's
sliced sub-model on its users only, each route group trimmed to its own longest sequence, with
the routes' sliced weights cached while the weights do not change.

Training data. ``train_mode: dense`` with ``dense_windows: last`` (the defaults) is the authors'
layout: one row per user per epoch, the user's last window of L training items, the next item
as the target at every real step, the CE averaged over real steps; one route per row. The router
reads the whole window, so the route used at step t was chosen after seeing items t+1, ..., the
targets of those steps: a leak in the authors' training that this default keeps (at inference
the router sees only the past). ``train_mode: prefix`` is RecBole's one row per prefix, the loss
at the last step (no leak). ``position_alignment: end`` (default) puts the last item at position
L-1 as the authors' left padding does.

Why the router collapses, and the training signal. With straight-through Gumbel-softmax the
router learns only through what multiplies its one-hot sample:

* ``router_gradient: picked`` (this package's earlier training) multiplies the picked route's
  scores by ``1 + p - p.detach()``. Its gradient tells the router only whether sharpening the
  picked route's scores lowers the loss (``E_softmax[s] - s_target``), never whether another
  route would do better; early on that is positive for every route and larger for wide ones,
  the router drifts to one route, that route is the one trained, and the choice locks in
  (traced on amazon-beauty: every user on one route within ~100 steps). Kept as the ablation.
* ``gate`` (default, the authors'): the whole supernet runs for every user with the one-hot
  spread into masks: ``mask_e = sum_r y_r [k < e_r]`` on the embedding dims, ``mask_h`` on the
  hidden dims after the input projection and on each FFN's output, a per-head mask on Q, K, V,
  and depth ``x <- x + c_i (block_i(x) - x)`` with ``c_i = sum_r y_r [i < l_r]``. In value this
  is exactly the picked route (LayerNorms run over each user's first h dims, the hard width);
  its gradient gives every route's logit the first-order change of the loss when that route's
  dims and blocks are switched on, i.e. "would route r do better", and the weights get exactly
  the sub-model's gradient. Costs the full supernet per training row.
* ``pair``: a cheaper comparison, local like the gate's. Besides the picked route a, a
  neighbour b of a (one step up or down in one of h, l, e, drawn uniformly) is run on each
  row without gradient; the scores are ``s_a (1 + w_a - w_a') + s_b (w_b - w_b')`` with ``w``
  the two-way softmax of the Gumbel-perturbed logits of a and b (primes: detached), so the
  value is route a's and the router gets ``w_a w_b <dCE/ds, s_a - s_b> / tau``: whether b
  would score the target better. Costs about 1.3 routes per row; on the toy problem of the
  tests it splits users less reliably than ``gate``.

Losses: ``CE + guide_weight * L_guide + uniform_weight * L_balance``. L_guide: the smallest
route (no gradient, eval mode) either has the target in its top ``guide_topk`` at the last step
or not; a hit pulls the router toward small values of each dimension (emb, hidden, depth), a
miss toward large ones (soft labels ``softmax(m * log(2^i / 2^n))``, m = 2 for widths, 1 for
depth). ``guide_form: raw`` (the authors'): per dimension, a softmax over the sums of the raw
router logits of each value's routes, against the labels (at uniform logits 12x the gradient
of ``marginal`` on a dimension of 3 values among 36 routes, 9x on one of 4);
``marginal``: the router's marginal probabilities of each value. ``balance_loss: uniform`` is
the authors' cross-entropy of each user's route softmax (over the raw logits, as theirs: the
two forms coincide for this term) against uniform; ``batch`` the batch-mean distribution
against uniform.

FLOPs (per sequence, multiply-add = 2): position add L e (lookups are free); input projection
2 L e h; per block ``8 L h^2 + 4 L^2 h + 4 L h f`` (Q, K, V, O; scores and weighted sum; FFN of
inner width f = 4H under ``ffn_width: full``, 4h under ``route``); output layer at the last step
2 h N. The router costs the same formula at its width, one block, plus 2 * 32 * routes, and is
added to every routed user's count.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from torch import nn

from recbole_flame.model.layers.sequence import (
    dense_targets,
    first_trained_step,
    position_ids,
    trim_batch,
)
from recbole_flame.utils.errors import ConfigError

Route = tuple[int, int, int]  # (hidden, layers, embedding)
Weights = dict[str, torch.Tensor]

_LIST_KEYS = ("hidden_size_list", "n_layers_list", "embedding_size_list")
ROUTER_GRADIENTS = ("gate", "pair", "picked")
FFN_WIDTHS = ("full", "route")
ATTENTION_SCALES = ("full", "route")
GUIDE_FORMS = ("raw", "marginal")
_CHOICES = {
    "router_gradient": ROUTER_GRADIENTS,
    "ffn_width": FFN_WIDTHS,
    "attention_scale": ATTENTION_SCALES,
    "guide_form": GUIDE_FORMS,
    "balance_loss": ("uniform", "batch"),
}


def block_flops(length: int, width: int, inner: int) -> int:
    """One post-LN transformer block over ``length`` steps: projections, attention, FFN."""
    return 8 * length * width * width + 4 * length * length * width + 4 * length * width * inner


def last_block_flops(length: int, width: int, inner: int) -> int:
    """A model's last block where only the last step's output is needed: keys and values at
    every step, the query, attention output and FFN at the last step only."""
    return 4 * length * width * width + 4 * width * width + 4 * length * width + 4 * width * inner


def route_flops(route: Route, length: int, n_items: int, inner: int | None = None) -> int:
    """Analytic FLOPs of scoring all items for one sequence of ``length`` steps with one
    route, as inference runs it (the last block at the last step only); ``inner`` is the FFN
    width (default 4h)."""
    hidden, layers, emb = route
    inner = 4 * hidden if inner is None else inner
    # The lookups are free; adding the position embedding is one add per step and dim.
    return (
        length * emb
        + 2 * length * emb * hidden
        + (layers - 1) * block_flops(length, hidden, inner)
        + last_block_flops(length, hidden, inner)
        + 2 * hidden * n_items
    )


def guide_labels(n: int, sharpness: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels favouring small values, labels favouring large values) over ``n`` options."""
    weights = torch.tensor([2.0**i / 2.0**n for i in range(n)], dtype=torch.float64)
    large = torch.softmax(sharpness * torch.log(weights), dim=0).float()
    return large.flip(0), large


def route_name(route: Route) -> str:
    return "h{}-l{}-e{}".format(*route)


def route_summary(counts: dict[str, int], top: int = 5) -> dict[str, object]:
    """A route histogram's entropy (nats), effective number of routes (exp entropy), routes
    used and its most frequent routes with their shares."""
    total = sum(counts.values())
    if not total:
        return {"users": 0, "entropy": None, "perplexity": None, "routes_used": 0, "top": []}
    shares = {k: v / total for k, v in counts.items() if v}
    entropy = -sum(p * math.log(p) for p in shares.values())
    ranked = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return {
        "users": total,
        "entropy": round(entropy, 4),
        "perplexity": round(math.exp(entropy), 3),
        "routes_used": len(shares),
        "top": [[k, round(p, 4)] for k, p in ranked],
    }


def masked_layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, keep: torch.Tensor, eps: float
) -> torch.Tensor:
    """LayerNorm of each row over its own first h dims (``keep``: B x H, 1 on those dims;
    B x 1 x H broadcast over steps), zero beyond: ``F.layer_norm`` of the route's width."""
    keep = keep[:, None, :]
    width = keep.sum(-1, keepdim=True)
    mean = (x * keep).sum(-1, keepdim=True) / width
    centred = (x - mean) * keep
    var = (centred * centred).sum(-1, keepdim=True) / width
    return (centred * torch.rsqrt(var + eps) * weight + bias) * keep


class SupernetBlock(nn.Module):
    """A post-LN transformer block at full width, run either sliced to one route's width
    (:meth:`run` on :meth:`sliced` weights) or at full width behind masks (:meth:`gated`)."""

    def __init__(self, width: int, n_heads: int, inner: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.width, self.n_heads, self.inner, self.eps = width, n_heads, inner, eps
        self.query, self.key, self.value, self.out = (nn.Linear(width, width) for _ in range(4))
        self.ffn_in = nn.Linear(width, inner)
        self.ffn_out = nn.Linear(inner, width)
        self.norm_attn, self.norm_ffn = nn.LayerNorm(width, eps), nn.LayerNorm(width, eps)
        self.scale_attn = nn.Parameter(torch.tensor(1e-8))
        self.scale_ffn = nn.Parameter(torch.tensor(1e-8))
        self.dropout = nn.Dropout(dropout)

    def head_rows(self, width: int, device: torch.device) -> torch.Tensor:
        """Rows of the full Q/K/V projections (and columns of O) a width-``width`` slice uses."""
        full, part = self.width // self.n_heads, width // self.n_heads
        return (
            torch.arange(self.n_heads, device=device)[:, None] * full
            + torch.arange(part, device=device)
        ).reshape(-1)

    def sliced(self, width: int, inner: int) -> Weights:
        """The weights a route of this width and FFN width uses (differentiable views)."""
        rows = self.head_rows(width, self.query.weight.device)
        qkv = (self.query, self.key, self.value)
        return {
            "qkv_w": torch.cat([lin.weight[rows, :width] for lin in qkv]),
            "qkv_b": torch.cat([lin.bias[rows] for lin in qkv]),
            "out_w": self.out.weight[:width][:, rows],
            "out_b": self.out.bias[:width],
            "norm_attn_w": self.norm_attn.weight[:width],
            "norm_attn_b": self.norm_attn.bias[:width],
            "ffn_in_w": self.ffn_in.weight[:inner, :width],
            "ffn_in_b": self.ffn_in.bias[:inner],
            "ffn_out_w": self.ffn_out.weight[:width, :inner],
            "ffn_out_b": self.ffn_out.bias[:width],
            "norm_ffn_w": self.norm_ffn.weight[:width],
            "norm_ffn_b": self.norm_ffn.bias[:width],
        }

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        scale: float,
        keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Causal attention over right-padded rows: a real step's keys are all real, so no
        padding mask is needed there (padded steps' outputs are never read). ``keys`` (B x 1
        x 1 x L, bool): the keys a single query step may see instead."""
        p = self.dropout.p if self.training else 0.0
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=keys, dropout_p=p, is_causal=keys is None, scale=scale
        )

    def run(
        self, x: torch.Tensor, w: Weights, scale: float, last: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The block sliced to ``x``'s width with the route's weights ``w``: every step's
        output (B x l x h), or with ``last`` (each row's last real step) that step's only
        (B x 1 x h: keys and values still come from every step)."""
        b, length, width = x.shape
        heads = self.n_heads
        if last is None:
            qkv = F.linear(x, w["qkv_w"], w["qkv_b"]).view(b, length, 3, heads, -1)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            keys, steps = None, length
        else:
            kv = F.linear(x, w["qkv_w"][width:], w["qkv_b"][width:]).view(b, length, 2, heads, -1)
            k, v = kv.permute(2, 0, 3, 1, 4)
            x = x[torch.arange(b, device=x.device), last].unsqueeze(1)
            q = F.linear(x, w["qkv_w"][:width], w["qkv_b"][:width]).view(b, 1, heads, -1)
            q = q.transpose(1, 2)
            keys = (torch.arange(length, device=x.device) <= last[:, None])[:, None, None, :]
            steps = 1
        context = self._attend(q, k, v, scale, keys).transpose(1, 2).reshape(b, steps, width)
        attended = F.linear(context, w["out_w"], w["out_b"])
        x = F.layer_norm(
            x + self.dropout(self.scale_attn * attended),
            (width,),
            w["norm_attn_w"],
            w["norm_attn_b"],
            self.eps,
        )
        hidden = F.gelu(F.linear(x, w["ffn_in_w"], w["ffn_in_b"]))
        fed = F.linear(hidden, w["ffn_out_w"], w["ffn_out_b"])
        return F.layer_norm(
            x + self.dropout(self.scale_ffn * fed),
            (width,),
            w["norm_ffn_w"],
            w["norm_ffn_b"],
            self.eps,
        )

    def gated(self, x: torch.Tensor, gates: dict[str, torch.Tensor]) -> torch.Tensor:
        """The block at full width for rows whose route is given by straight-through masks
        (``gates``: ``hidden``, ``heads``, ``inner`` or None, all B x dims; ``keep``: the hard
        hidden mask; ``scale``: B attention scales). In value, a row's output equals
        :meth:`run` of its route (zero beyond its width); in gradient, each mask entry
        carries the effect of switching its dims on."""
        b, length, _ = x.shape
        heads = gates["heads"][:, None, :]
        q, k, v = (
            (F.linear(x, lin.weight, lin.bias) * heads)
            .view(b, length, self.n_heads, -1)
            .transpose(1, 2)
            for lin in (self.query, self.key, self.value)
        )
        q = q * gates["scale"][:, None, None, None]  # each row's own scale; SDPA's is 1
        context = self._attend(q, k, v, 1.0).transpose(1, 2).reshape(b, length, -1)
        # Outputs beyond a row's width are junk here; its LayerNorm keeps only its first h dims.
        attended = self.out(context)
        keep = gates["keep"]
        x = masked_layer_norm(
            x + self.dropout(self.scale_attn * attended),
            self.norm_attn.weight,
            self.norm_attn.bias,
            keep,
            self.eps,
        )
        hidden = F.gelu(self.ffn_in(x))
        if gates["inner"] is not None:
            hidden = hidden * gates["inner"][:, None, :]
        fed = self.ffn_out(hidden) * gates["hidden"][:, None, :]
        return masked_layer_norm(
            x + self.dropout(self.scale_ffn * fed),
            self.norm_ffn.weight,
            self.norm_ffn.bias,
            keep,
            self.eps,
        )


class CANet(SequentialRecommender):
    """A router picks one of the supernet's routes per user; inference runs only that route."""

    uses_evaluation_profile = True  # properties/profile/evaluation.yaml
    supports_dense_training = True
    trim_safe = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.check_config(config)
        self.hiddens, self.depths, self.embs = (sorted(set(config[k])) for k in _LIST_KEYS)
        self.routes: list[Route] = list(itertools.product(self.hiddens, self.depths, self.embs))
        self.full_route = (self.hiddens[-1], self.depths[-1], self.embs[-1])
        self.smallest_route = (self.hiddens[0], self.depths[0], self.embs[0])
        self.n_heads = config["n_heads"]
        self.gumbel_tau = float(config["gumbel_tau"])
        self.guide_weight = float(config["guide_weight"])
        self.uniform_weight = float(config["uniform_weight"])
        self.guide_topk = int(config["guide_topk"])
        self.balance_loss = config["balance_loss"]
        self.router_gradient = config["router_gradient"]
        self.ffn_width = config["ffn_width"]
        self.attention_scale = config["attention_scale"]
        self.guide_form = config["guide_form"]
        self.fixed_route = self._fixed(config["fixed_route"])
        self.dense = config["train_mode"] == "dense"
        self.position_alignment = config["position_alignment"] or "start"
        self.list_suffix = config["LIST_SUFFIX"]
        dropout = config["dropout_prob"]
        eps = config["layer_norm_eps"]

        max_e, max_h, max_l = self.embs[-1], self.hiddens[-1], self.depths[-1]
        self.item_embedding = nn.Embedding(self.n_items, max_e, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, max_e)
        self.input_projection = nn.Linear(max_e, max_h)
        self.blocks = nn.ModuleList(
            SupernetBlock(max_h, self.n_heads, 4 * max_h, dropout, eps) for _ in range(max_l)
        )
        self.output_layer = nn.Linear(max_h, self.n_items)

        rw = config["router_hidden_size"]
        self.router_item_embedding = nn.Embedding(self.n_items, rw, padding_idx=0)
        self.router_position_embedding = nn.Embedding(self.max_seq_length, rw)
        self.router_encoder = TransformerEncoder(
            n_layers=config["router_n_layers"],
            n_heads=config["router_n_heads"],
            hidden_size=rw,
            inner_size=config["router_inner_size"],
            hidden_dropout_prob=config["router_dropout_prob"],
            attn_dropout_prob=config["router_dropout_prob"],
            hidden_act="gelu",
            layer_norm_eps=eps,
        )
        self.router_norm = nn.LayerNorm(rw, eps=eps)
        self.router_dropout = nn.Dropout(config["router_dropout_prob"])
        self.router_head = nn.Linear(rw, len(self.routes))

        self.route_index = {r: i for i, r in enumerate(self.routes)}
        self.register_buffer("route_table", torch.tensor(self.routes), persistent=False)
        self.full_flops = self.flops_of(self.full_route)
        length, inner = self.max_seq_length, config["router_inner_size"]
        self.router_cost = (
            (config["router_n_layers"] - 1) * block_flops(length, rw, inner)
            + last_block_flops(length, rw, inner)
            + 2 * rw * len(self.routes)
        )
        self.route_counts: Counter[Route] = Counter()  # routes taken in evaluation
        self._register_route_tables()
        self._weights_cache: dict[tuple, Weights] = {}
        self._cache_stamp: tuple[int, ...] | None = None
        self._bypass_cache = False  # the guide's eval-mode pass inside a training step
        self._stamp_checked = False  # within one forward the parameters do not change
        # Rows scored together at the last step (0: a whole width group at once).
        self.eval_chunk = config["eval_chunk_size"] or None
        self.reset_train_route_stats()
        self.apply(self._init_weights)
        for block in self.blocks:  # ~0 residual scales, not the Linear init
            block.scale_attn.data.fill_(1e-8)
            block.scale_ffn.data.fill_(1e-8)

    def _register_route_tables(self) -> None:
        """Per-route masks (routes x dims) the gated network and the losses read."""
        max_h, max_e = self.hiddens[-1], self.embs[-1]
        full_head = max_h // self.n_heads
        h = torch.tensor([r[0] for r in self.routes])
        depth = torch.tensor([r[1] for r in self.routes])
        e = torch.tensor([r[2] for r in self.routes])
        tables = {
            "gate_emb": torch.arange(max_e)[None] < e[:, None],
            "gate_hidden": torch.arange(max_h)[None] < h[:, None],
            "gate_heads": (torch.arange(max_h) % full_head)[None] < (h // self.n_heads)[:, None],
            "gate_inner": torch.arange(4 * max_h)[None] < 4 * h[:, None],
            "gate_depth": torch.arange(self.depths[-1])[None] < depth[:, None],
        }
        for name, table in tables.items():
            self.register_buffer(name, table.float(), persistent=False)
        # Each route's neighbours (one step in one dimension), valid ones first, padded with
        # the route itself (drawn only in a space of one route, where nothing is compared).
        values = (self.hiddens, self.depths, self.embs)
        table = []
        for route in self.routes:
            near = []
            for dim, options in enumerate(values):
                at = options.index(route[dim])
                for step in (-1, 1):
                    if 0 <= at + step < len(options):
                        moved = list(route)
                        moved[dim] = options[at + step]
                        near.append(self.route_index[tuple(moved)])
            table.append(near + [self.route_index[route]] * (6 - len(near)))
        self.register_buffer("neighbour_table", torch.tensor(table), persistent=False)
        counts = torch.tensor(
            [max(1, sum(1 for x in row if x != i)) for i, row in enumerate(table)]
        )
        self.register_buffer("neighbour_count", counts, persistent=False)
        scales = torch.tensor([self.route_scale(r) for r in self.routes])
        self.register_buffer("route_scales", scales, persistent=False)
        for label, pos, values, sharpness in (
            ("hidden", 0, self.hiddens, 2.0),
            ("depth", 1, self.depths, 1.0),
            ("emb", 2, self.embs, 2.0),
        ):
            member = torch.tensor([[float(r[pos] == v) for v in values] for r in self.routes])
            self.register_buffer(f"member_{label}", member, persistent=False)
            small, large = guide_labels(len(values), sharpness)
            self.register_buffer(f"guide_small_{label}", small, persistent=False)
            self.register_buffer(f"guide_large_{label}", large, persistent=False)

    # --- config ---------------------------------------------------------------------------
    @classmethod
    def check_config(cls, config) -> None:
        """Stop with one line naming the key when the routing space cannot be built."""
        n_heads = config["n_heads"]
        if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads <= 0:
            raise ConfigError(f"n_heads must be a positive integer, not {n_heads!r}")
        for key in _LIST_KEYS:
            values = config[key]
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(f"{key} must be a non-empty list of positive integers")
            for v in values:
                if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                    raise ConfigError(f"{key} must hold positive integers, not {v!r}")
        for h in config["hidden_size_list"]:
            if h % n_heads:
                raise ConfigError(
                    f"hidden_size_list: {h} is not divisible by n_heads = {n_heads}; "
                    "every width is split into n_heads heads"
                )
        rw, rh = config["router_hidden_size"], config["router_n_heads"]
        if not (isinstance(rw, int) and isinstance(rh, int) and rw > 0 and rh > 0 and rw % rh == 0):
            raise ConfigError("router_hidden_size must be a positive multiple of router_n_heads")
        for key, choices in _CHOICES.items():
            if config[key] not in choices:
                raise ConfigError(f"{key} must be one of {', '.join(choices)}, not {config[key]!r}")
        if config["fixed_route"] not in (None, "full", "smallest"):
            raise ConfigError(
                f"fixed_route must be ~, full or smallest, not {config['fixed_route']!r}"
            )
        tau = config["gumbel_tau"]
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or tau <= 0:
            raise ConfigError(f"gumbel_tau must be a positive number, not {tau!r}")
        for key in ("guide_weight", "uniform_weight"):
            w = config[key]
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ConfigError(f"{key} must be a number >= 0, not {w!r}")
        k = config["guide_topk"]
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ConfigError(f"guide_topk must be a positive integer, not {k!r}")
        if config["loss_type"] != "CE":
            raise ConfigError("CANet trains with the full-softmax CE loss: set loss_type: CE")

    def _fixed(self, name: str | None) -> Route | None:
        return {None: None, "full": self.full_route, "smallest": self.smallest_route}[name]

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    # --- routes -----------------------------------------------------------------------------
    def inner_width(self, hidden: int) -> int:
        """The FFN width of a width-``hidden`` route: the supernet's (``ffn_width: full``)
        or 4h."""
        return 4 * self.hiddens[-1] if self.ffn_width == "full" else 4 * hidden

    def route_scale(self, route: Route) -> float:
        """The route's attention score scale."""
        return self.width_scale(route[0])

    def width_scale(self, hidden: int) -> float:
        """The attention score scale at width ``hidden``."""
        width = self.hiddens[-1] if self.attention_scale == "full" else hidden
        return (width // self.n_heads) ** -0.5

    def flops_of(self, route: Route) -> int:
        inner = self.inner_width(route[0])
        return route_flops(route, self.max_seq_length, self.n_items, inner)

    def _piece(self, key: tuple) -> Weights:
        """One shareable part of a route's sliced weights: ``("emb", e)``, ``("in", h, e)``,
        ``("out", h)`` or ``("block", i, h)`` (views of the parameters)."""
        if key[0] == "emb":
            e = key[1]
            return {
                "item": self.item_embedding.weight[:, :e],
                "pos": self.position_embedding.weight[:, :e],
            }
        if key[0] == "in":
            _, hidden, emb = key
            lin = self.input_projection
            return {"w": lin.weight[:hidden, :emb], "b": lin.bias[:hidden]}
        if key[0] == "out":
            return {"w": self.output_layer.weight[:, : key[1]], "b": self.output_layer.bias}
        _, i, hidden = key
        return self.blocks[i].sliced(hidden, self.inner_width(hidden))

    def _weights(self, key: tuple) -> Weights:
        """:meth:`_piece`, from the cache when no gradient can flow (evaluation): contiguous
        copies kept until a parameter changes (in place or by a move) or the mode switches.
        Cached per piece, so the 36 routes share 3 output layers, not 36."""
        if self.training or torch.is_grad_enabled() or self._bypass_cache:
            return self._piece(key)
        if not self._stamp_checked:
            self._check_stamp()
        cached = self._weights_cache.get(key)
        if cached is None:
            cached = {k: v.contiguous() for k, v in self._piece(key).items()}
            self._weights_cache[key] = cached
        return cached

    def _check_stamp(self) -> None:
        """Empty the cache if a parameter changed in place since it was filled."""
        stamp = tuple(p._version for p in self.parameters())
        if stamp != self._cache_stamp:
            self._weights_cache.clear()
            self._cache_stamp = stamp

    def train(self, mode: bool = True) -> CANet:
        self._weights_cache.clear()
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        self._weights_cache.clear()  # .to() swaps the tensors without bumping their version
        return super()._apply(fn, recurse)

    def _positions(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        return position_ids(
            item_seq_len, item_seq.size(1), self.max_seq_length, self.position_alignment
        )

    def _embed(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        positions = self._positions(item_seq, item_seq_len)
        return self.item_embedding(item_seq) + self.position_embedding(positions)

    def route_hidden(
        self,
        item_seq: torch.Tensor,
        item_seq_len: torch.Tensor,
        route: Route,
        last_only: bool = False,
    ) -> torch.Tensor:
        """The route's last block output at every step (B x l x h), or with ``last_only`` at
        each row's last real step (B x h; the last block then runs its query, attention
        output and FFN at that step only)."""
        hidden, layers, emb = route
        e = self._weights(("emb", emb))
        positions = self._positions(item_seq, item_seq_len)
        x = F.embedding(item_seq, e["item"]) + F.embedding(positions, e["pos"])
        w = self._weights(("in", hidden, emb))
        x = F.linear(x, w["w"], w["b"])
        scale = self.route_scale(route)
        for i, block in enumerate(self.blocks[:layers]):
            last = item_seq_len - 1 if last_only and i == layers - 1 else None
            x = block.run(x, self._weights(("block", i, hidden)), scale, last)
        return x.squeeze(1) if last_only else x

    def route_output(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, route: Route
    ) -> torch.Tensor:
        """The route's hidden state at each sequence's last real step (B x h)."""
        return self.route_hidden(item_seq, item_seq_len, route, last_only=True)

    def score_hidden(self, hidden: torch.Tensor, width: int) -> torch.Tensor:
        """Scores of all items from hidden states of a width-``width`` route (... x N)."""
        w = self._weights(("out", width))
        return F.linear(hidden, w["w"], w["b"])

    def route_scores(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, route: Route
    ) -> torch.Tensor:
        """The route's scores of all items at the last real step (B x N)."""
        return self.score_hidden(self.route_output(item_seq, item_seq_len, route), route[0])

    def grouped_scores(
        self,
        item_seq: torch.Tensor,
        item_seq_len: torch.Tensor,
        index: torch.Tensor,
        steps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Each row's scores by its own route ``index``: at each row's last real step (B x N,
        see :meth:`last_step_scores`), or at the ``steps`` (a B x l mask; n_steps x N, rows
        in order, steps in order within a row), each route run once on its rows cut to their
        longest sequence."""
        if not self.training:
            counts = index.bincount(minlength=len(self.routes)).tolist()
            self.route_counts.update({r: n for r, n in zip(self.routes, counts, strict=True) if n})
        if steps is None:
            return self.last_step_scores(item_seq, item_seq_len, index)
        rows_out = torch.full_like(item_seq, -1)
        rows_out[steps] = torch.arange(int(steps.sum()), device=item_seq.device)
        routes = index.unique().tolist()
        scores = None
        for r in routes:
            route = self.routes[r]
            rows = (index == r).nonzero(as_tuple=True)[0] if len(routes) > 1 else slice(None)
            lengths = item_seq_len[rows]
            longest = int(lengths.max())
            picked = steps[rows, :longest]
            hidden = self.route_hidden(item_seq[rows, :longest], lengths, route)[picked]
            group = self.score_hidden(hidden, route[0])
            if len(routes) == 1:
                return group
            if scores is None:
                scores = group.new_empty((int(rows_out.max()) + 1, self.n_items))
            scores[rows_out[rows, :longest][picked]] = group
        return scores

    def last_step_scores(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        """Each row's scores at its last real step by its own route (B x N), batched by
        width: routes of one width share every block and the output layer, so their rows
        run together, in chunks of ``eval_chunk_size`` rows sorted by depth and length, each cut
        to its own longest sequence. Equal to :meth:`route_scores` of each row's route."""
        table = self.route_table[index]  # B x (h, l, e)
        scores = None
        widths = table[:, 0].unique().tolist()
        for hidden in widths:
            rows = (table[:, 0] == hidden).nonzero(as_tuple=True)[0]
            # Deepest first (the rows still going deeper are a leading slice of a chunk), then
            # longest first: a chunk is mostly of one depth (one block call per block) and of
            # similar lengths (padding is what a short row pays for a long one).
            key = table[rows, 1] * (item_seq.size(1) + 1) + item_seq_len[rows]
            rows = rows[torch.argsort(key, descending=True)]
            out = []
            for chunk in rows.split(self.eval_chunk or rows.numel()):
                out.append((chunk, self._width_rows(item_seq, item_seq_len, chunk, hidden, table)))
            chunks = torch.cat([c for c, _ in out])
            # Back to batch order before the output layer: reordering n x h states is cheap,
            # n x N scores are not.
            back = torch.argsort(chunks)
            group = self.score_hidden(torch.cat([h for _, h in out])[back], hidden)
            if len(widths) == 1:
                return group
            if scores is None:
                scores = group.new_empty((item_seq.size(0), self.n_items))
            scores.index_copy_(0, chunks[back], group)
        return scores

    def _width_rows(
        self,
        item_seq: torch.Tensor,
        item_seq_len: torch.Tensor,
        rows: torch.Tensor,
        hidden: int,
        table: torch.Tensor,
    ) -> torch.Tensor:
        """The last-step hidden states (n x h) of ``rows``, all of width ``hidden`` and in
        order of decreasing depth: each block runs on the rows still going deeper, and the
        rows whose route ends there get the last-step-only block."""
        depth, emb = table[rows, 1], table[rows, 2]
        lengths = item_seq_len[rows]
        x = self.route_inputs(item_seq[rows, : int(lengths.max())], lengths, hidden, emb)
        out = x.new_empty((rows.numel(), hidden))
        scale = self.width_scale(hidden)
        going = rows.numel()
        for i, block in enumerate(self.blocks[: int(depth[0])]):
            w = self._weights(("block", i, hidden))
            staying = int((depth[:going] > i + 1).sum())
            if staying < going:  # rows whose route ends with this block
                part = slice(staying, going)
                longest = int(lengths[part].max())
                out[part] = block.run(x[part, :longest], w, scale, lengths[part] - 1).squeeze(1)
            if staying:
                longest = int(lengths[:staying].max())
                x = block.run(x[:staying, :longest], w, scale)
            going = staying
        return out

    def route_inputs(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, hidden: int, emb: torch.Tensor
    ) -> torch.Tensor:
        """Embeddings (each row's first ``emb`` dims) projected to ``hidden`` (B x l x h)."""
        positions = self._positions(item_seq, item_seq_len)
        sizes = emb.unique().tolist()
        x = None
        for e in sizes:
            rows = (emb == e).nonzero(as_tuple=True)[0] if len(sizes) > 1 else slice(None)
            table = self._weights(("emb", e))
            w = self._weights(("in", hidden, e))
            part = F.embedding(item_seq[rows], table["item"]) + F.embedding(
                positions[rows] if positions.size(0) > 1 else positions, table["pos"]
            )
            part = F.linear(part, w["w"], w["b"])
            if len(sizes) == 1:
                return part
            if x is None:
                x = part.new_empty((item_seq.size(0), item_seq.size(1), hidden))
            x[rows] = part
        return x

    # --- the gated network (router_gradient: gate) -----------------------------------------
    def gated_hidden(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, choice: torch.Tensor
    ) -> torch.Tensor:
        """The full supernet at every step with each row's route switched on by its one-hot
        ``choice`` (B x routes; straight-through in training): B x l x H, zero beyond each
        row's width. Equal in value to :meth:`route_hidden` of each row's route."""
        index = choice.argmax(dim=-1)
        gates = {
            "hidden": choice @ self.gate_hidden,
            "heads": choice @ self.gate_heads,
            "inner": choice @ self.gate_inner if self.ffn_width == "route" else None,
            "keep": self.gate_hidden[index],
            "scale": self.route_scales[index],
        }
        x = self._embed(item_seq, item_seq_len) * (choice @ self.gate_emb)[:, None, :]
        x = self.input_projection(x) * gates["hidden"][:, None, :]
        depth = choice @ self.gate_depth
        for i, block in enumerate(self.blocks):
            new = block.gated(x, gates)
            # Blocks every route runs need no depth gate (its value and gradient are 1 and 0).
            x = new if i < self.depths[0] else x + depth[:, i, None, None] * (new - x)
        return x

    def sample_neighbours(self, index: torch.Tensor) -> torch.Tensor:
        """For each route in ``index``, a uniformly drawn neighbour: one step up or down in
        one of its dimensions (hidden, depth or embedding)."""
        count = self.neighbour_count[index]
        pick = (torch.rand(index.shape, device=index.device) * count).long().clamp_max(count - 1)
        return self.neighbour_table[index, pick]

    # --- the router -------------------------------------------------------------------------
    def router_logits(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """One logit per route from the router's state at each row's last real step. Its
        last layer runs the query, attention output and FFN at that step only (the value of
        RecBole's encoder there, dropout included)."""
        positions = self._positions(item_seq, item_seq_len)
        x = self.router_item_embedding(item_seq) + self.router_position_embedding(positions)
        x = self.router_dropout(self.router_norm(x))
        layers = self.router_encoder.layer
        if len(layers) > 1:
            mask = self.get_attention_mask(item_seq)
            for layer in layers[:-1]:
                x = layer(x, mask)
        return self.router_head(self._router_last_layer(layers[-1], x, item_seq_len - 1))

    def _router_last_layer(
        self, layer: nn.Module, x: torch.Tensor, last: torch.Tensor
    ) -> torch.Tensor:
        att, ffn = layer.multi_head_attention, layer.feed_forward
        b, length, _ = x.shape
        heads = att.num_attention_heads
        k, v = (lin(x).view(b, length, heads, -1).transpose(1, 2) for lin in (att.key, att.value))
        x_last = x[torch.arange(b, device=x.device), last]
        q = att.query(x_last).view(b, heads, 1, -1)
        keys = (torch.arange(length, device=x.device) <= last[:, None])[:, None, None, :]
        p = att.attn_dropout.p if self.training else 0.0
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keys, dropout_p=p, scale=1.0 / att.sqrt_attention_head_size
        ).reshape(b, -1)
        h = att.LayerNorm(att.out_dropout(att.dense(context)) + x_last)
        fed = ffn.dropout(ffn.dense_2(ffn.intermediate_act_fn(ffn.dense_1(h))))
        return ffn.LayerNorm(fed + h)

    def reset_train_route_stats(self) -> None:
        """Start counting the routes sampled in training (and the router's mean entropy)."""
        self._train_counts = torch.zeros(len(self.routes), dtype=torch.long)
        self._train_entropy_sum = 0.0
        self._train_rows = 0

    def train_route_stats(self) -> dict[str, object]:
        """The training routes since :meth:`reset_train_route_stats`: their histogram's
        summary and the router's mean per-row entropy (nats)."""
        counts = {
            route_name(r): int(n) for r, n in zip(self.routes, self._train_counts, strict=True) if n
        }
        summary = route_summary(counts)
        summary["router_entropy"] = (
            round(self._train_entropy_sum / self._train_rows, 4) if self._train_rows else None
        )
        summary["counts"] = counts
        return summary

    def _count_training_routes(self, index: torch.Tensor, logits: torch.Tensor) -> None:
        with torch.no_grad():
            self._train_counts += index.bincount(minlength=len(self.routes)).cpu()
            logp = torch.log_softmax(logits, dim=-1)
            self._train_entropy_sum += float(-(logp.exp() * logp).sum())
            self._train_rows += index.numel()

    # --- losses -----------------------------------------------------------------------------
    def guide_loss(
        self,
        item_seq: torch.Tensor,
        item_seq_len: torch.Tensor,
        targets: torch.Tensor,
        logits: torch.Tensor,
    ) -> torch.Tensor:
        """Small routes where the smallest route already has the target in its top k at the
        last step, large ones where it has not (``guide_form``: raw or marginal)."""
        with torch.no_grad():
            was, self._bypass_cache = self.training, True
            self.eval()
            try:
                small_scores = self.route_scores(item_seq, item_seq_len, self.smallest_route)
            finally:
                self.train(was)
                self._bypass_cache = False
            top = small_scores.topk(self.guide_topk, dim=-1).indices
            hit = (top == targets[:, None]).any(dim=-1, keepdim=True)
        return self.guide_from_hits(hit, logits)

    def guide_from_hits(self, hit: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The guide loss for given hits (B x 1 bool) and router logits (B x routes)."""
        loss = logits.new_zeros(())
        probs = torch.softmax(logits, dim=-1)
        for label in ("hidden", "depth", "emb"):
            member = getattr(self, f"member_{label}")
            small = getattr(self, f"guide_small_{label}")
            large = getattr(self, f"guide_large_{label}")
            wanted = torch.where(hit, small, large)
            if self.guide_form == "raw":
                log_q = torch.log_softmax(logits @ member, dim=-1)
            else:
                log_q = (probs @ member).clamp_min(1e-12).log()
            loss = loss - (wanted * log_q).sum(-1).mean()
        return loss

    def balance(self, logits: torch.Tensor) -> torch.Tensor:
        if self.balance_loss == "batch":
            return -torch.softmax(logits, dim=-1).mean(0).clamp_min(1e-12).log().mean()
        return -torch.log_softmax(logits, dim=-1).mean()

    def training_steps(
        self, interaction
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(item_seq, item_seq_len, steps, targets at the scored steps, each scored step's
        row): in dense mode every real step (``steps``: the B x l mask), in prefix mode the
        last real step (``steps`` None)."""
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        pos = interaction[self.POS_ITEM_ID]
        if self.dense:
            targets, steps = dense_targets(
                item_seq, item_seq_len, pos, first_trained_step(interaction)
            )
            row = steps.nonzero(as_tuple=True)[0]
            return item_seq, item_seq_len, steps, targets[steps], row
        row = torch.arange(item_seq.size(0), device=item_seq.device)
        return item_seq, item_seq_len, None, pos, row

    def calculate_loss(self, interaction) -> torch.Tensor | tuple[torch.Tensor, ...]:
        interaction = trim_batch(interaction, self.ITEM_SEQ_LEN, self.list_suffix)
        item_seq, item_seq_len, steps, targets, row = self.training_steps(interaction)
        if self.fixed_route is not None:
            index = item_seq.new_full((item_seq.size(0),), self.route_index[self.fixed_route])
            scores = self.grouped_scores(item_seq, item_seq_len, index, steps)
            return F.cross_entropy(scores, targets)
        logits = self.router_logits(item_seq, item_seq_len)
        if self.router_gradient == "gate":
            choice = F.gumbel_softmax(logits, tau=self.gumbel_tau, hard=True)
            index = choice.argmax(dim=-1)
            hidden = self.gated_hidden(item_seq, item_seq_len, choice)
            if steps is None:
                hidden = self.gather_indexes(hidden, item_seq_len - 1)
            else:
                hidden = hidden[steps]
            scores = self.output_layer(hidden)
        else:
            gumbels = -torch.empty_like(logits).exponential_().log()
            perturbed = (torch.log_softmax(logits, dim=-1) + gumbels) / self.gumbel_tau
            if self.router_gradient == "picked":
                index = perturbed.argmax(dim=-1)
                soft = torch.softmax(perturbed, dim=-1).gather(1, index[:, None]).squeeze(1)
                scale = 1.0 + soft - soft.detach()
                scores = self.grouped_scores(item_seq, item_seq_len, index, steps)
                scores = scores * scale[row, None]
            else:  # pair
                index = perturbed.argmax(dim=-1)
                other = self.sample_neighbours(index)
                pair = torch.stack([index, other], dim=1)
                w = torch.softmax(perturbed.gather(1, pair), dim=-1)
                w = w - w.detach()
                scores = self.grouped_scores(item_seq, item_seq_len, index, steps)
                with torch.no_grad():  # b's weights would get 0 x gradient anyway
                    alternative = self.grouped_scores(item_seq, item_seq_len, other, steps)
                scores = scores * (1.0 + w[row, 0:1]) + alternative * w[row, 1:2]
        self._count_training_routes(index, logits)
        rec = F.cross_entropy(scores, targets)
        last_target = interaction[self.POS_ITEM_ID]
        guide = self.guide_loss(item_seq, item_seq_len, last_target, logits)
        return rec, self.guide_weight * guide, self.uniform_weight * self.balance(logits)

    # --- inference and accounting -----------------------------------------------------------
    def forward(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, route: Route | None = None
    ) -> torch.Tensor:
        """Scores of all items at the last real step (B x N): each user on its routed
        sub-model (argmax of the router), on ``fixed_route``, or on ``route`` if given."""
        longest = int(item_seq_len.max())
        item_seq = item_seq[:, :longest]
        route = route or self.fixed_route
        if not (self.training or torch.is_grad_enabled()):
            self._check_stamp()
            self._stamp_checked = True
        try:
            if route is not None:
                index = item_seq.new_full((item_seq.size(0),), self.route_index[route])
            else:
                index = self.router_logits(item_seq, item_seq_len).argmax(dim=-1)
            return self.grouped_scores(item_seq, item_seq_len, index)
        finally:
            self._stamp_checked = False

    def full_sort_predict(self, interaction) -> torch.Tensor:
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])

    def predict(self, interaction) -> torch.Tensor:
        scores = self.full_sort_predict(interaction)
        return scores.gather(1, interaction[self.ITEM_ID][:, None]).squeeze(1)

    def flops_ratio(self, counts: Counter | None = None) -> float | None:
        """Average FLOPs per user of ``counts`` (default: routes taken since the last reset),
        router included, relative to the full supernet."""
        counts = self.route_counts if counts is None else counts
        users = sum(counts.values())
        if not users:
            return None
        router = 0 if self.fixed_route is not None else self.router_cost
        total = sum(n * (self.flops_of(r) + router) for r, n in counts.items())
        return total / users / self.full_flops

    def extra_repr(self) -> str:
        return (
            f"routes={len(self.routes)}, full={self.full_route}, fixed_route={self.fixed_route}, "
            f"router_gradient={self.router_gradient}, ffn_width={self.ffn_width}"
        )
