"""The sliced supernet: its weights, the slices a route uses, their cache, and the gated
network that runs every route at once behind masks (``router_gradient: gate``).

A route (h, l, e) uses the first e embedding dims, ``W_in[:h, :e]``, the first l blocks sliced
to width h (attention per head) and ``W_out[:, :h]``; the design and its reasons:
docs/models/canet.md, "The supernet" and "How the routing is trained".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from recbole_flame.model.canet.block import SupernetBlock, Weights
from recbole_flame.model.canet.routes import Route
from recbole_flame.model.layers.sequence import position_ids


class SupernetMixin:
    """CANet's supernet at the largest route, the views a route slices out of it (cached in
    evaluation) and the masks of the gated network."""

    hiddens: list[int]
    depths: list[int]
    embs: list[int]
    routes: list[Route]
    n_heads: int
    ffn_width: str
    attention_scale: str
    position_alignment: str

    def _build_supernet(self, dropout: float, eps: float) -> None:
        """The full-size weights: embeddings, input projection, blocks, output layer."""
        max_e, max_h, max_l = self.embs[-1], self.hiddens[-1], self.depths[-1]
        self.item_embedding = nn.Embedding(self.n_items, max_e, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, max_e)
        self.input_projection = nn.Linear(max_e, max_h)
        self.blocks = nn.ModuleList(
            SupernetBlock(max_h, self.n_heads, 4 * max_h, dropout, eps) for _ in range(max_l)
        )
        self.output_layer = nn.Linear(max_h, self.n_items)

    def _register_gate_tables(self) -> None:
        """Per-route masks (routes x dims) the gated network reads, and each route's
        attention scale."""
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
        scales = torch.tensor([self.route_scale(r) for r in self.routes])
        self.register_buffer("route_scales", scales, persistent=False)

    # --- widths and scales -------------------------------------------------------------------
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

    # --- a route's weights and their cache ----------------------------------------------------
    def _init_weight_cache(self) -> None:
        self._weights_cache: dict[tuple, Weights] = {}
        self._cache_stamp: tuple[int, ...] | None = None
        self._bypass_cache = False  # the guide's eval-mode pass inside a training step
        self._stamp_checked = False  # within one forward the parameters do not change

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
        Cached per piece, so routes of one width share one output layer's copy."""
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

    @contextmanager
    def _uncached_eval(self) -> Iterator[None]:
        """Eval mode without the cache (the weights change between training steps), then
        back to the mode it was in."""
        was, self._bypass_cache = self.training, True
        self.eval()
        try:
            yield
        finally:
            self.train(was)
            self._bypass_cache = False

    def train(self, mode: bool = True) -> SupernetMixin:
        self._weights_cache.clear()
        return super().train(mode)

    def _apply(
        self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
    ) -> SupernetMixin:
        self._weights_cache.clear()  # .to() swaps the tensors without bumping their version
        return super()._apply(fn, recurse)

    # --- inputs ------------------------------------------------------------------------------
    def _positions(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        return position_ids(
            item_seq_len, item_seq.size(1), self.max_seq_length, self.position_alignment
        )

    def _embed(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        positions = self._positions(item_seq, item_seq_len)
        return self.item_embedding(item_seq) + self.position_embedding(positions)

    # --- the gated network (router_gradient: gate) -------------------------------------------
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
