"""CETNet's base models: which RecBole context-aware models it can hold, each one's config
(its own yaml defaults over CETNet's shared settings), and adapters reading each one's logit
and regulariser the way its own ``forward`` and ``calculate_loss`` compute them."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import torch
from recbole.utils import ModelType
from recbole.utils.argument_list import (
    dataset_arguments,
    evaluation_arguments,
    general_arguments,
    training_arguments,
)
from torch import nn

from recbole_flame.utils.errors import ConfigError, UnknownModelError
from recbole_flame.utils.registry import available_models, canonical_model_name, get_model

# Keys that configure the data pipeline, trainer or evaluator, which all base models share with
# CETNet: a base model's yaml must not change them, and base_model_overrides may not name them.
SHARED_KEYS = frozenset(
    general_arguments + training_arguments + evaluation_arguments + dataset_arguments
)


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


# --- which models, and each one's config ------------------------------------------------------
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


def check_base_model(entry: Any) -> str:
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


def per_model_list(config, key: str, n: int) -> list:
    """``key``'s value as a list of n entries (``~`` gives n Nones)."""
    value = config[key]
    if value is None:
        return [None] * n
    if not isinstance(value, list) or len(value) != n:
        raise ConfigError(
            f"{key} must be ~ or a list with one entry per base model ({n}), not {value!r}"
        )
    return value


def base_model_configs(config) -> list:
    """One config per base model, each a copy of ``config`` (so the model may write to it, as
    KD_DAGFM does) with, lowest precedence first:

    1. CETNet's final config: the shared data, training and evaluation keys;
    2. the base model's own yaml defaults (:meth:`Config.model_yaml_defaults
       <recbole_flame.config.Config.model_yaml_defaults>`: RecBole's
       ``properties/model/<Name>.yaml``, then this package's), except shared keys and keys the
       user set explicitly, so each base model is configured as a
       standalone run of it with the same user settings would be;
    3. ``embedding_size``: its ``base_embedding_sizes`` entry, or CETNet's ``embedding_size``;
    4. its ``base_model_overrides`` entry (a dict of model keys), if any.
    """
    names = [canonical_model_name(n) for n in config["base_models"]]
    sizes = per_model_list(config, "base_embedding_sizes", len(names))
    overrides = per_model_list(config, "base_model_overrides", len(names))
    explicit = set(getattr(config, "external_config_dict", {}))
    configs = []
    for name, size, extra in zip(names, sizes, overrides, strict=True):
        defaults = config.model_yaml_defaults(name)
        final = copy.deepcopy(config.final_config_dict)
        final.update(
            copy.deepcopy(
                {k: v for k, v in defaults.items() if k not in SHARED_KEYS and k not in explicit}
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
