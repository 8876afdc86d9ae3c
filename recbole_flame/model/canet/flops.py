"""Analytic FLOPs of CANet's inference (multiply-add = 2), per sequence, for ``flops_ratio``.

What is counted and why: docs/models/canet.md, "FLOPs accounting".
"""

from __future__ import annotations

from collections import Counter

from recbole_flame.model.canet.routes import Route


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


def router_flops(length: int, width: int, inner: int, n_layers: int, n_routes: int) -> int:
    """The router's cost per routed sequence: its blocks (the last read at the last step only)
    and the head's one logit per route."""
    return (
        (n_layers - 1) * block_flops(length, width, inner)
        + last_block_flops(length, width, inner)
        + 2 * width * n_routes
    )


class FlopsMixin:
    """CANet's FLOPs accounting: each route's cost and the average over the routes taken."""

    full_flops: int  # the full route's FLOPs
    router_cost: int  # the router's FLOPs per routed user
    route_counts: Counter[Route]  # routes taken in evaluation since the last clear

    def flops_of(self, route: Route) -> int:
        """The route's FLOPs per sequence at the longest length, with its FFN width."""
        inner = self.inner_width(route[0])
        return route_flops(route, self.max_seq_length, self.n_items, inner)

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
