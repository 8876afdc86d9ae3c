"""The supernet's transformer block, sliced to one route's width or gated at full width.

How the slicing maps a route onto the full weights: docs/models/canet.md, "The supernet".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Weights = dict[str, torch.Tensor]


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
