"""FLAME: Frozen and Learnable networks with Aligned Modular Ensemble.

Reference:
    WooJoo Kim et al. "FLAME: Condensing Ensemble Diversity into a Single Network for Efficient
    Sequential Recommendation." SIGIR 2026. Authors' code: github.com/woo-joo/FLAME_SIGIR26.

Two RecBole ``SASRec`` networks: ``frozen`` (trained in stage 1, then frozen) and ``learnable``
(fresh). Each is cut into modules; a module of one network may feed the next module of either,
so M modules give 2^M paths. Besides the recommendation loss of the learnable network alone,
every pair of path outputs is aligned with a weighted InfoNCE whose weight ``lambda_r`` is
annealed per epoch. Inference runs ``learnable`` alone: it *is* a RecBole SASRec.

``path_mixing: tiled`` reproduces the authors' code: the streams entering a module are
concatenated along the sequence axis and share one tiled (not block-diagonal) mask, so each
position also attends to the other streams. ``independent`` runs each path on its own.

``train_mode: dense`` trains on whole user windows: the recommendation loss and every path's
output are taken at each real step (the tiled mask is causal too, so a step still sees only
earlier items of every stream), and InfoNCE draws its negatives from random groups of
``train_batch_size`` steps, as many as a prefix batch offers a sample.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Iterator
from typing import ClassVar

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender

from recbole_flame.config.rules import Rule, boolean, integer, number, one_of, text
from recbole_flame.model.capabilities import ModelCapabilities
from recbole_flame.model.frozen import check_frozen_checkpoint
from recbole_flame.model.layers.packing import PackedBatch, layout_of
from recbole_flame.model.layers.sequence import dense_step_mask, first_trained_step, trim_batch
from recbole_flame.model.sasrec import SASRec
from recbole_flame.utils import distributed
from recbole_flame.utils.amp import full_precision
from recbole_flame.utils.errors import ConfigError

#: FLAME's keys (FLAME.yaml's) and the common key it narrows, checked when the config is built;
#: FLAME.check_settings relates them. Which of them change stage 1 (none but ``stage1_epochs``)
#: is the stage-1 cache's own list (trainer/stage1_cache.py).
KEY_RULES: dict[str, Rule] = {
    "path_mixing": one_of("tiled", "independent"),
    "module_split": one_of("embedding_encoder", "per_block"),
    "n_paths": integer(lo=2, none=True),  # at most 2^modules: FLAME.check_settings
    "tau": number(),
    "cl_normalize": boolean(),
    "detach_pair_weights": boolean(),
    "frozen_dropout": boolean(),
    "lambda_0": number(),
    "lambda_R": number(),
    "anneal_epochs": integer(),
    "frozen_checkpoint": text(none=True),  # the file itself: FLAME.check_config
    "stage1_epochs": integer(none=True),
    "stage1_cache_dir": text(none=True),
    "loss_type": one_of("CE", why="FLAME trains with the full-softmax cross-entropy"),
}


def info_nce(a: torch.Tensor, b: torch.Tensor, tau: float, normalize: bool) -> torch.Tensor:
    """NT-Xent over ``[a; b]``: row i's positive is the same sequence's other view, every other
    row (but itself) is a negative; the mean cross-entropy over the 2B rows."""
    z = torch.cat((a, b), dim=0)
    if normalize:
        z = F.normalize(z, dim=-1)
    logits = z @ z.T / tau
    n = a.size(0)
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, -1e4)
    labels = torch.cat((torch.arange(n, 2 * n), torch.arange(0, n))).to(z.device)
    return F.cross_entropy(logits, labels)


class GramBlockLogSumExp(torch.autograd.Function):
    """``out[g, p, i, q] = log sum_j exp(<z_pi, z_qj> / tau)`` for ``zg`` (G x Pm x d) holding P
    views of m rows, where a row is never its own negative (``j != i`` when ``p == q``).

    The same values and gradients as ``bmm`` + a masked diagonal + ``torch.logsumexp`` over
    blocks, with less memory traffic in backward, the costly part of dense FLAME's alignment
    (G (Pm)^2 scores: 40 x 1024 x 1024 a step on ml-100k). Autograd's ``logsumexp`` backward
    makes two full copies of the scores besides its three elementwise passes; here the softmax
    weights are one ``exp`` of the saved scores scaled in place, and the scores' symmetry gives
    ``dz = (W + W^T) z / tau`` as two products with no transposed copy."""

    @staticmethod
    def forward(ctx, zg: torch.Tensor, n_views: int, tau: float) -> torch.Tensor:
        groups, rows, _ = zg.shape
        m = rows // n_views
        sim = torch.bmm(zg, zg.transpose(1, 2)).div_(tau)  # G x Pm x Pm
        sim.diagonal(dim1=1, dim2=2).fill_(-1e4)  # exp(-1e4) is 0 in float32 and float64
        lse = torch.logsumexp(sim.view(groups, n_views, m, n_views, m), dim=-1)  # G, p, i, q
        ctx.save_for_backward(zg, sim, lse)
        ctx.tau = tau
        return lse

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        zg, sim, lse = ctx.saved_tensors
        groups, n_views, m, _ = lse.shape
        # Softmax weights within each block times the block's upstream gradient; a new buffer,
        # so a retained graph can take backward again. Masked entries get exp(-1e4 - lse) = 0.
        weights = sim.view(groups, n_views, m, n_views, m) - lse.unsqueeze(-1)
        weights = weights.exp_().mul_(grad.unsqueeze(-1)).view_as(sim)
        # Out of place: torch's FLOP counter does not see an in-place baddbmm_.
        grad_z = torch.baddbmm(torch.bmm(weights, zg), weights.transpose(1, 2), zg).div_(ctx.tau)
        return grad_z, None, None


def all_pairs_info_nce(
    views: list[torch.Tensor], tau: float, normalize: bool, groups: list[torch.Tensor]
) -> torch.Tensor:
    """:func:`info_nce` of every unordered pair of ``views`` (in ``itertools.combinations``
    order), each within the groups of row indices and averaged over all rows.

    The same values as calling :func:`info_nce` per pair and group, computed from one Gram
    matrix of all views per group (``(P m)^2`` dot products instead of ``P(P-1)/2 * (2m)^2``)
    and block-wise log-sum-exps, with the groups of equal size batched into one ``bmm``.
    """
    n_views = len(views)
    z = torch.stack(views)  # P x n x d
    if normalize:
        z = F.normalize(z, dim=-1)
    pairs = list(itertools.combinations(range(n_views), 2))
    # Each pair (a, b) twice: rows of a against [a-block, b-block], rows of b against [b, a].
    row = torch.tensor([p for a, b in pairs for p in (a, b)], device=z.device)
    other = torch.tensor([q for a, b in pairs for q in (b, a)], device=z.device)
    total = z.new_zeros(len(pairs))
    by_size: dict[int, list[torch.Tensor]] = {}
    for g in groups:
        by_size.setdefault(len(g), []).append(g)
    # The positive of row i of view p against view q: the same row's other view.
    positive = torch.einsum("pnd,qnd->pqn", z, z) / tau
    for m, same in by_size.items():
        idx = torch.stack(same)  # G x m
        zg = z[:, idx].permute(1, 0, 2, 3).reshape(len(same), n_views * m, -1)  # G x Pm x d
        # Only whole-tensor operations touch the G (Pm)^2 scores; per-pair work below is on
        # G x P x P x m summaries (indexing a large tensor per pair costs a large zero-fill
        # in backward each time).
        block_lse = GramBlockLogSumExp.apply(zg, n_views, tau).permute(0, 1, 3, 2)  # G,p,q,i
        lse = torch.logaddexp(block_lse[:, row, row], block_lse[:, row, other])  # G, 2K, m
        pos = positive[row, other][:, idx].permute(1, 0, 2)  # G, 2K, m
        per_direction = (lse - pos).sum(dim=(0, 2))  # 2K
        total = total + per_direction.view(len(pairs), 2).sum(dim=1)
    return total / (2 * z.size(1))


def mean_inner_products(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Each pair's mean inner product of its two outputs, row by row."""
    return torch.stack([(a * b).sum(-1).mean() for a, b in pairs])


def pair_weights(pairs: list[tuple[torch.Tensor, torch.Tensor]], detach: bool) -> torch.Tensor:
    """``softmax`` over pairs of the negated mean inner product: less aligned pairs weigh more."""
    return weights_from_inner(mean_inner_products(pairs), detach)


def weights_from_inner(inner: torch.Tensor, detach: bool) -> torch.Tensor:
    """:func:`pair_weights` from the pairs' mean inner products."""
    scores = -inner
    if detach:
        scores = scores.detach()
    return torch.softmax(scores, dim=0)


def annealed_lambda(
    epoch: int, lambda_0: float, lambda_r_final: float, anneal_epochs: int
) -> float:
    """``lambda_0 * (lambda_R / lambda_0) ** (epoch / R)``, epoch counted from 1."""
    return lambda_0 * (lambda_r_final / lambda_0) ** (epoch / anneal_epochs)


class FLAME(ModelCapabilities, SequentialRecommender):
    r"""Frozen + learnable SASRec, aligned by guided mutual learning over modular paths.

    Only ``learnable`` is used by :meth:`predict` and :meth:`full_sort_predict`.
    The two-stage schedule is run by :class:`recbole_flame.trainer.FLAMETrainer`.
    """

    uses_evaluation_profile = True  # properties/profile/evaluation.yaml
    supports_dense_training = True
    supports_packing = True
    trim_safe = True
    key_rules: ClassVar[dict[str, Rule]] = KEY_RULES

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.check_settings(config)  # the checkpoint itself is checked when the trainer loads it
        self.path_mixing = config["path_mixing"]
        self.module_split = config["module_split"]
        self.tau = float(config["tau"])
        self.cl_normalize = bool(config["cl_normalize"])
        self.detach_pair_weights = bool(config["detach_pair_weights"])
        self.frozen_dropout = bool(config["frozen_dropout"])
        self.lambda_0 = float(config["lambda_0"])
        self.lambda_R = float(config["lambda_R"])
        self.anneal_epochs = int(config["anneal_epochs"])
        self.n_paths = config["n_paths"]
        self.dense = config["train_mode"] == "dense"
        # Prefix training packs several samples a row (layers/packing.py): the same loss. The
        # tiled mask is then tiled per row: a position sees the earlier positions of its own
        # sample in every stream, nothing of another sample.
        self.packing = bool(config["sequence_packing"]) and not self.dense
        self.cl_group_size = int(config["train_batch_size"])
        self.list_suffix = config["LIST_SUFFIX"]

        # The learnable network is built first, so it draws the same initial weights as a plain
        # SASRec under the same seed; the frozen one is overwritten by the stage-1 checkpoint.
        self.learnable = SASRec(config, dataset)
        self.frozen = SASRec(config, dataset)
        self.frozen.requires_grad_(False)
        self._scorer = "learnable"  # inference runs the learnable network alone

        n_layers = config["n_layers"]
        if self.module_split == "embedding_encoder":
            self.blocks_per_module = [list(range(n_layers))]
        else:
            self.blocks_per_module = [[i] for i in range(n_layers)]
        self.n_modules = 1 + len(self.blocks_per_module)
        self.lambda_r = annealed_lambda(1, self.lambda_0, self.lambda_R, self.anneal_epochs)
        # Running sums of the alignment's parts over training steps (detached), read and reset
        # once per validation by the trainer: why stage 2 learns as it does (pair weights,
        # each pair's InfoNCE, the path outputs' norms, which raw dot products depend on).
        self._align_sums: dict[tuple[str, ...], list] = {}

    @classmethod
    def check_config(cls, config) -> None:
        """Stop on settings or a ``frozen_checkpoint`` FLAME cannot use, before data loads."""
        cls.check_settings(config)
        if config["frozen_checkpoint"]:
            check_frozen_checkpoint(config, config["frozen_checkpoint"])

    @staticmethod
    def check_settings(config) -> None:
        """Stop on FLAME keys that do not fit together (one line naming the key); each key on
        its own is checked by :data:`key_rules` when the config is built."""
        n_modules = 2 if config["module_split"] == "embedding_encoder" else 1 + config["n_layers"]
        n_paths = config["n_paths"]
        if n_paths is not None and not (isinstance(n_paths, int) and 2 <= n_paths <= 2**n_modules):
            raise ConfigError(
                f"n_paths must be an integer from 2 to {2**n_modules} (2^modules), or ~ for all"
            )

    # --- schedule -------------------------------------------------------------------------
    def anneal(self, epoch: int) -> float:
        """Set ``lambda_r`` for ``epoch`` (counted from 1); returns it."""
        self.lambda_r = annealed_lambda(epoch, self.lambda_0, self.lambda_R, self.anneal_epochs)
        return self.lambda_r

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.frozen_dropout:
            self.frozen.eval()
        return self

    def load_frozen(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy stage-1 SASRec weights into ``frozen`` (shapes are checked by the caller)."""
        self.frozen.load_state_dict(state_dict)
        self.frozen.requires_grad_(False)

    # --- modules --------------------------------------------------------------------------
    def _run_blocks(
        self, net: SASRec, blocks: list[int], streams: list[torch.Tensor], mask: torch.Tensor
    ) -> list[torch.Tensor]:
        """Run ``net``'s transformer ``blocks`` over ``streams`` (each B x L x d)."""
        k = len(streams)
        if self.path_mixing == "tiled":  # side by side on the sequence axis, one tiled mask
            axis, stream_mask = 1, mask.repeat(1, 1, k, k)
        else:  # stacked on the batch axis: block-diagonal, each stream on its own
            axis, stream_mask = 0, mask.repeat(k, 1, 1, 1)
        hidden = torch.cat(streams, dim=axis)
        for i in blocks:
            hidden = net.trm_encoder.layer[i](hidden, stream_mask)
        return list(hidden.split(streams[0].size(axis), dim=axis))

    def sample_paths(self) -> list[str]:
        """All path labels, or ``n_paths`` of them drawn at random (a new draw every step)."""
        every = ["".join(p) for p in itertools.product("lf", repeat=self.n_modules)]
        if self.n_paths is None or int(self.n_paths) >= len(every):
            return every
        # the same draw on every rank of a distributed run (rank 0's), as one process draws
        return distributed.broadcast_object(sorted(random.sample(every, int(self.n_paths))))

    def path_outputs(
        self,
        item_seq: torch.Tensor,
        item_seq_len: torch.Tensor,
        paths: list[str] | None = None,
        all_steps: bool = False,
        packed: PackedBatch | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each path's encoder output keyed by its label: one letter per module, first module
        first (``lf`` = ``T_f(E_l(s))``). At the last real position (B x d), or with
        ``all_steps`` at every step (B x l x d). With ``packed`` (the same sequences laid out
        by :func:`~recbole_flame.model.layers.packing.pack_sequences`) the encoders run on the
        packed rows; the outputs are the same."""
        paths = paths or self.sample_paths()
        nets = {"l": self.learnable, "f": self.frozen}
        first = sorted({p[0] for p in paths})
        # Module E of each network: item + position embedding, LayerNorm, dropout.
        if packed is None:
            mask = self.get_attention_mask(item_seq)
            streams = {c: nets[c].embed(item_seq, item_seq_len) for c in first}
        else:
            mask = packed.attention_mask()
            streams = {c: nets[c].embed(packed.items, None, packed.positions) for c in first}
        for depth, blocks in enumerate(self.blocks_per_module, start=1):
            prefixes = sorted({p[: depth + 1] for p in paths})
            nxt: dict[str, torch.Tensor] = {}
            for c in "lf":
                wanted = [p for p in prefixes if p[-1] == c]
                if not wanted:
                    continue
                parents = [p[:-1] for p in wanted]
                outs = self._run_blocks(nets[c], blocks, [streams[q] for q in parents], mask)
                nxt.update(zip(wanted, outs, strict=True))
            streams = nxt
        if all_steps:
            return {p: streams[p] for p in paths}
        if packed is not None:
            return {p: packed.gather(streams[p]) for p in paths}
        return {p: self.gather_indexes(streams[p], item_seq_len - 1) for p in paths}

    # --- RecBole interface ----------------------------------------------------------------
    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        return self.learnable(item_seq, item_seq_len)

    def calculate_loss(self, interaction) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L_rec, lambda_r * sum_p w_p InfoNCE_p)``; RecBole sums and logs both."""
        interaction = trim_batch(interaction, self.ITEM_SEQ_LEN, self.list_suffix)
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        layout = layout_of(interaction)
        packed = self.learnable.pack(item_seq, item_seq_len, layout) if self.packing else None
        if self.dense:
            rec_loss = self.learnable.dense_loss(interaction)
        else:
            if packed is None:
                seq_output = self.learnable(item_seq, item_seq_len)
            else:
                seq_output = packed.gather(self.learnable.encode_packed(packed))
            logits = seq_output @ self.learnable.item_embedding.weight.T
            rec_loss = F.cross_entropy(logits, interaction[self.POS_ITEM_ID])
        if self.lambda_r == 0.0:
            return rec_loss, rec_loss.new_zeros(())
        align = self.alignment_loss(item_seq, item_seq_len, first_trained_step(interaction), packed)
        return rec_loss, self.lambda_r * align

    def alignment_loss(
        self,
        item_seq: torch.Tensor,
        item_seq_len: torch.Tensor,
        first_step: torch.Tensor | None = None,
        packed: PackedBatch | None = None,
    ) -> torch.Tensor:
        """``sum_p w_p InfoNCE_p`` over the unordered pairs of path outputs (at the last real
        step, or in dense mode at every trained step: the steps the recommendation loss uses);
        ``packed``: the batch's packed layout, if it trains packed."""
        outputs = self.path_outputs(item_seq, item_seq_len, all_steps=self.dense, packed=packed)
        if self.dense:
            trained = dense_step_mask(item_seq_len, item_seq.size(1), first_step)
            outputs = {p: out[trained] for p, out in outputs.items()}
        if self.training:
            # A distributed run aligns over the global batch: every rank's outputs (with their
            # gradients), so the negatives and pair weights are those of one process.
            outputs = {p: distributed.gather_rows(out) for p, out in outputs.items()}
        n = next(iter(outputs.values())).size(0)
        if n > self.cl_group_size:  # random groups, one draw shared by every pair (and rank)
            perm = distributed.broadcast_tensor(torch.randperm(n, device=item_seq.device))
            groups = list(perm.split(self.cl_group_size))
        else:
            groups = [torch.arange(n, device=item_seq.device)]
        # In float32 under mixed precision: the InfoNCE log-sum-exps and the pair weights'
        # softmax lose the alignment's small differences in half precision (and overflow
        # without cl_normalize), and the Gram kernel's backward needs one dtype throughout.
        with full_precision(*outputs.values()) as views:
            outputs = dict(zip(outputs, views, strict=True))
            inner = mean_inner_products(list(itertools.combinations(views, 2)))
            weights = weights_from_inner(inner, self.detach_pair_weights)
            losses = all_pairs_info_nce(views, self.tau, self.cl_normalize, groups)
        if self.training:
            self._record_alignment(outputs, inner, weights, losses)
        return (weights * losses).sum()

    @torch.no_grad()
    def _record_alignment(
        self,
        outputs: dict[str, torch.Tensor],
        inner: torch.Tensor,
        weights: torch.Tensor,
        losses: torch.Tensor,
    ) -> None:
        """Adds this step's parts to a running sum kept as a tensor on the batch's device, so a
        training step adds no device-to-host copy; :meth:`pop_alignment_stats` reads it."""
        norms = torch.stack([out.norm(dim=-1).mean() for out in outputs.values()])
        step = torch.cat((weights, losses, inner, norms)).detach()
        # With n_paths the paths, hence the parts, may change from step to step: one sum per
        # set of paths.
        paths = tuple(outputs)
        if paths not in self._align_sums:
            self._align_sums[paths] = [torch.zeros_like(step), 0]
        self._align_sums[paths][0] += step
        self._align_sums[paths][1] += 1

    def pop_alignment_stats(self) -> dict[str, dict[str, float]]:
        """Means over the training steps since the last call, then reset: ``weight``,
        ``info_nce`` and ``inner`` (mean inner product of the two outputs) per pair of paths
        (``ll-lf``, ...), ``norm`` (mean L2 norm of each path's output), each over the steps
        it occurred in, and the ``lambda_r`` in force."""
        stats: dict[str, dict[str, float]] = {"lambda_r": {"value": self.lambda_r}}
        totals: dict[str, list[float]] = {}
        for paths, (total, steps) in self._align_sums.items():
            labels = [f"{a}-{b}" for a, b in itertools.combinations(paths, 2)]
            keys = [f"{group}/{k}" for group in ("weight", "info_nce", "inner") for k in labels]
            keys += [f"norm/{p}" for p in paths]
            for key, value in zip(keys, total.tolist(), strict=True):
                entry = totals.setdefault(key, [0.0, 0])
                entry[0] += value
                entry[1] += steps
        for key, (total, steps) in totals.items():
            group, name = key.split("/", 1)
            stats.setdefault(group, {})[name] = total / steps
        self._align_sums = {}
        return stats

    @contextlib.contextmanager
    def scoring_with(self, network: str) -> Iterator[None]:
        """Score with ``frozen`` instead of ``learnable`` inside the block (the stage-1 SASRec's
        own results, on the same evaluator)."""
        before, self._scorer = self._scorer, network
        try:
            yield
        finally:
            self._scorer = before

    def predict(self, interaction) -> torch.Tensor:
        return getattr(self, self._scorer).predict(interaction)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        return getattr(self, self._scorer).full_sort_predict(interaction)

    def extra_repr(self) -> str:
        return (
            f"path_mixing={self.path_mixing}, module_split={self.module_split}, "
            f"modules={self.n_modules}, n_paths={self.n_paths or 2**self.n_modules}"
        )
