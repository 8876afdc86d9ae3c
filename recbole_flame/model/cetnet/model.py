"""The :class:`CETNet` class: its base models built from their own configs, fused and trained
collaboratively."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from recbole.model.abstract_recommender import AbstractRecommender, ContextRecommender
from recbole.utils import InputType, ModelType
from torch import nn

from recbole_flame.config.rules import Rule
from recbole_flame.model.capabilities import ModelCapabilities
from recbole_flame.model.cetnet.base_models import (
    base_logit,
    base_model_configs,
    base_regulariser,
    per_model_list,
)
from recbole_flame.model.cetnet.diagnostics import ensemble_diagnostics
from recbole_flame.model.cetnet.fusion import Fused, collaborative_losses, fuse
from recbole_flame.model.cetnet.keys import KEY_RULES
from recbole_flame.utils.errors import ConfigError
from recbole_flame.utils.registry import get_model


class CETNet(ModelCapabilities, ContextRecommender):
    r"""Distinct CTR models, each with its own embedding table, fused by negated-entropy
    confidence and trained collaboratively. The formulas are this package's reconstruction from
    the paper's abstract (no public code exists); see the package docstring.

    ``calculate_loss`` returns ``(fused, base, collab)``: the fused BCE, the sum of the base
    models' BCEs plus their own RecBole regularisers, and the weighted collaborative term.
    ``forward`` and ``predict`` return the fused probability.
    """

    type = ModelType.CONTEXT
    input_type = InputType.POINTWISE
    key_rules: ClassVar[dict[str, Rule]] = KEY_RULES

    def __init__(self, config, dataset):
        # ContextRecommender.__init__ would build an embedding table and first-order layer for
        # CETNet itself, which it never uses (each base model owns its own) and which would draw
        # from the RNG before the base models are initialised.
        AbstractRecommender.__init__(self)
        self.check_config(config)
        self.LABEL = config["LABEL_FIELD"]
        self.device = config["device"]
        self.embedding_size = config["embedding_size"]
        self.tau = float(config["tau"])
        self.fusion_space = config["fusion_space"]
        self.detach_fusion_weights = bool(config["detach_fusion_weights"])
        self.collab_weight = float(config["collab_weight"])
        self.entropy_eps = float(config["entropy_eps"])

        configs = base_model_configs(config)
        self.base_model_names = [cfg["model"] for cfg in configs]
        self.base_embedding_sizes = [cfg["embedding_size"] for cfg in configs]
        self.base_models = nn.ModuleList(
            get_model(name)(cfg, dataset)
            for name, cfg in zip(self.base_model_names, configs, strict=True)
        )

    @classmethod
    def check_config(cls, config) -> None:
        """Stop on settings CETNet cannot use together, before any data is loaded; each key on
        its own is checked by :data:`KEY_RULES` when the config is built."""
        n = len(config["base_models"])
        for key in ("base_embedding_sizes", "base_model_overrides"):
            per_model_list(config, key, n)
        for sub in base_model_configs(config):
            # The other phases load a RecBole-pickled warm-up checkpoint and change the loss.
            if sub["model"] == "KD_DAGFM" and sub["phase"] != "teacher_training":
                raise ConfigError(
                    "KD_DAGFM can be a base model only with phase: teacher_training, "
                    f"not '{sub['phase']}'"
                )

    def base_logits(self, interaction) -> torch.Tensor:
        """Every base model's logit, [K, B]."""
        return torch.stack(
            [
                base_logit(name, model, interaction)
                for name, model in zip(self.base_model_names, self.base_models, strict=True)
            ]
        )

    def fuse(self, logits: torch.Tensor) -> Fused:
        return fuse(
            logits, self.tau, self.entropy_eps, self.fusion_space, self.detach_fusion_weights
        )

    def forward(self, interaction) -> torch.Tensor:
        return self.fuse(self.base_logits(interaction)).prob

    def calculate_loss(self, interaction) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        label = interaction[self.LABEL].float()
        logits = self.base_logits(interaction)
        fused_loss, base_loss, collab = collaborative_losses(
            logits, label, self.fuse(logits), self.collab_weight
        )
        for name, model in zip(self.base_model_names, self.base_models, strict=True):
            base_loss = base_loss + base_regulariser(name, model)
        return fused_loss, base_loss, collab

    def predict(self, interaction) -> torch.Tensor:
        return self.forward(interaction)

    @torch.no_grad()
    def diagnostics(self, interactions: Iterable) -> dict[str, Any]:
        """:func:`ensemble_diagnostics` over ``interactions`` (batches with labels), in eval
        mode."""
        was_training = self.training
        self.eval()
        logits, labels = [], []
        try:
            for interaction in interactions:
                logits.append(self.base_logits(interaction).cpu())
                labels.append(interaction[self.LABEL].float().cpu())
        finally:
            self.train(was_training)
        return ensemble_diagnostics(
            torch.cat(logits, dim=1),
            torch.cat(labels),
            list(self.base_model_names),
            self.tau,
            self.entropy_eps,
            self.fusion_space,
            self.collab_weight,
        )
