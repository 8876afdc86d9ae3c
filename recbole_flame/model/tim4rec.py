"""TiM4Rec: a time-aware structured state space duality (SSD, Mamba2) sequential recommender.

Reference:
    Hao Fan et al. "TiM4Rec: An Efficient Sequential Recommendation Model Based on Time-Aware
    Structured State Space Duality Model." Neurocomputing 2025 (arXiv 2409.16182).
    Authors' code: github.com/AlwaysFHao/TiM4Rec (GPU only: it needs mamba-ssm's kernels).

Item embedding, dropout, LayerNorm (no positions), then ``n_layers`` of
``h = LN(Dropout(TiSSD(x)) + x)`` (no ``+ x`` when ``n_layers`` is 1, as in the authors' code)
and a Hardswish FFN. TiSSD is a Mamba2 block whose step sizes are modulated by the time gaps of
the sequence: ``dt' = softplus(dt * u + dt_bias)``, with ``u`` computed per layer from a "time
state" (tau, one row of length L per head) that is carried from layer to layer.
``time_aware: False`` drops the time path (``u = 1``): an SSD4Rec-style baseline. The SSD runs
in pure PyTorch (:mod:`recbole_flame.model.layers.ssd`) unless mamba-ssm's kernel can be used.

Padding (``time_padding``). RecBole right-pads every sequence to L = MAX_ITEM_LIST_LENGTH with
item 0 and timestamp 0, and the time path works along the sequence axis: L x L maps and
LayerNorms whose statistics and affine run over positions.

- ``authors`` (default) computes what the authors' code computes on that layout: the gaps
  ``[0, t2-t1, ..., tn-t(n-1), -tn, 0, ...]`` (the first padded gap is minus the last
  timestamp, the others 0) are normalised over all L positions, padding included, and every
  time map and LayerNorm of every layer reads all L positions. On raw unix seconds the one
  large negative gap dominates the statistics, so the normalised gaps at real steps are
  nearly a constant and the spike's position (the sequence length) is what the time path
  mainly carries. The paper's numbers were produced with this. The time path depends on the
  timestamps and the lengths only (not on the items), so it always runs at width L here, from
  the real timestamps with 0 on every padded step whatever the input holds, while the items
  may come trimmed: the SSD scan is causal, so the steps of the time path beyond the items'
  width reach nothing. Trimming a batch (``trim_batch``) is therefore exact in this mode too.
- ``masked`` makes padded steps count for nothing: their gaps and time states are zero, the
  LayerNorms take their statistics over real steps only and the position-indexed parameters
  are used up to the input's width. A prediction then depends only on the real steps and the
  parameters of their positions: more right padding, or a larger L sharing those parameters,
  does not change it.

With ``time_causal: True`` the two coincide at every real step (right padding puts all padded
steps after the real ones, and a causal statistic or map at a real step reads only steps up to
it), so that case runs the masked path, which keeps dense training and trimming cheap.

Other switches of the authors' code. Their FFN LayerNorm always uses eps 1e-12 whatever
``norm_eps`` is (``ffn_norm_eps``). Their three causal convolutions (items, and the two of the
time path) use Hardswish, except on a GPU with causal-conv1d installed and a head count that is
a multiple of 8, where causal-conv1d's fused SiLU runs instead (``conv_activation: silu``); their
released configs all have 4 heads, so Hardswish.

Causality. ``time_causal: False`` (the default) is the authors' time path: dense L x L maps and
whole-sequence statistics (over all L or over the real steps, as above), so a step's time state
also depends on later gaps of the same (observed) history. That leaks nothing in RecBole's
prefix training, where a sample holds only the steps before its target. With ``time_causal: True`` the time path, like the SSD,
only looks back (lower-triangular maps, each step normalised with the statistics of the real
steps up to it), so the output at step t depends on items and timestamps up to t only: what
``train_mode: dense`` needs.
"""

from __future__ import annotations

import math
from logging import getLogger
from typing import ClassVar

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn

from recbole_flame.config.rules import Rule, boolean, integer, number, one_of, probability
from recbole_flame.model.capabilities import ModelCapabilities
from recbole_flame.model.layers.sequence import dense_targets, first_trained_step, trim_batch
from recbole_flame.model.layers.ssd import (
    SSD_BACKENDS,
    CausalConv1d,
    GatedRMSNorm,
    backend_in_use,
    check_backend,
    ssd,
)
from recbole_flame.utils.errors import ConfigError

TIME_PADDINGS = ("authors", "masked")
CONV_ACTIVATIONS = {"hardswish": nn.Hardswish, "silu": nn.SiLU}


def time_field_loaded(config) -> bool:
    """Whether ``config`` loads a time field into the interactions (before any data is read)."""
    field = config["TIME_FIELD"]
    if not field:
        return False
    load_col = config["load_col"]
    if isinstance(load_col, dict) and field not in (load_col.get("inter") or ()):
        return False  # load_col: ~ loads every column the file has
    unload_col = config["unload_col"]
    return not (isinstance(unload_col, dict) and field in (unload_col.get("inter") or ()))


class SequenceLinear(nn.Linear):
    """A Linear map over the sequence axis: ``(..., n) -> (..., n)``, or one value per sequence
    (``per_position=False``, broadcast to every step). Built for ``max_len`` positions and used
    up to the input's width ``n``; ``causal`` lets step i read steps j <= i only."""

    def __init__(self, max_len: int, per_position: bool = True, causal: bool = True) -> None:
        super().__init__(max_len, max_len if per_position else 1)
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.size(-1)
        if self.out_features == 1:
            terms = x * self.weight[0, :n]
            # causal: the value at step i is the map applied to the prefix up to i
            pooled = terms.cumsum(-1) if self.causal else terms.sum(-1, keepdim=True)
            return (pooled + self.bias).expand_as(x)
        weight = self.weight[:n, :n]
        return F.linear(x, weight.tril() if self.causal else weight, self.bias[:n])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, causal={self.causal}"


class SequenceLayerNorm(nn.Module):
    """LayerNorm over the sequence axis with an affine of ``max_len`` entries, its statistics
    taken over the real steps only (over those up to each step, if ``causal``); padded steps
    come out zero. ``x`` (batch, [heads,] n), ``mask`` broadcastable to it, True on real steps."""

    def __init__(self, max_len: int, eps: float, causal: bool = True) -> None:
        super().__init__()
        self.eps, self.causal = eps, causal
        self.weight = nn.Parameter(torch.ones(max_len))
        self.bias = nn.Parameter(torch.zeros(max_len))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n = x.size(-1)
        # float64: prefix statistics come from running sums, E[x^2] - E[x]^2, which would cancel
        # in float32 when the gaps are large and alike (raw seconds).
        real = mask.to(torch.float64)
        xd = x.to(torch.float64) * real
        if self.causal:
            count, s1, s2 = real.cumsum(-1), xd.cumsum(-1), (xd * xd).cumsum(-1)
            count = count.clamp_min(1.0)
            mean = s1 / count
            var = (s2 / count - mean * mean).clamp_min(0.0)
        else:  # two passes, as torch's LayerNorm: exact even for one huge gap among small ones
            count = real.sum(-1, keepdim=True).clamp_min(1.0)
            mean = xd.sum(-1, keepdim=True) / count
            var = (((xd - mean) * real) ** 2).sum(-1, keepdim=True) / count
        normed = ((xd - mean) * torch.rsqrt(var + self.eps)).to(self.weight.dtype)
        return (normed * self.weight[:n] + self.bias[:n]).masked_fill(~mask, 0.0)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}, causal={self.causal}"


class TiSSD(nn.Module):
    """A Mamba2 block (one group of B and C) whose step sizes the time state modulates."""

    def __init__(
        self,
        d_model: int,
        max_len: int,
        d_state: int,
        d_conv: int,
        expand: int,
        head_dim: int,
        chunk_size: int,
        norm_eps: float,
        time_aware: bool,
        time_causal: bool,
        time_dropout: float,
        p2p_residual: bool,
        ssd_backend: str,
        activation: str = "hardswish",
        dt_range: tuple[float, float] = (1e-3, 1e-1),
        dt_floor: float = 1e-4,
        a_range: tuple[float, float] = (1.0, 16.0),
    ) -> None:
        super().__init__()
        self.d_inner = expand * d_model
        self.d_state, self.head_dim = d_state, head_dim
        self.n_heads = self.d_inner // head_dim
        self.chunk_size, self.ssd_backend = chunk_size, ssd_backend
        self.time_aware = time_aware

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * d_state + self.n_heads)
        self.conv = CausalConv1d(self.d_inner + 2 * d_state, d_conv)
        # after the item and both time convolutions, as the authors' self.act (see the module doc)
        self.act = CONV_ACTIVATIONS[activation]()
        # Mamba2's initialisation: A in [1, 16], step sizes log-uniform in dt_range (stored as
        # the inverse softplus of dt), D = 1.
        self.A_log = nn.Parameter(torch.empty(self.n_heads).uniform_(*a_range).log())
        log_lo, log_hi = math.log(dt_range[0]), math.log(dt_range[1])
        dt = torch.exp(torch.rand(self.n_heads) * (log_hi - log_lo) + log_lo).clamp(min=dt_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.D = nn.Parameter(torch.ones(self.n_heads))
        self.norm = GatedRMSNorm(self.d_inner, eps=norm_eps)
        self.out_proj = nn.Linear(self.d_inner, d_model)

        if time_aware:
            self.time_dropout = nn.Dropout(time_dropout)
            # s = Linear_LL(SiLU(Linear_LL(Dropout(tau))))
            self.time_scale_in = SequenceLinear(max_len, causal=time_causal)
            self.time_scale_out = SequenceLinear(max_len, causal=time_causal)
            self.time_conv1 = CausalConv1d(self.n_heads, d_conv)
            self.time_conv2 = CausalConv1d(self.n_heads, d_conv)
            # p2p_residual: one gate per step; else one per sequence (and head)
            self.time_gate = SequenceLinear(max_len, per_position=p2p_residual, causal=time_causal)
            self.time_norm = SequenceLayerNorm(max_len, norm_eps, causal=time_causal)

    def forward(
        self, x: torch.Tensor, tau: torch.Tensor | None, mask: torch.Tensor, next_time: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` (b, l, d), ``tau`` (b, heads, w) or None, ``mask`` (b, w), the steps the time
        path counts, -> output (b, l, d) and the next layer's time state (when ``next_time``,
        else None). The time path may be wider than the items (w >= l)."""
        b, length, _ = x.shape
        z, xbc, dt = self.in_proj(x).split(
            [self.d_inner, self.d_inner + 2 * self.d_state, self.n_heads], dim=-1
        )
        xbc = self.act(self.conv(xbc.transpose(1, 2))).transpose(1, 2)
        xs, B, C = xbc.split([self.d_inner, self.d_state, self.d_state], dim=-1)

        if self.time_aware:
            hidden = F.silu(self.time_scale_in(self.time_dropout(tau)))
            # Padded steps' hidden values would reach real steps through a dense map.
            scale = self.time_scale_out(hidden.masked_fill(~mask.unsqueeze(1), 0.0))
            u = self.act(self.time_conv2(self.act(self.time_conv1(tau * scale))))
            # The scan is causal: time steps beyond the items' width reach no output.
            dt = dt * u[..., :length].transpose(1, 2)
        dt = F.softplus(dt + self.dt_bias)

        y = ssd(
            xs.reshape(b, length, self.n_heads, self.head_dim),
            dt,
            -torch.exp(self.A_log),
            B.unsqueeze(2),
            C.unsqueeze(2),
            self.chunk_size,
            D=self.D,
            backend=self.ssd_backend,
        )
        out = self.out_proj(self.norm(y.reshape(b, length, self.d_inner), z))

        if not (self.time_aware and next_time):
            return out, None
        gate = torch.sigmoid(self.time_gate(self.time_dropout(tau)))
        return out, self.time_norm(gate * tau + (1 - gate) * u, mask.unsqueeze(1))


class FeedForward(nn.Module):
    """``LN(Dropout(W2 Dropout(Hardswish(W1 h))) + h)``."""

    def __init__(self, d_model: int, inner_size: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, inner_size)
        self.fc2 = nn.Linear(inner_size, d_model)
        self.act = nn.Hardswish()
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_model, eps=eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.dropout(self.fc2(self.dropout(self.act(self.fc1(h))))) + h)


class TiSSDLayer(nn.Module):
    """``h = LN(Dropout(TiSSD(x)) + x)``, then the FFN; ``h = LN(Dropout(TiSSD(x)))`` when
    ``residual`` is False (the authors' code drops this residual in a one-layer model). ``eps``
    is the SSD's and this LayerNorm's, ``ffn_eps`` the FFN LayerNorm's."""

    def __init__(
        self,
        d_model: int,
        dropout: float,
        eps: float,
        residual: bool = True,
        ffn_eps: float = 1e-12,
        **ssd_args,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.ssd = TiSSD(d_model, norm_eps=eps, **ssd_args)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_model, eps=eps)
        # the authors' FeedForward keeps its own default eps, 1e-12, whatever norm_eps is
        self.ffn = FeedForward(d_model, 4 * d_model, dropout, ffn_eps)

    def forward(
        self, x: torch.Tensor, tau: torch.Tensor | None, mask: torch.Tensor, next_time: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden, tau = self.ssd(x, tau, mask, next_time)
        hidden = self.dropout(hidden)
        return self.ffn(self.layer_norm(hidden + x if self.residual else hidden)), tau


#: TiM4Rec's keys (TiM4Rec.yaml's), and the common keys it narrows, checked when the config
#: is built; TiM4Rec.check_config relates them.
KEY_RULES: dict[str, Rule] = {
    "n_layers": integer(),  # RecBole allows 0 (graph models); an SSD stack needs a layer
    "time_drop_out": probability(),
    "d_state": integer(),
    "d_conv": integer(),
    "expand": integer(),
    "head_dim": integer(),  # divides expand * hidden_size: check_config
    "chunk_size": integer(),
    "norm_eps": number(),
    "ffn_norm_eps": number(),
    "p2p_residual": boolean(),
    "is_kai_ming_init": boolean(),
    "time_aware": boolean(),
    "time_causal": boolean(),
    "time_padding": one_of(*TIME_PADDINGS),
    "conv_activation": one_of(*CONV_ACTIVATIONS),
    "ssd_backend": one_of(*SSD_BACKENDS),  # whether the kernel imports: check_config
    "loss_type": one_of("CE", why="TiM4Rec trains with the full-softmax cross-entropy"),
}


class TiM4Rec(ModelCapabilities, SequentialRecommender):
    r"""Time-aware SSD over the item sequence; the last real step's output scores every item.

    ``time_aware`` reads ``<TIME_FIELD><LIST_SUFFIX>`` (RecBole's ``timestamp_list``), which
    RecBole builds when the time field is loaded.
    """

    uses_evaluation_profile = True  # properties/profile/evaluation.yaml

    supports_dense_training = True
    # Exact with either time_padding: the full-width time path rebuilds RecBole's padding to L.
    trim_safe = True
    key_rules: ClassVar[dict[str, Rule]] = KEY_RULES

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.check_config(config)
        self.dense = config["train_mode"] == "dense"
        self.list_suffix = config["LIST_SUFFIX"]
        self.hidden_size = config["hidden_size"]
        self.n_layers = config["n_layers"]
        self.time_aware = bool(config["time_aware"])
        self.kaiming_init = bool(config["is_kai_ming_init"])
        self.TIME_SEQ = config["TIME_FIELD"] + config["LIST_SUFFIX"] if self.time_aware else None
        fields = getattr(dataset, "field2type", None)
        if self.time_aware and fields is not None and self.TIME_SEQ not in fields:
            raise ConfigError(
                f"TiM4Rec needs timestamps but the dataset has no '{config['TIME_FIELD']}' "
                "column; set TIME_FIELD to its time column and list it in load_col's inter "
                "list, or set time_aware: False"
            )
        eps = float(config["norm_eps"])
        dropout = config["dropout_prob"]

        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.emb_layer_norm = nn.LayerNorm(self.hidden_size, eps=eps)
        time_causal = bool(config["time_causal"])
        # The authors' statistics over all L positions; causal, they equal the masked ones at
        # every real step (see the module doc), and the masked path can run trimmed.
        self.full_width_time = (
            self.time_aware and config["time_padding"] == "authors" and not time_causal
        )
        if self.time_aware:
            self.time_layer_norm = SequenceLayerNorm(self.max_seq_length, eps, causal=time_causal)
        self.layers = nn.ModuleList(
            TiSSDLayer(
                self.hidden_size,
                dropout,
                eps,
                residual=self.n_layers > 1,  # as the authors' TiSSDLayer
                ffn_eps=float(config["ffn_norm_eps"]),
                max_len=self.max_seq_length,
                d_state=config["d_state"],
                d_conv=config["d_conv"],
                expand=config["expand"],
                head_dim=config["head_dim"],
                chunk_size=config["chunk_size"],
                time_aware=self.time_aware,
                time_causal=time_causal,
                time_dropout=config["time_drop_out"],
                p2p_residual=bool(config["p2p_residual"]),
                ssd_backend=config["ssd_backend"],
                activation=config["conv_activation"],
            )
            for _ in range(self.n_layers)
        )
        self.n_heads = self.layers[0].ssd.n_heads
        self.loss_fct = nn.CrossEntropyLoss()
        self.apply(self._init_weights)
        cuda = str(config["device"]).startswith("cuda")
        getLogger().info(f"TiM4Rec SSD: {backend_in_use(config['ssd_backend'], cuda)}")

    @classmethod
    def check_config(cls, config) -> None:
        """Stop on settings TiM4Rec cannot use together (or on this machine), before any data
        is loaded; each key on its own is checked by :data:`key_rules` when the config is built."""
        d_inner = config["expand"] * config["hidden_size"]
        if d_inner % config["head_dim"]:
            raise ConfigError(
                f"expand * hidden_size = {d_inner} is not divisible by head_dim = "
                f"{config['head_dim']}; pick a head_dim that divides it"
            )
        check_backend(config["ssd_backend"], cuda=str(config["device"]).startswith("cuda"))
        if config["time_aware"] and not time_field_loaded(config):
            raise ConfigError(
                "TiM4Rec needs timestamps: set TIME_FIELD (e.g. timestamp) and add it to "
                "load_col's inter list (e.g. load_col: {inter: [user_id, item_id, timestamp]}), "
                "or set time_aware: False"
            )

    @classmethod
    def dense_training_error(cls, config) -> str | None:
        """Why ``config`` cannot train densely (one line), or None."""
        if config["time_aware"] and not config["time_causal"]:
            return (
                "train_mode: dense needs time_causal: True: the authors' time path lets a step "
                "see later time gaps, which dense training would leak; set time_causal: True "
                "or train_mode: prefix"
            )
        return None

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Conv1d) and self.kaiming_init:
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    def time_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The steps the time path counts, from the real steps ``mask`` (b, l): all L positions
        under ``time_padding: authors`` (unless causal), else the real steps."""
        if self.full_width_time:
            return mask.new_ones(mask.size(0), self.max_seq_length)
        return mask

    def time_state(self, timestamps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The first layer's time state (b, heads, w), w as :meth:`time_mask`: the gaps
        ``[0, t2-t1, ...]`` normalised over the sequence axis. Full width: RecBole's layout,
        timestamp 0 on padded steps, so the first padded gap is minus the last timestamp.
        Masked: padded gaps are 0 and left out. Heads start alike; their own convolutions make
        them differ."""
        t = timestamps.to(torch.float64)
        time_mask = self.time_mask(mask)
        if self.full_width_time:
            # Whatever the input holds on padded steps, and however far it was trimmed.
            t = F.pad(t.masked_fill(~mask, 0.0), (0, time_mask.size(1) - t.size(1)))
        gaps = F.pad(t[:, 1:] - t[:, :-1], (1, 0)).masked_fill(~time_mask, 0.0)
        tau = self.time_layer_norm(self.dropout(gaps), time_mask)  # dropout here as the authors
        return tau.unsqueeze(1).expand(-1, self.n_heads, -1)

    def forward(
        self,
        item_seq: torch.Tensor,
        item_seq_len: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        all_steps: bool = False,
    ) -> torch.Tensor:
        """The output at the last real step (b, d), or at every step (b, l, d)."""
        length = item_seq.size(1)
        if length > self.max_seq_length:
            raise ValueError(f"sequences of {length} steps exceed L = {self.max_seq_length}")
        mask = torch.arange(length, device=item_seq.device) < item_seq_len.unsqueeze(1)
        x = self.emb_layer_norm(self.dropout(self.item_embedding(item_seq)))
        tau = self.time_state(timestamps, mask) if self.time_aware else None
        time_mask = self.time_mask(mask)
        for i, layer in enumerate(self.layers):
            x, tau = layer(x, tau, time_mask, next_time=i + 1 < self.n_layers)
        return x if all_steps else self.gather_indexes(x, item_seq_len - 1)

    def _encode(self, interaction, all_steps: bool = False) -> torch.Tensor:
        timestamps = interaction[self.TIME_SEQ] if self.time_aware else None
        return self.forward(
            interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], timestamps, all_steps
        )

    def calculate_loss(self, interaction) -> torch.Tensor:
        interaction = trim_batch(interaction, self.ITEM_SEQ_LEN, self.list_suffix)
        if self.dense:  # every real step predicts its next item (exact with time_causal)
            targets, real = dense_targets(
                interaction[self.ITEM_SEQ],
                interaction[self.ITEM_SEQ_LEN],
                interaction[self.POS_ITEM_ID],
                first_trained_step(interaction),
            )
            output = self._encode(interaction, all_steps=True)[real]
            return self.loss_fct(output @ self.item_embedding.weight.T, targets[real])
        logits = self._encode(interaction) @ self.item_embedding.weight.T
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])

    def predict(self, interaction) -> torch.Tensor:
        item_emb = self.item_embedding(interaction[self.ITEM_ID])
        return (self._encode(interaction) * item_emb).sum(dim=-1)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        return self._encode(interaction) @ self.item_embedding.weight.T
