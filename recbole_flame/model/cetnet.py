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
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import recbole
import torch
import torch.nn.functional as F
import yaml
from recbole.model.abstract_recommender import AbstractRecommender, ContextRecommender
from recbole.utils import InputType, ModelType
from recbole.utils.argument_list import (
    dataset_arguments,
    evaluation_arguments,
    general_arguments,
    training_arguments,
)
from scipy.stats import rankdata
from torch import nn

from recbole_flame.config.rules import Rule, boolean, integer, number, one_of, show, structured
from recbole_flame.utils.amp import full_precision
from recbole_flame.utils.errors import ConfigError, UnknownModelError
from recbole_flame.utils.paths import properties_dir
from recbole_flame.utils.registry import available_models, canonical_model_name, get_model

FUSION_SPACES = ("prob", "logit")

# Keys that configure the data pipeline, trainer or evaluator, which all base models share with
# CETNet: a base model's yaml must not change them, and base_model_overrides may not name them.
_SHARED_KEYS = frozenset(
    general_arguments + training_arguments + evaluation_arguments + dataset_arguments
)


# --- fusion and loss: pure functions of the base models' logits --------------------------------
class Fused(NamedTuple):
    """The ensemble's output for a batch: ``prob`` [B], ``weights`` [K, B], and ``logit`` [B]
    when fusing in logit space (None in prob space, where no fused logit exists)."""

    prob: torch.Tensor
    weights: torch.Tensor
    logit: torch.Tensor | None


def binary_entropy(logits: torch.Tensor, eps: float) -> torch.Tensor:
    """Entropy in nats of ``Bernoulli(sigmoid(logits))``, p clamped to ``[eps, 1 - eps]`` so that
    a saturated model gets a finite entropy and a finite gradient."""
    # H is symmetric in p and 1 - p: work with the smaller one, sigmoid(-|z|), because float32
    # cannot hold 1 - eps for small eps (1 - 1e-7 rounds to 1 - 1.19e-7).
    q = torch.sigmoid(-logits.abs()).clamp(min=eps)
    return -(q * torch.log(q) + (1.0 - q) * torch.log1p(-q))


def fusion_weights(logits: torch.Tensor, tau: float, eps: float) -> torch.Tensor:
    """General softmax over models (dim 0) of the confidence ``-H_k / tau``; logits [K, B]."""
    return torch.softmax(-binary_entropy(logits, eps) / tau, dim=0)


def fuse(
    logits: torch.Tensor,
    tau: float,
    eps: float,
    space: str = "prob",
    detach_weights: bool = False,
) -> Fused:
    """Confidence-weighted fusion of the base models' logits [K, B]."""
    weights = fusion_weights(logits, tau, eps)
    if detach_weights:
        weights = weights.detach()
    if space == "prob":
        return Fused((weights * torch.sigmoid(logits)).sum(0), weights, None)
    if space == "logit":
        logit = (weights * logits).sum(0)
        return Fused(torch.sigmoid(logit), weights, logit)
    raise ValueError(f"fusion space must be one of {FUSION_SPACES}, not {space!r}")


def collaborative_losses(
    logits: torch.Tensor, label: torch.Tensor, fused: Fused, collab_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(BCE(p, y), sum_k BCE(p_k, y), alpha * sum_k BCE(p_k, stopgrad(p)))``, batch means.

    Per-model terms use the logits (``BCE-with-logits``) to stay finite when a model saturates;
    the ensemble target is detached, so each model moves toward the ensemble, never the reverse.
    """
    if fused.logit is not None:
        fused_loss = F.binary_cross_entropy_with_logits(fused.logit, label)
    else:
        # CUDA autocast refuses binary_cross_entropy on probabilities (unsafe in half
        # precision); the fused probability's loss is taken in float32 outside it.
        with full_precision(fused.prob, label) as (prob, target):
            fused_loss = F.binary_cross_entropy(prob, target)
    expanded = label.expand_as(logits)
    base_loss = F.binary_cross_entropy_with_logits(logits, expanded, reduction="none").mean(1).sum()
    target = fused.prob.detach().expand_as(logits)
    collab = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1).sum()
    return fused_loss, base_loss, collab_weight * collab


# --- diagnostics: why the ensemble does (not) beat its members ---------------------------------
WEIGHT_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def auc_score(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic with tied scores counted half (nan without both
    classes)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels) > 0.5
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-15) -> float:
    """Mean binary cross-entropy, p clipped to ``[eps, 1 - eps]`` as RecBole's LogLoss."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(np.mean(-y * np.log(p) - (1.0 - y) * np.log1p(-p)))


def _bernoulli_kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """``KL(Bernoulli(p) || Bernoulli(q))`` elementwise, both clipped to ``[eps, 1 - eps]``."""
    p = np.clip(p, eps, 1.0 - eps)
    q = np.clip(q, eps, 1.0 - eps)
    return p * np.log(p / q) + (1.0 - p) * np.log((1.0 - p) / (1.0 - q))


def ensemble_diagnostics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    names: list[str],
    tau: float,
    eps: float,
    space: str = "prob",
    collab_weight: float = 1.0,
) -> dict[str, Any]:
    """What the ensemble does on one split, from every base model's logits [K, N] and the labels
    [N]: the fused, each model's and the plain average's AUC and LogLoss, each model's fusion
    weight distribution (``base``: one entry per model, in ``names`` order), the pairwise
    correlation of the logits (``"a~b"``, model positions), and the losses' parts.

    ``collab`` is ``collab_weight * sum_k BCE(p_k, p)``; of it, only ``collab_kl``
    (``collab_weight * sum_k KL(p || p_k)``) depends on the models (the rest is the fused p's
    own entropy), so ``collab_kl`` is how far the collaborative term still pulls them."""
    fused = fuse(logits, tau, eps, space)
    y = labels.double().cpu().numpy()
    p = fused.prob.double().cpu().numpy()
    probs = torch.sigmoid(logits.double()).cpu().numpy()
    weights = fused.weights.double().cpu().numpy()
    top = weights.argmax(0)
    report: dict[str, Any] = {
        "n": int(y.size),
        "positive_rate": float(y.mean()) if y.size else float("nan"),
        "fused": {"auc": auc_score(p, y), "logloss": log_loss(p, y)},
        "mean_of_probs": {
            "auc": auc_score(probs.mean(0), y),
            "logloss": log_loss(probs.mean(0), y),
        },
        "base": [],
    }
    kl_sum = 0.0
    bce_sum = 0.0
    for k, name in enumerate(names):
        w = weights[k]
        kl = float(_bernoulli_kl(p, probs[k]).mean())
        kl_sum += kl
        bce_sum += float(
            F.binary_cross_entropy_with_logits(
                logits[k].double(), fused.prob.double(), reduction="mean"
            )
        )
        report["base"].append(
            {
                "name": name,
                "auc": auc_score(probs[k], y),
                "logloss": log_loss(probs[k], y),
                "weight_mean": float(w.mean()),
                "weight_std": float(w.std()),
                "weight_quantiles": {
                    f"q{round(q * 100):02d}": float(v)
                    for q, v in zip(WEIGHT_QUANTILES, np.quantile(w, WEIGHT_QUANTILES), strict=True)
                },
                "top_weight_share": float((top == k).mean()),
                "kl_fused_to_model": kl,
            }
        )
    z = logits.double().cpu().numpy()
    report["logit_correlation"] = {
        f"{a}~{b}": float(np.corrcoef(z[a], z[b])[0, 1])
        for a in range(len(names))
        for b in range(a + 1, len(names))
    }
    fused_bce = log_loss(p, y, eps=1e-7)
    base_bce = sum(log_loss(probs[k], y, eps=1e-7) for k in range(len(names)))
    report["loss"] = {
        "fused": fused_bce,
        "base": base_bce,
        "collab": collab_weight * bce_sum,
        "collab_kl": collab_weight * kl_sum,
    }
    return report


# --- reading each RecBole model's logit and regulariser ----------------------------------------
def _logit_of_predict_layer(model: nn.Module, interaction) -> torch.Tensor:
    """DCNV2's forward ends in ``sigmoid(predict_layer(...))``: read the layer's output instead
    of inverting the sigmoid, which saturates to exactly 0 or 1 in float32."""
    captured: list[torch.Tensor] = []
    handle = model.predict_layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        model(interaction)
    finally:
        handle.remove()
    return captured[-1]


def _logit_of_kd_dagfm(model: nn.Module, interaction) -> torch.Tensor:
    """KD_DAGFM's forward returns the sigmoid of the active network's ``logits`` attribute."""
    model(interaction)
    net = model.teacher_network if model.phase == "teacher_training" else model.student_network
    return net.logits


# RecBole 1.2.1 context-aware models whose ``forward`` returns a probability; every other one
# returns the logit (its ``predict`` is ``sigmoid(forward)``). tests/test_cetnet.py checks
# ``sigmoid(logit) == predict`` for every allowed model, so a new RecBole release that changes
# this fails there.
_LOGIT_READERS: dict[str, Callable[[nn.Module, Any], torch.Tensor]] = {
    "DCNV2": _logit_of_predict_layer,
    "KD_DAGFM": _logit_of_kd_dagfm,
}


def _dcnv2_reg(m: nn.Module) -> torch.Tensor:
    if m.mixed:
        reg = (
            m.reg_loss(m.cross_layer_c) + m.reg_loss(m.cross_layer_v) + m.reg_loss(m.cross_layer_u)
        )
    else:
        reg = m.reg_loss(m.cross_layer_w)
    return m.reg_weight * reg


# The extra term each RecBole 1.2.1 model adds to its data loss in ``calculate_loss``; models not
# listed add none. Checked against ``calculate_loss`` in tests/test_cetnet.py.
_REGULARISERS: dict[str, Callable[[nn.Module], torch.Tensor]] = {
    "DCNV2": _dcnv2_reg,
    "DCN": lambda m: m.reg_weight * m.reg_loss(m.cross_layer_w),
    "AFM": lambda m: m.reg_weight * torch.norm(m.attlayer.w.weight, p=2),
    "EulerNet": lambda m: m.RegularLoss(m.reg_weight),
    "PNN": lambda m: m.reg_loss(),
    "xDeepFM": lambda m: m.reg_weight * m.calculate_reg_loss(),
}


def base_logit(name: str, model: nn.Module, interaction) -> torch.Tensor:
    """Base model ``name``'s logit for each sample of ``interaction``, shape [B]."""
    reader = _LOGIT_READERS.get(name)
    out = reader(model, interaction) if reader else model(interaction)
    return out.reshape(-1)


def base_regulariser(name: str, model: nn.Module) -> torch.Tensor | float:
    """The regularisation term RecBole's ``name`` adds in ``calculate_loss`` (0 if none)."""
    reg = _REGULARISERS.get(name)
    return reg(model) if reg else 0.0


# --- configuration -----------------------------------------------------------------------------
@functools.cache
def context_model_names() -> tuple[str, ...]:
    """Every installed context-aware model CETNet can hold (not CETNet itself)."""
    ours, theirs = available_models()
    names = []
    for name in ours + theirs:
        try:
            cls = get_model(name)
        except UnknownModelError:
            continue  # exlib models whose package is not installed
        if cls.type == ModelType.CONTEXT and name != "CETNet":
            names.append(name)
    return tuple(sorted(names, key=str.lower))


def _bad_entry(entry: Any, why: str) -> ConfigError:
    return ConfigError(
        f"base_models entry '{entry}' {why}; use context-aware models: "
        f"{', '.join(context_model_names())}"
    )


def _check_base_model(entry: Any) -> str:
    """The registered name of a ``base_models`` entry, or ConfigError."""
    if not isinstance(entry, str):
        raise _bad_entry(entry, "is not a model name")
    try:
        name = canonical_model_name(entry)
    except UnknownModelError:
        raise _bad_entry(entry, "is not a known model") from None
    try:
        cls = get_model(name)
    except UnknownModelError:
        # RecBole's exlib models (LightGBM, XGBoost): decision trees whose package is missing.
        raise _bad_entry(entry, "cannot be loaded here and is not a context-aware model") from None
    if name == "CETNet":
        raise _bad_entry(entry, "is CETNet itself")
    if cls.type != ModelType.CONTEXT:
        kind = getattr(cls.type, "name", str(cls.type)).lower()
        raise _bad_entry(entry, f"is a {kind} model, not a context-aware (CTR) one")
    return name


def _per_model_list(config, key: str, n: int) -> list:
    """``key``'s value as a list of n entries (``~`` gives n Nones)."""
    value = config[key]
    if value is None:
        return [None] * n
    if not isinstance(value, list) or len(value) != n:
        raise ConfigError(
            f"{key} must be ~ or a list with one entry per base model ({n}), not {value!r}"
        )
    return value


def _model_yaml_defaults(name: str, loader) -> dict[str, Any]:
    """The defaults a standalone run of ``name`` reads: RecBole's yaml, then this package's."""
    merged: dict[str, Any] = {}
    for folder in (
        Path(recbole.__file__).parent / "properties" / "model",
        properties_dir() / "model",
    ):
        path = folder / f"{name}.yaml"
        if path.is_file():
            merged.update(yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {})
    return merged


def base_model_configs(config) -> list:
    """One config per base model, each a copy of ``config`` (so the model may write to it, as
    KD_DAGFM does) with, lowest precedence first:

    1. CETNet's final config: the shared data, training and evaluation keys;
    2. the base model's own yaml defaults (RecBole's ``properties/model/<Name>.yaml``), except
       shared keys and keys the user set explicitly, so each base model is configured as a
       standalone run of it with the same user settings would be;
    3. ``embedding_size``: its ``base_embedding_sizes`` entry, or CETNet's ``embedding_size``;
    4. its ``base_model_overrides`` entry (a dict of model keys), if any.
    """
    names = [canonical_model_name(n) for n in config["base_models"]]
    sizes = _per_model_list(config, "base_embedding_sizes", len(names))
    overrides = _per_model_list(config, "base_model_overrides", len(names))
    explicit = set(getattr(config, "external_config_dict", {}))
    configs = []
    for name, size, extra in zip(names, sizes, overrides, strict=True):
        defaults = _model_yaml_defaults(name, config.yaml_loader)
        final = copy.deepcopy(config.final_config_dict)
        final.update(
            copy.deepcopy(
                {k: v for k, v in defaults.items() if k not in _SHARED_KEYS and k not in explicit}
            )
        )
        final["embedding_size"] = size if size is not None else config["embedding_size"]
        final.update(copy.deepcopy(extra or {}))
        final["model"] = name
        sub = copy.copy(config)
        sub.final_config_dict = final
        sub.model, sub.model_class = name, get_model(name)
        configs.append(sub)
    return configs


def _explain_base_models(key: str, value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return (
            f"{key} must be a non-empty list of context-aware model names such as "
            f"[DCNV2, DeepFM], not {show(value)}"
        )
    for entry in value:
        try:
            _check_base_model(entry)
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
        shared = sorted(set(extra or {}) & _SHARED_KEYS)
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


class CETNet(ContextRecommender):
    r"""Distinct CTR models, each with its own embedding table, fused by negated-entropy
    confidence and trained collaboratively. The formulas are this package's reconstruction from
    the paper's abstract (no public code exists); see the module docstring.

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
            _per_model_list(config, key, n)
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
