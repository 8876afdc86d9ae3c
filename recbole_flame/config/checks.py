"""Typed, ranged checks of config values, and "did you mean" for misspelt keys.

RecBole checks almost none of its keys: a wrong value ends in a traceback from wherever it is
first used (``epochs: abc`` in the trainer, ``learning_rate: -1`` in torch's optimizer after the
dataset has loaded, ``metrics: [Foo]`` inside ``Config`` itself). :func:`check_config_values` runs
inside :class:`recbole_flame.config.Config`, after the settings are merged and *before* RecBole's
own post-processing, so every bad value stops with one line naming the key, the value and what
is allowed, before any data is read.

:data:`COMMON_RULES` holds one :class:`~recbole_flame.config.rules.Rule` per key every model
may read (RecBole's common keys, the common transformer keys of its model yamls, and this
package's sequential keys); each model of this package declares its own keys' rules beside
itself, as its class's ``key_rules`` (:func:`rules_for` joins the two, :func:`rule_table` lists
every rule through the registry). A key is checked only when the merged settings hold it.
:data:`CROSS_CHECKS` relate keys (``valid_metric`` is one of ``metrics@topk``, ...); a model's
``check_config`` relates its own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from recbole_flame.config.rules import (
    INT_MAX,
    SEED_MAX,
    Rule,
    boolean,
    finite,
    int_list,
    integer,
    is_int,
    is_number,
    number,
    one_of,
    probability,
    show,
    structured,
    text,
)
from recbole_flame.data.dense import DENSE_WINDOWS
from recbole_flame.data.prefix import PREFIX_LOADERS
from recbole_flame.model.capabilities import capability
from recbole_flame.model.layers.attention import ATTENTION_IMPLS
from recbole_flame.model.layers.sequence import POSITION_ALIGNMENTS, TRAIN_MODES
from recbole_flame.utils.amp import AMP_DTYPES
from recbole_flame.utils.distributed import BACKENDS
from recbole_flame.utils.errors import ConfigError


# --- structured values ----------------------------------------------------------------------
def _metric_names() -> dict[str, Any]:
    from recbole.evaluator import metric_types

    return metric_types


def _topk_metrics() -> set[str]:
    """Metrics RecBole reports per cut-off (``ndcg@10``); the others (AUC, GAUC, ...) have none."""
    from recbole.evaluator.register import metric_information

    return {
        name for name, need in metric_information.items() if {"rec.topk", "rec.items"} & set(need)
    }


def _explain_metrics(key: str, value: Any) -> str | None:
    names = _metric_names()
    listed = [value] if isinstance(value, str) else value
    if not isinstance(listed, list) or not listed or not all(isinstance(m, str) for m in listed):
        return (
            f"{key} must be a non-empty list of metric names such as [Recall, NDCG], "
            f"not {show(value)}"
        )
    for metric in listed:
        if metric.lower() not in names:
            return f"{key}: {show(metric)} is not a RecBole metric; known: " + ", ".join(
                sorted(_display_metric(n) for n in names)
            )
    return None


def _display_metric(name: str) -> str:
    from recbole.evaluator import metrics_dict

    return metrics_dict[name].__name__


# re.ASCII: \d would otherwise take any script's digits ("０"), which CUDA does not read.
_GPU_ID = re.compile(r"^\s*(\d+\s*(,\s*\d+\s*)*)?$", re.ASCII)


def _explain_gpu_id(key: str, value: Any) -> str | None:
    if value is None or (is_int(value) and 0 <= value <= INT_MAX):
        return None
    if isinstance(value, str) and _GPU_ID.match(value):
        return None
    # "--gpu_id=0,1" parses as a tuple, which RecBole joins back to "0,1".
    if isinstance(value, tuple) and value and all(is_int(g) and 0 <= g <= INT_MAX for g in value):
        return None
    return f"{key} must be GPU indices such as 0 or 0,1, or '' for the CPU, not {show(value)}"


def _explain_device(key: str, value: Any) -> str | None:
    # RecBole always sets device from gpu_id, so a device given by the user was silently ignored.
    return (
        f"{key} cannot be set (it is {show(value)}): RecBole picks it from gpu_id; use "
        "gpu_id: '' for the CPU or gpu_id: 0 for the first GPU"
    )


_EVAL_ARGS_KEYS = ("split", "group_by", "order", "mode")
_LS_MODES = ("valid_and_test", "valid_only", "test_only")
_EVAL_MODE = re.compile(r"^(full|labeled|(uni|pop)[1-9]\d*)$", re.ASCII)


def _explain_eval_args(key: str, value: Any) -> str | None:
    if not isinstance(value, dict):
        return (
            f"{key} must be a dict with split, group_by, order and mode "
            f"(e.g. {{split: {{LS: valid_and_test}}, order: TO, mode: full}}), not {show(value)}"
        )
    for sub in value:
        if sub not in _EVAL_ARGS_KEYS:
            return f"{key} has an unknown entry {show(sub)}; its entries are " + ", ".join(
                _EVAL_ARGS_KEYS
            )
    problem = None
    if "split" in value:
        problem = _split_problem(value["split"])
    if problem is None and "group_by" in value:
        group_by = value["group_by"]
        if not (group_by is None or group_by == "user" or str(group_by).lower() == "none"):
            problem = f"group_by must be user or none, not {show(group_by)}"
    if problem is None and "order" in value and value["order"] not in ("RO", "TO"):
        problem = f"order must be RO (random) or TO (by time), not {show(value['order'])}"
    if problem is None and "mode" in value:
        problem = _mode_problem(value["mode"])
    return f"{key}: {problem}" if problem else None


def _split_problem(split: Any) -> str | None:
    usage = (
        "split must be {RS: [train, valid, test ratios]}, {TS: [ratios]} or {LS: valid_and_test}"
    )
    if not isinstance(split, dict) or len(split) != 1:
        return f"{usage}, not {show(split)}"
    ((how, arg),) = split.items()
    if how in ("RS", "TS"):
        if not (
            isinstance(arg, list)
            and len(arg) == 3
            and all(is_number(r) and finite(r) and r >= 0 for r in arg)
            and sum(arg) > 0
        ):
            return (
                f"split {how} must be a list of 3 ratios >= 0 (train, valid, test; e.g. "
                f"[0.8, 0.1, 0.1]), not {show(arg)}"
            )
        return None
    if how == "LS":
        if arg not in _LS_MODES:
            return f"split LS must be one of {', '.join(_LS_MODES)}, not {show(arg)}"
        return None
    return f"{usage}, not {show(split)}"


def _mode_problem(mode: Any) -> str | None:
    usage = "full, labeled, uniN or popN (N >= 1 sampled negatives)"
    if isinstance(mode, dict):
        if not mode or any(phase not in ("valid", "test") for phase in mode):
            return f"mode as a dict must map valid and/or test to a mode, not {show(mode)}"
        for phase, m in mode.items():
            if not (isinstance(m, str) and _EVAL_MODE.match(m)):
                return f"mode {phase} must be {usage}, not {show(m)}"
        return None
    if isinstance(mode, str) and _EVAL_MODE.match(mode):
        return None
    return f"mode must be {usage}, or a dict {{valid: ..., test: ...}}, not {show(mode)}"


_NEG_KEYS = ("distribution", "sample_num", "alpha", "dynamic", "candidate_num")


def _explain_train_neg_sample_args(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return (
            f"{key} must be ~ (no negative sampling) or a dict such as "
            f"{{distribution: uniform, sample_num: 1}}, not {show(value)}"
        )
    for sub in value:
        if sub not in _NEG_KEYS:
            # {uniform: 1} is RecBole 1.0's format; 1.2 ignores it without a word.
            return (
                f"{key} has an unknown entry {show(sub)}; its entries are {', '.join(_NEG_KEYS)} "
                "(e.g. {distribution: uniform, sample_num: 1})"
            )
    distribution = value.get("distribution", "uniform")
    if distribution is None or distribution in ("none", "None"):
        return None  # RecBole then samples nothing and ignores the other entries
    if distribution not in ("uniform", "popularity"):
        return f"{key}: distribution must be uniform, popularity or none, not {show(distribution)}"
    checks = (
        ("sample_num", integer(), 1),
        ("alpha", number(strict=False), 1.0),
        ("dynamic", boolean(), False),
        ("candidate_num", integer(lo=0), 0),
    )
    for sub, rule, default in checks:
        given = value.get(sub, default)
        if not rule.ok(given):
            return f"{key}: {sub} must be {rule.allowed}, not {show(given)}"
    return None


_CLIP_KEYS = ("max_norm", "norm_type", "error_if_nonfinite", "foreach")


def _explain_clip_grad_norm(key: str, value: Any) -> str | None:
    usage = "~ or a dict of torch's clip_grad_norm_ arguments such as {max_norm: 5, norm_type: 2}"
    if value is None:
        return None
    if not isinstance(value, dict) or "max_norm" not in value:
        return f"{key} must be {usage}, not {show(value)}"
    for sub in value:
        if sub not in _CLIP_KEYS:
            return (
                f"{key} has an unknown entry {show(sub)}; its entries are {', '.join(_CLIP_KEYS)}"
            )
    if not number().ok(value["max_norm"]):
        return f"{key}: max_norm must be a positive number, not {show(value['max_norm'])}"
    norm_type = value.get("norm_type", 2)
    if not (is_number(norm_type) and (norm_type > 0 or norm_type == math.inf)):
        return f"{key}: norm_type must be a positive number or inf, not {show(norm_type)}"
    return None


_BOUND = r"\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*|\s*[-+]?inf\s*"
_INTERVAL = re.compile(rf"^\s*[\[(]({_BOUND}),({_BOUND})[\])]\s*$", re.ASCII)


def _explain_interval(key: str, value: Any) -> str | None:
    if value is None:
        return None
    # "--x=[5,10]" parses as a list, which RecBole reads back through str() as "[5, 10]".
    shown = str(value) if isinstance(value, list) else value
    if (
        isinstance(shown, str)
        and shown.strip()
        and all(_INTERVAL.match(part) for part in shown.split(";"))
    ):
        return None
    return (
        f"{key} must be ~ or intervals such as '[5,inf)' (several joined by ';'), not {show(value)}"
    )


def _explain_load_col(key: str, value: Any) -> str | None:
    if value is None:
        return None
    # A file missing from the dict loads no column; '*' loads them all.
    if (
        isinstance(value, dict)
        and "inter" in value
        and all(
            cols == "*" or (isinstance(cols, list) and all(isinstance(c, str) for c in cols))
            for cols in value.values()
        )
    ):
        return None
    return (
        f"{key} must be ~ (all columns) or a dict of file suffix -> column list (or '*') with "
        f"an inter entry, such as {{inter: [user_id, item_id, timestamp]}}, not {show(value)}"
    )


def _explain_threshold(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict) and all(is_number(v) and finite(v) for v in value.values()):
        return None
    return f"{key} must be ~ or a dict of field -> number such as {{rating: 4}}, not {show(value)}"


def _explain_benchmark_filename(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return None
    return (
        f"{key} must be ~ or a list of file suffixes such as [train, valid, test], "
        f"not {show(value)}"
    )


_PROB = probability()

#: key -> rule for every model. RecBole's keys first (in overall.yaml's order), then its common
#: model keys, then this package's sequential keys.
COMMON_RULES: dict[str, Rule] = {
    # environment
    "gpu_id": structured("GPU indices such as 0 or 0,1, or '' for the CPU", _explain_gpu_id),
    "device": Rule(
        "fixed",
        "not settable (RecBole picks it from gpu_id)",
        lambda v: False,
        explain=_explain_device,
    ),
    "use_gpu": boolean(),
    "worker": integer(lo=0),
    "seed": integer(lo=0, hi=SEED_MAX),
    "state": one_of("INFO", "DEBUG", "WARNING", "ERROR", "CRITICAL", none=True, ignore_case=True),
    "reproducibility": boolean(),
    "data_path": text(),
    "checkpoint_dir": text(),
    "show_progress": boolean(),
    "save_dataset": boolean(),
    "dataset_save_path": text(none=True),
    "save_dataloaders": boolean(),
    "dataloaders_save_path": text(none=True),
    "log_wandb": boolean(),
    "wandb_project": text(),
    "shuffle": boolean(),
    # distributed training
    "ddp_backend": one_of(*BACKENDS, none=True),
    "ddp_timeout": integer(),
    # training
    "epochs": integer(lo=0),  # 0: evaluate the initial model (FLAME: a given frozen network)
    "train_batch_size": integer(),
    "learner": one_of(
        "adam", "adamw", "sgd", "adagrad", "rmsprop", "sparse_adam", ignore_case=True
    ),
    "learning_rate": number(),
    "train_neg_sample_args": structured(
        "~ or a dict such as {distribution: uniform, sample_num: 1}", _explain_train_neg_sample_args
    ),
    "eval_step": integer(lo=0),
    "stopping_step": integer(lo=0),
    "clip_grad_norm": structured("~ or a dict such as {max_norm: 5}", _explain_clip_grad_norm),
    "weight_decay": number(strict=False),
    "loss_decimal_place": integer(lo=0),
    "require_pow": boolean(),
    "enable_amp": boolean(),
    "amp_dtype": one_of(*AMP_DTYPES, none=True),
    "enable_scaler": boolean(),
    "transform": one_of(
        "mask_itemseq",
        "inverse_itemseq",
        "crop_itemseq",
        "reorder_itemseq",
        "user_defined",
        none=True,
    ),
    # evaluation
    "eval_args": structured("a dict with split, group_by, order and mode", _explain_eval_args),
    "repeatable": boolean(),
    "metrics": structured("a non-empty list of RecBole metric names", _explain_metrics),
    "topk": int_list(scalar=True),
    "valid_metric": text(),
    "valid_metric_bigger": boolean(),
    "eval_batch_size": integer(),
    "metric_decimal_place": integer(lo=0),
    # data
    "USER_ID_FIELD": text(none=True),
    "ITEM_ID_FIELD": text(none=True),
    "RATING_FIELD": text(none=True),
    "TIME_FIELD": text(none=True),
    "load_col": structured("~ or a dict of file suffix -> column list", _explain_load_col),
    "threshold": structured("~ or a dict of field -> number", _explain_threshold),
    "user_inter_num_interval": structured("~ or intervals such as '[5,inf)'", _explain_interval),
    "item_inter_num_interval": structured("~ or intervals such as '[5,inf)'", _explain_interval),
    "benchmark_filename": structured("~ or a list of file suffixes", _explain_benchmark_filename),
    "MAX_ITEM_LIST_LENGTH": integer(),
    # RecBole's transformer models (SASRec, BERT4Rec, ...) and most others
    "embedding_size": integer(),
    "hidden_size": integer(),
    "inner_size": integer(),
    "n_layers": integer(lo=0),  # 0 is legitimate for graph models (LightGCN without propagation)
    "n_heads": integer(),
    "hidden_dropout_prob": _PROB,
    "attn_dropout_prob": _PROB,
    "dropout_prob": _PROB,
    "hidden_act": one_of("gelu", "relu", "swish", "tanh", "sigmoid"),
    "layer_norm_eps": number(),
    "initializer_range": number(strict=False),
    # this package: every sequential model
    "train_mode": one_of(*TRAIN_MODES),
    "dense_windows": one_of(*DENSE_WINDOWS),
    "dense_min_context": integer(),
    "position_alignment": one_of(*POSITION_ALIGNMENTS),
    "history_limit": integer(none=True),
    "eval_exclude_history": boolean(),
    "eval_item_chunk": integer(none=True),
    "attention_impl": one_of(*ATTENTION_IMPLS),
    "sequence_packing": boolean(none=True),
    "prefix_loader": one_of(*PREFIX_LOADERS, none=True),
}


# --- checks across keys ---------------------------------------------------------------------
def _is_sequential(settings: Mapping[str, Any]) -> bool:
    from recbole.utils import ModelType

    return settings.get("MODEL_TYPE") == ModelType.SEQUENTIAL


def _metric_kinds(settings: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(ranking metrics, value metrics) of ``metrics``, as given."""
    from recbole.utils import EvaluatorType

    metrics = settings.get("metrics")
    metrics = [metrics] if isinstance(metrics, str) else list(metrics or [])
    types = _metric_names()
    ranking = [m for m in metrics if types[m.lower()] == EvaluatorType.RANKING]
    value = [m for m in metrics if types[m.lower()] == EvaluatorType.VALUE]
    return ranking, value


def _check_metric_mix(settings: Mapping[str, Any], model_class: Any) -> str | None:
    ranking, value = _metric_kinds(settings)
    if ranking and value:
        return (
            f"metrics mixes ranking metrics ({', '.join(ranking)}) with value metrics "
            f"({', '.join(value)}); RecBole evaluates one kind per run"
        )
    modes = settings.get("eval_args", {}).get("mode", "full")
    modes = modes.values() if isinstance(modes, dict) else [modes]
    if value and "full" in modes:
        return (
            f"metrics {', '.join(value)} are value metrics: they need eval_args mode: labeled "
            "(full ranking gives no per-pair scores)"
        )
    return None


def _check_valid_metric(settings: Mapping[str, Any], model_class: Any) -> str | None:
    metrics = settings["metrics"]
    metrics = [metrics] if isinstance(metrics, str) else metrics
    topk = settings["topk"]
    topk = [topk] if isinstance(topk, int) else topk
    with_k = _topk_metrics()
    allowed = []
    for m in metrics:
        if m.lower() in with_k:
            allowed += [f"{m}@{k}" for k in topk]
        else:
            allowed.append(m)
    valid = settings["valid_metric"]
    # RecBole looks the metric up lower-cased.
    if valid.lower() in {a.lower() for a in allowed}:
        return None
    shown = ", ".join(allowed[:12]) + (", ..." if len(allowed) > 12 else "")
    return f"valid_metric must be one of metrics@topk ({shown}), not {show(valid)}"


def _check_sequential(settings: Mapping[str, Any], model_class: Any) -> str | None:
    if not _is_sequential(settings):
        return None
    if settings.get("repeatable") is False:
        return "repeatable must be True for sequential models (RecBole evaluates them only so)"
    neg = settings.get("train_neg_sample_args")
    sampling = isinstance(neg, dict) and neg.get("distribution", "uniform") not in (
        None,
        "none",
        "None",
    )
    # RecBole refuses this pair (a bare ValueError) unless the model declares its input type.
    if sampling and settings.get("loss_type") == "CE" and not hasattr(model_class, "input_type"):
        return (
            f"train_neg_sample_args must be ~ with loss_type: CE (the CE loss scores every "
            f"item, so no negatives are sampled), not {show(neg)}"
        )
    return None


def _check_transformer(settings: Mapping[str, Any], model_class: Any) -> str | None:
    # RecBole's transformer models (SASRec, BERT4Rec, FLAME, ...: the ones with an inner_size)
    # split hidden_size into n_heads heads and read the last of n_layers blocks.
    if "inner_size" not in settings:
        return None
    hidden, heads = settings.get("hidden_size"), settings.get("n_heads")
    if is_int(hidden) and is_int(heads) and hidden % heads:
        return f"hidden_size ({hidden}) must be a multiple of n_heads ({heads})"
    if settings.get("n_layers") == 0:
        return "n_layers must be a positive integer for a transformer model, not 0"
    return None


#: Run after every key passed its own rule, so they may assume well-typed values.
CROSS_CHECKS: tuple[Callable[[Mapping[str, Any], Any], str | None], ...] = (
    _check_metric_mix,
    _check_valid_metric,
    _check_sequential,
    _check_transformer,
)


# --- entry points ---------------------------------------------------------------------------
def rules_for(model_class: Any) -> dict[str, Rule]:
    """The rules that apply to ``model_class``: :data:`COMMON_RULES`, with the model's own
    ``key_rules`` (its keys, and any common key it narrows) over them."""
    return {**COMMON_RULES, **capability(model_class, "key_rules")}


@dataclass(frozen=True)
class Entry:
    """One row of the table of checks: ``key``'s ``rule``, and the models it applies to
    (None: every model)."""

    key: str
    rule: Rule
    models: tuple[str, ...] | None


def _same(a: Rule, b: Rule) -> bool:
    # Rules hold functions, so equal declarations in two models compare by what they allow.
    fields = ("kind", "allowed", "choices", "lo", "hi", "none")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


def rule_table() -> list[Entry]:
    """Every rule this package checks: the common ones, then each model's own (the models of
    this package through the registry; one row for a key that several models declare alike),
    sorted by key within each part."""
    from recbole_flame.utils.registry import available_models, get_model

    rows = [Entry(key, rule, None) for key, rule in sorted(COMMON_RULES.items())]
    own: list[Entry] = []
    for name in available_models()[0]:
        for key, rule in sorted(capability(get_model(name), "key_rules").items()):
            twin = next((e for e in own if e.key == key and _same(e.rule, rule)), None)
            if twin is None:
                own.append(Entry(key, rule, (name,)))
            else:
                own[own.index(twin)] = Entry(key, twin.rule, (*twin.models, name))
    return rows + sorted(own, key=lambda e: (e.key, e.models))


def check_value(key: str, value: Any, model_class: Any) -> None:
    """Raise ConfigError if ``value`` is not allowed for ``key`` under ``model_class`` (keys
    without a rule are allowed anything)."""
    rule = rules_for(model_class).get(key)
    if rule is not None:
        problem = rule.problem(key, value)
        if problem is not None:
            raise ConfigError(problem)


def check_config_values(settings: Mapping[str, Any], model_class: Any) -> None:
    """Raise ConfigError on the first key of ``settings`` (merged, before RecBole's
    post-processing) whose value its rule refuses, then on keys that do not fit together.
    ``model_class`` is the model's class (its ``key_rules``; RecBole's checks depend on its
    ``input_type``)."""
    for key, rule in rules_for(model_class).items():
        if key in settings:
            problem = rule.problem(key, settings[key])
            if problem is not None:
                raise ConfigError(problem)
    for cross in CROSS_CHECKS:
        problem = cross(settings, model_class)
        if problem is not None:
            raise ConfigError(problem)


# --- unknown keys -----------------------------------------------------------------------------
# Keys RecBole 1.2.1 or this package read (or set) that no yaml file defaults.
_RUNTIME_KEYS = frozenset(
    """
    model dataset config_file config_files MODEL_TYPE MODEL_INPUT_TYPE eval_type device
    local_rank single_spec world_size nproc offset ip port verbose valid_neg_sample_args
    test_neg_sample_args CROP_ITEM_SEQ CROP_ITEM_SEQ_LEN INVERSE_ITEM_SEQ MASK_INDEX
    MASK_ITEM_SEQ NEG_ITEMS POS_ITEMS REORDER_ITEM_SEQ cin contrast encoding eta feature_num
    has_residual norm sim tail_ratio token_num_threshold use_filter xgb_early_stopping_rounds
    """.split()
)
# The CLI's own options: a misspelt one (--trails=8) arrives as a config key.
_CLI_OPTIONS = frozenset(
    """
    model dataset config_files hyper trials cpus_per_trial gpus_per_trial max_concurrent
    ray_address output_dir name resume seeds group_offset
    """.split()
)
MIN_SUGGEST_LENGTH = 4  # shorter keys sit one edit from too many others to suggest anything


@lru_cache(maxsize=1)
def known_keys() -> frozenset[str]:
    """Every key a RecBole or recbole_flame yaml defaults, every key with a rule, the keys
    RecBole sets or reads without a default, and the CLI's options."""
    import recbole

    from recbole_flame.utils.paths import properties_dir

    keys = {e.key for e in rule_table()} | _RUNTIME_KEYS | _CLI_OPTIONS
    for folder in (Path(recbole.__file__).parent / "properties", properties_dir()):
        for path in folder.rglob("*.yaml"):
            if "url" in path.stem:
                continue  # url.yaml and kg_url.yaml map dataset names to downloads, not keys
            try:
                loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (yaml.YAMLError, OSError, UnicodeDecodeError):
                continue  # a broken shipped file is not the user's typo
            if isinstance(loaded, dict):
                keys.update(k for k in loaded if isinstance(k, str))
    return frozenset(keys)


def _one_edit(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` differ by at most one insertion, deletion, substitution or
    swap of two neighbours (optimal string alignment distance <= 1)."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        if len(diff) == 1:
            return True
        i = diff[0]
        return len(diff) == 2 and diff[1] == i + 1 and a[i] == b[i + 1] and a[i + 1] == b[i]
    short, long = (a, b) if len(a) < len(b) else (b, a)
    i = 0
    while i < len(short) and short[i] == long[i]:
        i += 1
    return short[i:] == long[i + 1 :]


def suggestions(key: str, known: Iterable[str]) -> list[str]:
    """Known keys equal to ``key`` up to case or one edit (case-insensitive), closest first."""
    low = key.lower()
    same_case = sorted(k for k in known if k.lower() == low and k != key)
    near = sorted(k for k in known if k.lower() != low and _one_edit(low, k.lower()))
    return same_case + near


def check_user_keys(user_keys: Iterable[Any], extra_known: Iterable[str] = ()) -> None:
    """Raise ConfigError on a key the user gave that is not a name, or that is unknown and
    one edit (or a case change) away from a known key: RecBole would silently ignore it."""
    known = known_keys() | set(extra_known)
    for key in user_keys:
        if isinstance(key, str) and "-" in key and key.replace("-", "_") in known:
            raise ConfigError(
                f"unknown config key '{key}': did you mean '{key.replace('-', '_')}'? (config "
                "keys use underscores: --train_batch_size=256)"
            )
        if not isinstance(key, str) or not key.isidentifier():
            raise ConfigError(
                f"config key {show(key)} is not a key name (letters, digits and _); check the "
                "config file or --key=value argument"
            )
        if key in known or len(key) < MIN_SUGGEST_LENGTH:
            continue
        near = suggestions(key, known)
        if near:
            raise ConfigError(
                f"unknown config key '{key}': did you mean {' or '.join(map(repr, near[:3]))}? "
                "(a misspelt key would be ignored)"
            )
