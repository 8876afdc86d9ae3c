"""CETNet: Collaborative Ensemble Training Network for CTR prediction.

Reference:
    "A Collaborative Ensemble Framework for CTR Prediction." arXiv 2411.13700 (Meta).

No public code exists and only the abstract is public, so the formulas below are this package's
reconstruction (the project's METHODS.md, section 2), not the authors' method; every choice is a
config key. What the abstract states: several distinct models, each with its own embedding table,
trained collaboratively so that each refines its predictions from the ensemble's, and fused by
confidence with a "general softmax" in which a model's confidence is its negated entropy.

Reconstruction, per sample and base model k with logit z_k:

- ``p_k = sigmoid(z_k)``; ``H_k = -p log p - (1-p) log(1-p)`` with p clamped to
  ``[entropy_eps, 1 - entropy_eps]``; confidence ``c_k = -H_k``.
- weights ``w = softmax_k(c_k / tau)``, detached if ``detach_fusion_weights``.
- fused ``p = sum_k w_k p_k`` (``fusion_space: prob``) or ``sigmoid(sum_k w_k z_k)`` (``logit``).
- loss ``BCE(p, y) + sum_k BCE(p_k, y) + collab_weight * sum_k BCE(p_k, stopgrad(p))``, plus each
  base model's own regularisation term where RecBole's model adds one in its ``calculate_loss``.

Each base model is RecBole's own class, built from its own config (see
:func:`base_model_configs`) on the same dataset, so none shares a parameter with another.

The package, by concern: :mod:`.fusion` (the fusion and losses), :mod:`.diagnostics` (why the
ensemble does or does not beat its members), :mod:`.base_models` (which models it holds, each
one's config, and adapters reading each one's logit and regulariser), :mod:`.keys` (config
keys) and :mod:`.model` (the :class:`CETNet` class). Design notes: docs/models/cetnet.md.
"""

from recbole_flame.model.cetnet.base_models import (
    SHARED_KEYS,
    base_logit,
    base_model_configs,
    base_regulariser,
    context_model_names,
)
from recbole_flame.model.cetnet.diagnostics import (
    WEIGHT_QUANTILES,
    auc_score,
    ensemble_diagnostics,
    log_loss,
)
from recbole_flame.model.cetnet.fusion import (
    FUSION_SPACES,
    Fused,
    binary_entropy,
    collaborative_losses,
    fuse,
    fusion_weights,
)
from recbole_flame.model.cetnet.keys import KEY_RULES
from recbole_flame.model.cetnet.model import CETNet

__all__ = [
    "CETNet",
    "FUSION_SPACES",
    "Fused",
    "KEY_RULES",
    "SHARED_KEYS",
    "WEIGHT_QUANTILES",
    "auc_score",
    "base_logit",
    "base_model_configs",
    "base_regulariser",
    "binary_entropy",
    "collaborative_losses",
    "context_model_names",
    "ensemble_diagnostics",
    "fuse",
    "fusion_weights",
    "log_loss",
]
