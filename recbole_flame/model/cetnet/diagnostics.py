"""Why CETNet's ensemble does (not) beat its members: AUC, LogLoss, fusion weights and the
losses' parts on one split, in numpy from the base models' logits."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from recbole_flame.model.cetnet.fusion import fuse

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
