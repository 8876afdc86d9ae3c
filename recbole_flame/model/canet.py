"""CANet: one sub-model per user, sliced out of one supernet and chosen by a router.

Reference:
    Zhongyu Liu et al. "One Person, One Model -- Learning Compound Router for Sequential
    Recommendation." ICDM 2022. Authors' code: github.com/icantnamemyself/CANet.

Supernet. A SASRec-style causal transformer at the largest size (embedding E, hidden H, depth
D, ``n_heads`` heads, FFN 4H, post-LayerNorm, residual branches scaled by a learnable scalar
that starts near 0). A route (h, l, e) uses the first e embedding dims, an input projection
``W_in[:h, :e]``, the first l blocks and an output layer ``W_out[:, :h]`` over all items. In a
block every Linear keeps its first rows/columns and every LayerNorm its first h entries, except
attention, which is sliced **per head**: head j of width h / n_heads uses the first h / n_heads
dims of head j of the full projection (rows ``j*H/n + [0, h/n)`` of W_q, W_k, W_v and the same
columns of W_o). The same function slices for training, for the guide model and for
inference, so a route's weights are one thing (the authors' code slices heads one way when
training and another when testing).

Output layer. As in the authors' code and METHODS ("output layer h x N"), items are scored by
a Linear over all items whose input is sliced to the route's width, ``W_out[:, :h]`` plus the
full per-item bias, so the embedding size e never meets the output and e != h needs no extra
projection. (Tying it to the item embedding would need an h -> e projection per route and
would couple the narrowest embedding prefix to every route's scores.)

Router. Its own 32-d item and position embeddings, one transformer block, a Linear to one logit
per route at the last real step. Training picks a route per user with straight-through
Gumbel-softmax (hard one-hot forward, soft gradient); the route's logits are multiplied by the
(forward value 1) one-hot entry so the router learns from the recommendation loss. Inference
takes the argmax, no noise, and runs each route's sliced sub-model on its users only.

Losses: ``CE + guide_weight * L_guide + uniform_weight * L_balance``. L_guide: the smallest
route (no gradient) either has the target in its top ``guide_topk`` or not; a hit pulls the
router's marginal over each dimension (emb, hidden, depth) toward small values, a miss toward
large ones (soft labels ``softmax(m * log(2^i / 2^n))``, m = 2 for widths, 1 for depth).
``balance_loss: uniform`` is the authors' cross-entropy of each user's route distribution
against uniform; ``batch`` the cross-entropy of the batch-mean distribution against uniform,
which balances the load without pushing each user's choice toward indifference.

FLOPs (per sequence, multiply-add = 2): embedding L e (the position add; lookups are free);
input projection 2 L e h; per block
``24 L h^2 + 4 L^2 h`` (Q, K, V, O: 8 L h^2; scores and weighted sum: 4 L^2 h; FFN: 16 L h^2);
output layer at the last step 2 h N. The router costs the same formula at width 32 (FFN 128),
one block, with a 2 * 32 * routes output layer, and is added to every routed user's count.
"""

from __future__ import annotations

import itertools
from collections import Counter

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from torch import nn

from recbole_flame.model.layers.sequence import trim_batch
from recbole_flame.utils.errors import ConfigError

Route = tuple[int, int, int]  # (hidden, layers, embedding)

_LIST_KEYS = ("hidden_size_list", "n_layers_list", "embedding_size_list")


def block_flops(length: int, width: int, inner: int) -> int:
    """One post-LN transformer block over ``length`` steps: projections, attention, FFN."""
    return 8 * length * width * width + 4 * length * length * width + 4 * length * width * inner


def route_flops(route: Route, length: int, n_items: int) -> int:
    """Analytic FLOPs of one route for one sequence of ``length`` steps, scoring all items."""
    hidden, layers, emb = route
    # The lookups are free; adding the position embedding is one add per step and dim.
    return (
        length * emb
        + 2 * length * emb * hidden
        + layers * block_flops(length, hidden, 4 * hidden)
        + 2 * hidden * n_items
    )


def guide_labels(n: int, sharpness: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels favouring small values, labels favouring large values) over ``n`` options."""
    weights = torch.tensor([2.0**i / 2.0**n for i in range(n)], dtype=torch.float64)
    large = torch.softmax(sharpness * torch.log(weights), dim=0).float()
    return large.flip(0), large


class SupernetBlock(nn.Module):
    """A post-LN transformer block at full width whose every call takes a width to slice to."""

    def __init__(self, width: int, n_heads: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.width, self.n_heads, self.eps = width, n_heads, eps
        self.query, self.key, self.value, self.out = (nn.Linear(width, width) for _ in range(4))
        self.ffn_in = nn.Linear(width, 4 * width)
        self.ffn_out = nn.Linear(4 * width, width)
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

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, width = x.shape
        rows = self.head_rows(width, x.device)
        heads = [
            F.linear(x, lin.weight[rows, :width], lin.bias[rows])
            .view(b, length, self.n_heads, -1)
            .transpose(1, 2)
            for lin in (self.query, self.key, self.value)
        ]
        q, k, v = heads
        scores = q @ k.transpose(-1, -2) / (width // self.n_heads) ** 0.5 + mask
        context = self.dropout(torch.softmax(scores, dim=-1)) @ v
        context = context.transpose(1, 2).reshape(b, length, width)
        attended = F.linear(context, self.out.weight[:width][:, rows], self.out.bias[:width])
        x = self._norm(self.norm_attn, x + self.dropout(self.scale_attn * attended))
        inner = 4 * width
        hidden = F.gelu(F.linear(x, self.ffn_in.weight[:inner, :width], self.ffn_in.bias[:inner]))
        fed = F.linear(hidden, self.ffn_out.weight[:width, :inner], self.ffn_out.bias[:width])
        return self._norm(self.norm_ffn, x + self.dropout(self.scale_ffn * fed))

    def _norm(self, norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        w = x.size(-1)
        return F.layer_norm(x, (w,), norm.weight[:w], norm.bias[:w], self.eps)


class CANet(SequentialRecommender):
    """A router picks one of the supernet's routes per user; inference runs only that route."""

    supports_dense_training = False
    trim_safe = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.check_config(config)
        self.routes: list[Route] = list(
            itertools.product(*(sorted(set(config[k])) for k in _LIST_KEYS))
        )
        self.hiddens, self.depths, self.embs = (sorted(set(config[k])) for k in _LIST_KEYS)
        self.full_route = (self.hiddens[-1], self.depths[-1], self.embs[-1])
        self.smallest_route = (self.hiddens[0], self.depths[0], self.embs[0])
        self.n_heads = config["n_heads"]
        self.gumbel_tau = float(config["gumbel_tau"])
        self.guide_weight = float(config["guide_weight"])
        self.uniform_weight = float(config["uniform_weight"])
        self.guide_topk = int(config["guide_topk"])
        self.balance_loss = config["balance_loss"]
        self.fixed_route = self._fixed(config["fixed_route"])
        self.list_suffix = config["LIST_SUFFIX"]
        dropout = config["dropout_prob"]
        eps = config["layer_norm_eps"]

        max_e, max_h, max_l = self.embs[-1], self.hiddens[-1], self.depths[-1]
        self.item_embedding = nn.Embedding(self.n_items, max_e, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, max_e)
        self.input_projection = nn.Linear(max_e, max_h)
        self.blocks = nn.ModuleList(
            SupernetBlock(max_h, self.n_heads, dropout, eps) for _ in range(max_l)
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
        self.full_flops = route_flops(self.full_route, self.max_seq_length, self.n_items)
        self.router_cost = config["router_n_layers"] * block_flops(
            self.max_seq_length, rw, config["router_inner_size"]
        ) + 2 * rw * len(self.routes)
        self.route_counts: Counter[Route] = Counter()
        for label in ("emb", "hidden", "depth"):
            n = {"emb": len(self.embs), "hidden": len(self.hiddens), "depth": len(self.depths)}
            small, large = guide_labels(n[label], 1.0 if label == "depth" else 2.0)
            self.register_buffer(f"guide_small_{label}", small, persistent=False)
            self.register_buffer(f"guide_large_{label}", large, persistent=False)
        self.apply(self._init_weights)
        for block in self.blocks:  # ~0 residual scales, not the Linear init
            block.scale_attn.data.fill_(1e-8)
            block.scale_ffn.data.fill_(1e-8)

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
        if config["balance_loss"] not in ("uniform", "batch"):
            raise ConfigError(
                f"balance_loss must be uniform or batch, not {config['balance_loss']!r}"
            )
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

    @classmethod
    def dense_training_error(cls, config) -> str | None:
        return (
            "train_mode: dense is not available: the router reads the whole sequence, so a "
            "step's route would depend on later items; use train_mode: prefix"
        )

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

    # --- the supernet -----------------------------------------------------------------------
    def route_output(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, route: Route
    ) -> torch.Tensor:
        """The route's hidden state at each sequence's last real step (B x h)."""
        hidden, layers, emb = route
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        x = self.item_embedding(item_seq)[..., :emb] + self.position_embedding(positions)[:, :emb]
        w, b = self.input_projection.weight[:hidden, :emb], self.input_projection.bias[:hidden]
        x = F.linear(x, w, b)
        mask = self.get_attention_mask(item_seq)
        for block in self.blocks[:layers]:
            x = block(x, mask)
        return self.gather_indexes(x, item_seq_len - 1)

    def route_scores(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, route: Route
    ) -> torch.Tensor:
        """The route's scores of all items (B x N)."""
        out = self.route_output(item_seq, item_seq_len, route)
        return F.linear(out, self.output_layer.weight[:, : route[0]], self.output_layer.bias)

    # --- the router -------------------------------------------------------------------------
    def router_logits(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        x = self.router_item_embedding(item_seq) + self.router_position_embedding(positions)
        x = self.router_dropout(self.router_norm(x))
        x = self.router_encoder(x, self.get_attention_mask(item_seq))[-1]
        return self.router_head(self.gather_indexes(x, item_seq_len - 1))

    def choose_routes(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(route index per user, the factor to scale its scores by: 1 in value; in training
        the straight-through Gumbel-softmax entry, which carries the router's gradient)."""
        if not self.training:
            return logits.argmax(dim=-1), logits.new_ones(logits.size(0))
        soft = F.gumbel_softmax(logits, tau=self.gumbel_tau, hard=False)
        index = soft.argmax(dim=-1)
        picked = soft.gather(1, index[:, None]).squeeze(1)
        return index, 1.0 + picked - picked.detach()

    def grouped_scores(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        """Each user's scores from its own route, running each route once on its users."""
        scores = item_seq.new_empty((item_seq.size(0), self.n_items), dtype=torch.float)
        for r in index.unique().tolist():
            users = (index == r).nonzero(as_tuple=True)[0]
            route = self.routes[r]
            scores[users] = self.route_scores(item_seq[users], item_seq_len[users], route)
            if not self.training:
                self.route_counts[route] += users.numel()
        return scores

    def _routed(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor):
        """(scores B x N, router logits or None, scale B)."""
        if self.fixed_route is not None:
            index = item_seq.new_full((item_seq.size(0),), self.route_index[self.fixed_route])
            return self.grouped_scores(item_seq, item_seq_len, index), None, None
        logits = self.router_logits(item_seq, item_seq_len)
        index, scale = self.choose_routes(logits)
        return self.grouped_scores(item_seq, item_seq_len, index), logits, scale

    # --- losses -----------------------------------------------------------------------------
    def marginals(self, probs: torch.Tensor) -> dict[str, torch.Tensor]:
        """The router's probability of each value of each dimension (B x options)."""
        out = {}
        for label, values, pos in (
            ("hidden", self.hiddens, 0),
            ("depth", self.depths, 1),
            ("emb", self.embs, 2),
        ):
            member = torch.tensor(
                [[float(r[pos] == v) for v in values] for r in self.routes], device=probs.device
            )
            out[label] = probs @ member
        return out

    def guide_loss(self, item_seq, item_seq_len, targets, probs) -> torch.Tensor:
        with torch.no_grad():
            was = self.training
            self.eval()
            small_scores = self.route_scores(item_seq, item_seq_len, self.smallest_route)
            self.train(was)
            top = small_scores.topk(self.guide_topk, dim=-1).indices
            hit = (top == targets[:, None]).any(dim=-1, keepdim=True)
        loss = probs.new_zeros(())
        for label, marginal in self.marginals(probs).items():
            small, large = (
                getattr(self, f"guide_small_{label}"),
                getattr(self, f"guide_large_{label}"),
            )
            wanted = torch.where(hit, small, large)
            loss = loss - (wanted * marginal.clamp_min(1e-12).log()).sum(-1).mean()
        return loss

    def balance(self, probs: torch.Tensor) -> torch.Tensor:
        if self.balance_loss == "batch":
            return -probs.mean(0).clamp_min(1e-12).log().mean()
        return -probs.clamp_min(1e-12).log().mean()

    def calculate_loss(self, interaction) -> tuple[torch.Tensor, ...]:
        interaction = trim_batch(interaction, self.ITEM_SEQ_LEN, self.list_suffix)
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        targets = interaction[self.POS_ITEM_ID]
        scores, logits, scale = self._routed(item_seq, item_seq_len)
        if logits is None:
            return F.cross_entropy(scores, targets)
        rec = F.cross_entropy(scores * scale[:, None], targets)
        probs = torch.softmax(logits, dim=-1)
        guide = self.guide_loss(item_seq, item_seq_len, targets, probs)
        return rec, self.guide_weight * guide, self.uniform_weight * self.balance(probs)

    # --- inference and accounting -----------------------------------------------------------
    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        return self._routed(item_seq, item_seq_len)[0]

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
        total = sum(
            n * (route_flops(r, self.max_seq_length, self.n_items) + router)
            for r, n in counts.items()
        )
        return total / users / self.full_flops

    def extra_repr(self) -> str:
        return f"routes={len(self.routes)}, full={self.full_route}, fixed_route={self.fixed_route}"
