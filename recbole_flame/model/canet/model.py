"""CANet: the model class, joining the supernet, the scoring paths, the router and the FLOPs
accounting, with its training loss (one method per ``router_gradient``) and inference.

Design notes (the slicing, the three training signals, the losses, what is counted):
docs/models/canet.md.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn

from recbole_flame.config.rules import Rule
from recbole_flame.model.canet.flops import FlopsMixin, router_flops
from recbole_flame.model.canet.keys import KEY_RULES, LIST_KEYS
from recbole_flame.model.canet.router import RouterMixin, gumbel_one_hot, gumbel_perturbed
from recbole_flame.model.canet.routes import Route, parse_route
from recbole_flame.model.canet.scoring import ScoringMixin
from recbole_flame.model.canet.supernet import SupernetMixin
from recbole_flame.model.capabilities import ModelCapabilities
from recbole_flame.model.layers.sequence import dense_targets, first_trained_step, trim_batch
from recbole_flame.utils.errors import ConfigError

if TYPE_CHECKING:
    from recbole.config import Config
    from recbole.data.dataset import SequentialDataset
    from recbole.data.interaction import Interaction

#: A training path's result: each row's route (B) and the scores at the scored steps.
Scored = tuple[torch.Tensor, torch.Tensor]


class CANet(
    ModelCapabilities, ScoringMixin, RouterMixin, FlopsMixin, SupernetMixin, SequentialRecommender
):
    """A router picks one of the supernet's routes per user; inference runs only that route."""

    uses_evaluation_profile = True  # properties/profile/evaluation.yaml
    supports_dense_training = True
    trim_safe = True
    key_rules: ClassVar[dict[str, Rule]] = KEY_RULES

    def __init__(self, config: Config, dataset: SequentialDataset) -> None:
        super().__init__(config, dataset)
        self.check_config(config)
        self.hiddens, self.depths, self.embs = (sorted(set(config[k])) for k in LIST_KEYS)
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
        self.sandwich = config["supernet_training"] == "sandwich"
        self.inplace_distillation = bool(config["inplace_distillation"])
        self.flops_budget = config["flops_budget"]
        self.flops_budget_weight = float(config["flops_budget_weight"])
        self.dense = config["train_mode"] == "dense"
        self.position_alignment = config["position_alignment"] or "start"
        self.list_suffix = config["LIST_SUFFIX"]
        eps = config["layer_norm_eps"]

        # Supernet first, router second: the parameters' names and order (checkpoints).
        self._build_supernet(config["dropout_prob"], eps)
        self._build_router(config, eps)

        self.route_index = {r: i for i, r in enumerate(self.routes)}
        self.register_buffer("route_table", torch.tensor(self.routes), persistent=False)
        self.full_flops = self.flops_of(self.full_route)
        self.router_cost = router_flops(
            self.max_seq_length,
            config["router_hidden_size"],
            config["router_inner_size"],
            config["router_n_layers"],
            len(self.routes),
        )
        self.route_counts: Counter[Route] = Counter()  # routes taken in evaluation
        # each route's FLOPs ratio as flops_ratio counts it (router included); not saved
        cost = [(self.flops_of(r) + self.router_cost) / self.full_flops for r in self.routes]
        self.register_buffer("route_cost", torch.tensor(cost), persistent=False)
        self._register_gate_tables()
        self._register_router_tables()
        self._init_weight_cache()
        # Rows scored together at the last step (0: a whole width group at once).
        self.eval_chunk = config["eval_chunk_size"] or None
        self.reset_train_route_stats()
        self.apply(self._init_weights)
        for block in self.blocks:  # ~0 residual scales, not the Linear init
            block.scale_attn.data.fill_(1e-8)
            block.scale_ffn.data.fill_(1e-8)

    # --- config -------------------------------------------------------------------------------
    @classmethod
    def check_config(cls, config: Config) -> None:
        """Stop with one line naming the key when the routing space cannot be built; each key
        on its own is checked by :data:`KEY_RULES` when the config is built."""
        n_heads = config["n_heads"]
        for h in config["hidden_size_list"]:
            if h % n_heads:
                raise ConfigError(
                    f"hidden_size_list: {h} is not divisible by n_heads = {n_heads}; "
                    "every width is split into n_heads heads"
                )
        if config["router_hidden_size"] % config["router_n_heads"]:
            raise ConfigError("router_hidden_size must be a positive multiple of router_n_heads")
        route = parse_route(config["fixed_route"])
        space = [set(config[k]) for k in LIST_KEYS]
        if route is not None and not all(
            v in values for v, values in zip(route, space, strict=True)
        ):
            raise ConfigError(
                f"fixed_route: {config['fixed_route']} is not in the routing space (hidden "
                f"{sorted(space[0])}, layers {sorted(space[1])}, embedding {sorted(space[2])})"
            )
        if config["inplace_distillation"] and config["supernet_training"] != "sandwich":
            raise ConfigError(
                "inplace_distillation: True needs supernet_training: sandwich (the largest "
                "route, trained on the batch, is the teacher)"
            )
        if config["fixed_route"] is not None:
            for key, off in (("supernet_training", "route"), ("flops_budget", None)):
                if config[key] != off:
                    raise ConfigError(
                        f"{key}: {config[key]} is for routed training, and fixed_route: "
                        f"{config['fixed_route']} trains one route; set {key}: {off or '~'}"
                    )

    def _fixed(self, name: str | None) -> Route | None:
        named = {None: None, "full": self.full_route, "smallest": self.smallest_route}
        return named[name] if name in named else parse_route(name)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    # --- training -----------------------------------------------------------------------------
    def training_steps(
        self, interaction: Interaction
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

    def calculate_loss(self, interaction: Interaction) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The CE of each row's route (``fixed_route``: that route's CE alone), else (CE,
        weighted guide loss, weighted balance loss) with the routes drawn by the router and
        its gradient taken the ``router_gradient`` way."""
        interaction = trim_batch(interaction, self.ITEM_SEQ_LEN, self.list_suffix)
        item_seq, item_seq_len, steps, targets, row = self.training_steps(interaction)
        if self.fixed_route is not None:
            return F.cross_entropy(self.fixed_route_scores(item_seq, item_seq_len, steps), targets)
        logits = self.router_logits(item_seq, item_seq_len)
        path = {
            "gate": self.gate_scores,
            "pair": self.pair_scores,
            "picked": self.picked_scores,
        }[self.router_gradient]
        index, scores = path(item_seq, item_seq_len, steps, row, logits)
        self._count_training_routes(index, logits)
        rec = F.cross_entropy(scores, targets)
        last_target = interaction[self.POS_ITEM_ID]
        guide = self.guide_loss(item_seq, item_seq_len, last_target, logits)
        terms = [rec, self.guide_weight * guide, self.uniform_weight * self.balance(logits)]
        # Switches beside the authors' loss, each an added term (off: the three above alone).
        if self.sandwich:
            terms.append(self.sandwich_loss(item_seq, item_seq_len, steps, targets, scores))
        if self.flops_budget is not None:
            terms.append(self.flops_budget_weight * self.budget_loss(logits))
        return tuple(terms)

    def sandwich_loss(
        self,
        item_seq: torch.Tensor,
        item_seq_len: torch.Tensor,
        steps: torch.Tensor | None,
        targets: torch.Tensor,
        routed: torch.Tensor,
    ) -> torch.Tensor:
        """The sandwich rule: the largest and the smallest route also trained on the batch, so
        the widest dimensions learn every step, not only from the users routed to them. With
        ``inplace_distillation`` the smallest and the ``routed`` scores learn the largest
        route's detached softmax instead of the labels (the largest keeps the labels)."""
        n = item_seq.size(0)
        full = self.grouped_scores(
            item_seq,
            item_seq_len,
            item_seq.new_full((n,), self.route_index[self.full_route]),
            steps,
        )
        small = self.grouped_scores(
            item_seq,
            item_seq_len,
            item_seq.new_full((n,), self.route_index[self.smallest_route]),
            steps,
        )
        loss = F.cross_entropy(full, targets)
        if not self.inplace_distillation:
            return loss + F.cross_entropy(small, targets)
        teacher = torch.softmax(full.detach(), dim=-1)
        for student in (small, routed):
            loss = loss - (teacher * torch.log_softmax(student, dim=-1)).sum(-1).mean()
        return loss

    def budget_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """``(FLOPs ratio of the batch's argmax routes - flops_budget)^2``, each route's cost
        router included (as :meth:`flops_ratio` counts it): the value is what inference would
        spend on the batch, and its gradient is taken straight through the router's softmax,
        so rows near a decision boundary move to a cheaper (or dearer) route. (The plain
        expectation under the softmax can sit on the budget while every row's argmax, which
        inference runs, does not: measured on the toy problem of the tests.)"""
        soft = torch.softmax(logits, dim=-1)
        hard = F.one_hot(soft.argmax(dim=-1), soft.size(-1)).to(soft.dtype)
        spent = ((hard + soft - soft.detach()) @ self.route_cost).mean()
        return (spent - float(self.flops_budget)) ** 2

    def fixed_route_scores(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, steps: torch.Tensor | None
    ) -> torch.Tensor:
        """``fixed_route``: every row on that route, no router."""
        index = item_seq.new_full((item_seq.size(0),), self.route_index[self.fixed_route])
        return self.grouped_scores(item_seq, item_seq_len, index, steps)

    def gate_scores(
        self,
        item_seq: torch.Tensor,
        item_seq_len: torch.Tensor,
        steps: torch.Tensor | None,
        row: torch.Tensor,
        logits: torch.Tensor,
    ) -> Scored:
        """``gate``: the gated supernet with each row's straight-through one-hot route, so
        every route's logit learns whether switching that route on would lower the loss."""
        choice = gumbel_one_hot(logits, self.gumbel_tau)
        index = choice.argmax(dim=-1)
        hidden = self.gated_hidden(item_seq, item_seq_len, choice)
        if steps is None:
            hidden = self.gather_indexes(hidden, item_seq_len - 1)
        else:
            hidden = hidden[steps]
        return index, self.output_layer(hidden)

    def pair_scores(
        self,
        item_seq: torch.Tensor,
        item_seq_len: torch.Tensor,
        steps: torch.Tensor | None,
        row: torch.Tensor,
        logits: torch.Tensor,
    ) -> Scored:
        """``pair``: the picked route's scores in value; the router learns from a neighbour
        route's scores (run without gradient) whether that neighbour would do better."""
        perturbed = gumbel_perturbed(logits, self.gumbel_tau)
        index = perturbed.argmax(dim=-1)
        other = self.sample_neighbours(index)
        pair = torch.stack([index, other], dim=1)
        w = torch.softmax(perturbed.gather(1, pair), dim=-1)
        w = w - w.detach()
        scores = self.grouped_scores(item_seq, item_seq_len, index, steps)
        with torch.no_grad():  # b's weights would get 0 x gradient anyway
            alternative = self.grouped_scores(item_seq, item_seq_len, other, steps)
        return index, scores * (1.0 + w[row, 0:1]) + alternative * w[row, 1:2]

    def picked_scores(
        self,
        item_seq: torch.Tensor,
        item_seq_len: torch.Tensor,
        steps: torch.Tensor | None,
        row: torch.Tensor,
        logits: torch.Tensor,
    ) -> Scored:
        """``picked`` (the ablation): only the picked route's scores carry the router's
        gradient, scaled by ``1 + p - p.detach()``; it never compares routes."""
        perturbed = gumbel_perturbed(logits, self.gumbel_tau)
        index = perturbed.argmax(dim=-1)
        soft = torch.softmax(perturbed, dim=-1).gather(1, index[:, None]).squeeze(1)
        scale = 1.0 + soft - soft.detach()
        scores = self.grouped_scores(item_seq, item_seq_len, index, steps)
        return index, scores * scale[row, None]

    # --- inference ----------------------------------------------------------------------------
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

    def full_sort_predict(self, interaction: Interaction) -> torch.Tensor:
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])

    def predict(self, interaction: Interaction) -> torch.Tensor:
        scores = self.full_sort_predict(interaction)
        return scores.gather(1, interaction[self.ITEM_ID][:, None]).squeeze(1)

    def extra_repr(self) -> str:
        return (
            f"routes={len(self.routes)}, full={self.full_route}, fixed_route={self.fixed_route}, "
            f"router_gradient={self.router_gradient}, ffn_width={self.ffn_width}"
        )
