"""CETNet's config keys: the rules each is checked by when the config is built
(:meth:`CETNet.check_config` relates them: one per-model entry per base model, base models'
own settings)."""

from __future__ import annotations

from typing import Any

from recbole_flame.config.rules import Rule, boolean, integer, number, one_of, show, structured
from recbole_flame.model.cetnet.base_models import SHARED_KEYS, check_base_model
from recbole_flame.model.cetnet.fusion import FUSION_SPACES
from recbole_flame.utils.errors import ConfigError


def _explain_base_models(key: str, value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return (
            f"{key} must be a non-empty list of context-aware model names such as "
            f"[DCNV2, DeepFM], not {show(value)}"
        )
    for entry in value:
        try:
            check_base_model(entry)
        except ConfigError as exc:
            return str(exc)
    return None


def _explain_base_embedding_sizes(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list) and all(v is None or integer().ok(v) for v in value):
        return None  # one entry per base model: CETNet.check_config
    return (
        f"{key} must be ~ or a list of positive integers or ~, one per base model, "
        f"not {show(value)}"
    )


def _explain_base_model_overrides(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(v is None or isinstance(v, dict) for v in value):
        return (
            f"{key} must be ~ or a list of dicts of model keys (or ~), one per base model, "
            f"not {show(value)}"
        )
    for extra in value:
        shared = sorted(set(extra or {}) & SHARED_KEYS)
        if shared:
            return (
                f"{key} cannot set {', '.join(shared)}: the base models share CETNet's data, "
                "trainer and evaluator; set it at the top level"
            )
    return None


#: CETNet's keys (CETNet.yaml's), checked when the config is built; CETNet.check_config relates
#: them (one per-model entry per base model, base models' own settings).
KEY_RULES: dict[str, Rule] = {
    "base_models": structured("a non-empty list of context-aware models", _explain_base_models),
    "base_embedding_sizes": structured(
        "~ or a list of positive integers or ~", _explain_base_embedding_sizes
    ),
    "base_model_overrides": structured(
        "~ or a list of dicts of model keys or ~", _explain_base_model_overrides
    ),
    "tau": number(),
    "fusion_space": one_of(*FUSION_SPACES),
    "detach_fusion_weights": boolean(),
    "collab_weight": number(strict=False),
    "entropy_eps": number(0.0, hi=0.5, hi_strict=True),
}
