"""Scoring by route: the reference path (one route over a batch, :meth:`route_scores`) and the
batched paths training and evaluation run, each row by its own route (:meth:`grouped_scores`).

Evaluation batches rows by width and runs the last block at the last step only; the tests
hold it equal to the reference path per user. Why it is batched this way:
docs/models/canet.md, "Router and inference".
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

from recbole_flame.model.canet.routes import Route


def chunk_sizes(depths: list[int], lengths: list[int], cap: int | None) -> list[int]:
    """Sizes of the consecutive chunks that rows sorted by depth, then length, both
    decreasing, are scored in: a chunk ends where the depth changes, where a row is at most
    half its chunk's longest (so no chunk pads its rows to more than twice their length:
    with row counts alone, each width's first chunk pads short rows to the batch's longest)
    or at ``cap`` rows (``eval_chunk_size``; None: no cap)."""
    sizes: list[int] = []
    start = 0
    for i in range(1, len(lengths)):
        if (
            depths[i] != depths[start]
            or 2 * lengths[i] <= lengths[start]
            or (cap is not None and i - start == cap)
        ):
            sizes.append(i - start)
            start = i
    sizes.append(len(lengths) - start)
    return sizes


class ScoringMixin:
    """CANet's scoring paths over the sliced weights of :class:`SupernetMixin`."""

    routes: list[Route]
    route_counts: Counter[Route]
    eval_chunk: int | None
    #: How rows sorted by depth and length are cut into chunks: an attribute, so that an
    #: instance can be given another rule (benchmarks/micro/canet_inference.py times the
    #: earlier one against it on the same model).
    chunk_rule = staticmethod(chunk_sizes)

    # --- one route: the reference path ------------------------------------------------------
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

    # --- each row by its own route ----------------------------------------------------------
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
        run together, sorted by depth and length, in chunks (:func:`chunk_sizes`) each cut to
        its own longest sequence. Equal to :meth:`route_scores` of each row's route."""
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
            sizes = self.chunk_rule(
                table[rows, 1].tolist(), item_seq_len[rows].tolist(), self.eval_chunk
            )
            for chunk in rows.split(sizes):
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
