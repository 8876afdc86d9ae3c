"""The router (one logit per route from a small transformer), its Gumbel samples, the
neighbours ``router_gradient: pair`` compares against, and its losses: the guide and the
balance term. What each loss pulls toward and why: docs/models/canet.md, "Losses".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from recbole.model.layers import TransformerEncoder
from torch import nn

from recbole_flame.model.canet.routes import Route, route_name, route_summary
from recbole_flame.utils import distributed
from recbole_flame.utils.amp import full_precision

if TYPE_CHECKING:
    from recbole.config import Config


def guide_labels(n: int, sharpness: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels favouring small values, labels favouring large values) over ``n`` options."""
    weights = torch.tensor([2.0**i / 2.0**n for i in range(n)], dtype=torch.float64)
    large = torch.softmax(sharpness * torch.log(weights), dim=0).float()
    return large.flip(0), large


def gumbel_one_hot(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """A straight-through Gumbel-softmax sample: one-hot in value, the softmax's gradient."""
    return F.gumbel_softmax(logits, tau=tau, hard=True)


def gumbel_perturbed(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """The route log-probabilities plus Gumbel noise, over ``tau``: their argmax is a sample
    of the router's softmax, their softmax the relaxed sample."""
    gumbels = -torch.empty_like(logits).exponential_().log()
    return (torch.log_softmax(logits, dim=-1) + gumbels) / tau


class RouterMixin:
    """CANet's router, the tables its losses read and the training routes it sampled."""

    routes: list[Route]
    route_index: dict[Route, int]
    hiddens: list[int]
    depths: list[int]
    embs: list[int]
    guide_topk: int
    guide_form: str
    balance_loss: str
    smallest_route: Route

    def _build_router(self, config: Config, eps: float) -> None:
        """The router's own embeddings, transformer and head (``router_*`` keys)."""
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

    def _register_router_tables(self) -> None:
        """Each route's neighbours (``pair``) and the tables of the guide loss: which value of
        each dimension a route has, and the soft labels toward small and large values."""
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

    def sample_neighbours(self, index: torch.Tensor) -> torch.Tensor:
        """For each route in ``index``, a uniformly drawn neighbour: one step up or down in
        one of its dimensions (hidden, depth or embedding)."""
        count = self.neighbour_count[index]
        pick = (torch.rand(index.shape, device=index.device) * count).long().clamp_max(count - 1)
        return self.neighbour_table[index, pick]

    # --- the router's scores -----------------------------------------------------------------
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

    # --- the routes sampled in training ------------------------------------------------------
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

    def merge_rank_route_stats(self) -> None:
        """In a distributed run, every rank's training routes since the reset, so the
        statistics are the global batch's (nothing to do in one process)."""
        if not distributed.is_distributed():
            return
        parts = distributed.gather_objects(
            (self._train_counts.tolist(), self._train_entropy_sum, self._train_rows)
        )
        self._train_counts = torch.tensor(
            [sum(c) for c in zip(*(p[0] for p in parts), strict=True)]
        )
        self._train_entropy_sum = sum(p[1] for p in parts)
        self._train_rows = sum(p[2] for p in parts)

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
            with self._uncached_eval():  # the smallest route as evaluation runs it, uncached
                small_scores = self.route_scores(item_seq, item_seq_len, self.smallest_route)
            top = small_scores.topk(self.guide_topk, dim=-1).indices
            hit = (top == targets[:, None]).any(dim=-1, keepdim=True)
        return self.guide_from_hits(hit, logits)

    def guide_from_hits(self, hit: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The guide loss for given hits (B x 1 bool) and router logits (B x routes). In
        float32 under mixed precision: ``clamp_min(1e-12)`` is 0 in float16 (log gives -inf)."""
        with full_precision(logits) as (logits,):
            loss = logits.new_zeros(())
            probs = torch.softmax(logits, dim=-1)
            for label in ("hidden", "depth", "emb"):
                member = getattr(self, f"member_{label}").float()
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
        """The balance term: each row's route softmax against uniform (``uniform``), or the
        batch-mean distribution against uniform (``batch``); in float32, as the guide."""
        with full_precision(logits) as (logits,):
            if self.balance_loss == "batch":
                return -torch.softmax(logits, dim=-1).mean(0).clamp_min(1e-12).log().mean()
            return -torch.log_softmax(logits, dim=-1).mean()
