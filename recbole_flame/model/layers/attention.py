"""RecBole's multi-head attention computed by ``torch.nn.functional.scaled_dot_product_attention``.

:func:`set_attention_impl` switches the attention of an existing RecBole ``TransformerEncoder``
(or one ``TransformerLayer``) in place. Nothing else changes: the same parameter tensors under the
same state_dict names, the same projections, output dropout and LayerNorm; only the product
``softmax(q k^T / sqrt(d_h) + mask) v`` is taken by SDPA instead of RecBole's matmul-softmax-matmul.

Exactness: RecBole's mask is additive (0 on kept keys, -10000.0 on masked ones) and SDPA adds a
float ``attn_mask`` to the scaled scores before its softmax, so the outputs agree up to float
rounding (1e-5 in float32, tested), at every query row, for any B x 1 x l x l (or broadcastable)
mask, including FLAME's tiled 2L x 2L and stacked masks. That holds too in "blind" rows, whose
keys are all masked: RecBole then softmaxes the raw scores (every key carries the same -10000, so
it is not a uniform softmax), and so does SDPA. Gradients agree to 1e-5 (of their scale) wherever
no blind row's output is used, which is everywhere in SASRec and FLAME: a non-empty right-padded
sequence has a real item at step 0 that every query sees, and a blind row elsewhere is a padding
step whose output is discarded. Through a *used* blind row neither is exact (float32 holds
s - 10000 to 2^-10 only): RecBole's gradients there are ~1e-4 off float64's, SDPA's up to ~3x that.

With attention dropout in training, SDPA drops probabilities with the same ``p`` and the same
1 / (1 - p) rescaling, each independently, so the output has RecBole's distribution (tested),
though not its random draws.

Implementations (config key ``attention_impl``, default ``auto``):

* ``recbole``: RecBole's own code, untouched.
* ``sdpa``: SDPA everywhere, attention dropout included.
* ``auto``: SDPA except in training with attention dropout on, where RecBole's code runs.

Why ``auto`` is the default: on CPU, without dropout, SDPA's fused kernel is faster; with
dropout it runs an unfused path no faster than RecBole's, and RecBole's code keeps RecBole's
random draws, so a seeded run gives RecBole's numbers. The timings
(``benchmarks/micro/attention_impl.py``) are in docs/performance.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.layers import MultiHeadAttention
from torch import nn

from recbole_flame.utils.errors import ConfigError

ATTENTION_IMPLS = ("auto", "sdpa", "recbole")


class SDPAMultiHeadAttention(MultiHeadAttention):
    """RecBole's :class:`MultiHeadAttention` with the attention product taken by SDPA.

    Never constructed directly: :func:`set_attention_impl` re-classes RecBole's modules, so the
    parameters (and the random draws that initialised them) are RecBole's own.
    """

    # Whether SDPA also runs in training with attention dropout on (``sdpa``) or RecBole's
    # code does (``auto``). A plain attribute, so not in the state_dict.
    sdpa_dropout: bool = False

    def forward(self, input_tensor: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        dropout_p = self.attn_dropout.p if self.training else 0.0
        # A bool mask would mean "keep" to SDPA but "+1" to RecBole: only additive float masks
        # have the same meaning to both.
        if (dropout_p > 0.0 and not self.sdpa_dropout) or not attention_mask.is_floating_point():
            return super().forward(input_tensor, attention_mask)
        batch, length, _ = input_tensor.shape
        heads, head_size = self.num_attention_heads, self.attention_head_size

        def split(x: torch.Tensor) -> torch.Tensor:  # B x l x d -> B x h x l x d_h (a view)
            return x.view(batch, length, heads, head_size).transpose(1, 2)

        query = split(self.query(input_tensor))
        key = split(self.key(input_tensor))
        value = split(self.value(input_tensor))
        # SDPA wants the mask in the query's dtype (under autocast RecBole's float32 mask meets
        # half-precision scores); -10000 is exact in float16 and bfloat16 alike.
        mask = attention_mask.to(query.dtype)
        context = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=dropout_p
        )
        context = context.transpose(1, 2).reshape(batch, length, self.all_head_size)
        hidden_states = self.out_dropout(self.dense(context))
        return self.LayerNorm(hidden_states + input_tensor)


def set_attention_impl(module: nn.Module, impl: str) -> nn.Module:
    """Make every RecBole multi-head attention inside ``module`` use ``impl`` (one of
    :data:`ATTENTION_IMPLS`); returns ``module``, changed in place.

    The modules are re-classed rather than rebuilt: building new ``nn.Linear`` layers would
    draw from the random generator and so shift every later draw of a seeded run, and would
    replace the parameter tensors an optimiser may already hold.
    """
    if impl not in ATTENTION_IMPLS:
        raise ConfigError(
            f"attention_impl must be one of {', '.join(ATTENTION_IMPLS)}, not {impl!r}"
        )
    for child in module.modules():
        # Exactly RecBole's class: a subclass may compute something else in its forward.
        if type(child) not in (MultiHeadAttention, SDPAMultiHeadAttention):
            continue
        if impl == "recbole":
            child.__class__ = MultiHeadAttention
            child.__dict__.pop("sdpa_dropout", None)
        else:
            child.__class__ = SDPAMultiHeadAttention
            child.sdpa_dropout = impl == "sdpa"
    return module


def attention_impl(module: nn.Module) -> str:
    """The implementation the attention layers of ``module`` use (``recbole`` if none is
    switched, or if there is no attention layer)."""
    for child in module.modules():
        if isinstance(child, SDPAMultiHeadAttention):
            return "sdpa" if child.sdpa_dropout else "auto"
    return "recbole"
