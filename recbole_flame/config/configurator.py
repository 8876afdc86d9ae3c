"""RecBole's Config, resolving model names through this package's registry and overlaying its yaml.

Precedence, lowest first: RecBole's defaults (overall, model, dataset and model-type files), this
package's keys for every model ``properties/overall.yaml`` (under RecBole's, where both set a key),
for this package's ranking models the evaluation profile ``properties/profile/evaluation.yaml``, this
package's ``properties/model/<Model>.yaml`` then ``properties/dataset/<dataset>.yaml``, config
files, ``config_dict``, command-line ``--key=value`` arguments. A dataset with no yaml of its own
and no ``load_col`` given loads every column of its atomic files (``load_col: None``).
"""

from __future__ import annotations

import ast
import contextlib
import copy
import functools
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import recbole
import yaml
from recbole.config import Config as RecBoleConfig
from recbole.utils import ModelType

from recbole_flame.config.checks import check_config_values, check_user_keys
from recbole_flame.model.capabilities import capability
from recbole_flame.utils import distributed
from recbole_flame.utils.errors import ConfigError
from recbole_flame.utils.paths import dataset_yaml_files, profile_file, properties_dir
from recbole_flame.utils.registry import available_models, canonical_model_name, get_model

_NONE_WORDS = {"none", "null", "~"}
# Several of RecBole's intervals joined by ';' ("[5,inf);(0,2]"): yaml would read a list.
_INTERVALS = re.compile(r"^[\[(][^;\[\]()]*[\])](\s*;\s*[\[(][^;\[\]()]*[\])])+$")
_CPU_WARNED: list[bool] = []  # the no-CUDA warning is printed once per process
# Made absolute at config time, so a run that changes directory (a Ray trial) still finds them.
PATH_KEYS = ("data_path", "checkpoint_dir", "frozen_checkpoint", "stage1_cache_dir")


def absolute_paths(overrides: dict[str, Any], config_files: Sequence[str]) -> tuple[dict, list]:
    """``overrides`` with its path-valued settings (:data:`PATH_KEYS`) and ``config_files`` made
    absolute here, before a run moves to another folder (a Ray trial, an engine's run)."""
    fixed = dict(overrides)
    for key in PATH_KEYS:
        if isinstance(fixed.get(key), str):
            fixed[key] = os.path.abspath(fixed[key])
    return fixed, [os.path.abspath(f) for f in config_files]


@contextlib.contextmanager
def visible_devices_kept() -> Iterator[None]:
    """RecBole's Config sets ``CUDA_VISIBLE_DEVICES`` from ``gpu_id`` (a run's process sees its
    GPUs only); a Config built to check settings (a search's pre-flight before Ray counts the
    GPUs, a model loaded for inference) must leave this process's GPUs as they were."""
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def parse_value(text: str) -> Any:
    """A command-line or tuning value as Python data, by literal parsing only (never ``eval``):
    numbers, booleans, None, lists, dicts; ``[DCNV2, DeepFM]`` (bare words) parses as yaml;
    anything else stays a string."""
    stripped = text.strip()
    low = stripped.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in _NONE_WORDS:
        return None
    try:
        return ast.literal_eval(stripped)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    if stripped[:1] in "[{" and not _INTERVALS.match(stripped):
        try:
            return yaml.safe_load(stripped)
        except yaml.YAMLError:
            pass
    return text


def parse_cmd_args(args: Sequence[str]) -> dict[str, Any]:
    """``['--epochs=5', '--topk=[10,20]']`` -> ``{'epochs': 5, 'topk': [10, 20]}``; the
    space form (``['--epochs', '5']``) reads the same, as for --model and --dataset."""
    parsed: dict[str, Any] = {}
    args = list(args)
    joined = []
    i = 0
    while i < len(args):
        arg = args[i]
        value_next = i + 1 < len(args) and not args[i + 1].startswith("--")
        if arg.startswith("--") and "=" not in arg and len(arg) > 2 and value_next:
            joined.append(f"{arg}={args[i + 1]}")
            i += 2
        else:
            joined.append(arg)
            i += 1
    for arg in joined:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(
                f"argument '{arg}' is not of the form --key=value (write e.g. --epochs=5)"
            )
        key, value = arg[2:].split("=", 1)
        if not key:
            raise ConfigError(f"argument '{arg}' has an empty key (write e.g. --epochs=5)")
        parsed[key] = parse_value(value)
    return parsed


@functools.lru_cache(maxsize=256)
def _read_defaults(path: str, mtime_ns: int, size: int, loader: type) -> dict[str, Any] | None:
    """A shipped defaults yaml, parsed once per version of the file: parsing RecBole's yaml
    files is nearly all the time a Config takes, and tuning, comparisons and tests build many.
    """
    with open(path, encoding="utf-8") as f:
        return yaml.load(f.read(), Loader=loader)


class Config(RecBoleConfig):
    """A RecBole ``Config`` for this package's models and RecBole's.

    Unlike RecBole's, it does not read ``sys.argv`` on its own: pass command-line overrides as
    ``cmd_args`` (the CLI does). Path-valued keys (``data_path``, ``checkpoint_dir``, ...) are
    made absolute, so a run that changes directory (a Ray Tune trial) still finds them.
    """

    def __init__(
        self,
        model: str | type | None = None,
        dataset: str | None = None,
        config_file_list: Sequence[str] | None = None,
        config_dict: dict[str, Any] | None = None,
        cmd_args: Sequence[str] | None = None,
    ) -> None:
        self._cmd_args = list(cmd_args or [])
        super().__init__(
            model=model,
            dataset=dataset,
            config_file_list=list(config_file_list) if config_file_list else None,
            config_dict=dict(config_dict) if config_dict else None,
        )

    # --- external input -------------------------------------------------------------------
    def _convert_config_dict(self, config_dict: dict[str, Any]) -> dict[str, Any]:
        return {k: parse_value(v) if isinstance(v, str) else v for k, v in config_dict.items()}

    def _load_config_files(self, file_list: Sequence[str] | None) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for file in file_list or []:
            if not os.path.isfile(file):
                raise ConfigError(f"config file '{file}' does not exist; check the path")
            try:
                with open(file, encoding="utf-8") as f:
                    content = f.read()
            except UnicodeDecodeError as exc:
                raise ConfigError(
                    f"config file '{file}' is not a text file (not UTF-8); expected a yaml "
                    "file of key: value lines"
                ) from exc
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                raise ConfigError(f"config file '{file}' cannot be read: {reason}") from exc
            try:
                loaded = yaml.load(content, Loader=self.yaml_loader)
            # yaml's constructors raise ValueError too (an int past Python's digit limit).
            except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ConfigError(f"config file '{file}' is not valid yaml: {first}") from exc
            if loaded is None:
                continue
            if not isinstance(loaded, dict):
                raise ConfigError(f"config file '{file}' must hold a mapping of key: value")
            merged.update(loaded)
        return merged

    def _load_cmd_line(self) -> dict[str, Any]:
        return parse_cmd_args(self._cmd_args)

    # --- model and defaults ---------------------------------------------------------------
    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise ConfigError("no model given: pass --model=NAME (or model: in a config file)")
        if isinstance(model, str):
            model_name = canonical_model_name(model)
            model_class = get_model(model_name)
        else:
            model_class, model_name = model, model.__name__
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
            if dataset is None:
                raise ConfigError("no dataset given: pass --dataset=NAME")
        return model_name, model_class, dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        props = properties_dir()
        # this package's keys for every model; never over a key RecBole's files already set
        overall = self._read_yaml(props / "overall.yaml")
        for key, value in overall.items():
            self.internal_config_dict.setdefault(key, value)
        profile_keys = None
        if capability(model_class, "uses_evaluation_profile"):
            profile_keys = self._update_internal_config_dict(profile_file("evaluation"))
        model_keys = self._update_internal_config_dict(
            props / "model" / f"{model}.yaml", must_exist=False
        )
        dataset_keys = self._update_internal_config_dict(
            props / "dataset" / f"{dataset}.yaml", must_exist=False
        )
        self._our_yaml_keys = (
            set(profile_keys or ()) | set(model_keys or ()) | set(dataset_keys or ())
        )
        if dataset_keys:
            self.parameters["Dataset"] = self.parameters["Dataset"] + [
                k for k in dataset_keys if k not in self.parameters["Dataset"]
            ]

    def _read_yaml(self, file) -> dict[str, Any]:
        """A packaged yaml file's key: value pairs, as a copy of its cached parse."""
        stat = os.stat(file)
        loaded = _read_defaults(
            os.path.realpath(file), stat.st_mtime_ns, stat.st_size, self.yaml_loader
        )
        return copy.deepcopy(loaded or {})

    def model_yaml_defaults(self, model: str) -> dict[str, Any]:
        """The model file defaults a standalone run of ``model`` reads, lowest first: RecBole's
        ``properties/model/<model>.yaml``, then this package's (CETNet configures each of its
        base models with them). A copy: the caller may change it."""
        merged: dict[str, Any] = {}
        for folder in (Path(recbole.__file__).parent / "properties", properties_dir()):
            path = folder / "model" / f"{model}.yaml"
            if path.is_file():
                merged.update(self._read_yaml(path))
        return merged

    def _update_internal_config_dict(self, file, must_exist: bool = True):
        if not must_exist and not os.path.isfile(file):
            return None
        loaded = self._read_yaml(file)
        if not loaded:
            return None
        # A copy (of the cached parse) goes in: RecBole fills defaults into nested dicts
        # (train_neg_sample_args) in place.
        self.internal_config_dict.update(loaded)
        return copy.deepcopy(loaded)

    def _get_final_config_dict(self):
        final = super()._get_final_config_dict()
        # RecBole's sequential models default to the CE loss but its overall.yaml turns negative
        # sampling on, which RecBole then rejects; CE needs none, so default it off.
        if (
            final.get("MODEL_TYPE") == ModelType.SEQUENTIAL
            and final.get("loss_type") == "CE"
            and "train_neg_sample_args" not in self.external_config_dict
            and not self._our_yaml_sets("train_neg_sample_args")
        ):
            final["train_neg_sample_args"] = None
        # A dataset with no yaml of its own (ours or RecBole's) would get RecBole's sample.yaml
        # load_col, user and item ids only, which drops the time column every sequential model
        # sorts by. Load every column of its atomic files instead, unless the user chose.
        if "load_col" not in self.external_config_dict and not dataset_yaml_files(self.dataset):
            final["load_col"] = None
        return final

    def _resolve_packing(self) -> None:
        """``sequence_packing: ~`` becomes True for a model whose packed loss is exact
        (``supports_packing``, see model/layers/packing.py) and False for the others; an
        explicit True for a model that cannot pack is one line naming those that can."""
        final = self.final_config_dict
        supported = capability(self.model_class, "supports_packing")
        if final["sequence_packing"] is None:
            final["sequence_packing"] = supported
        elif final["sequence_packing"] and not supported:
            capable = [
                name
                for name in available_models()[0]
                if capability(get_model(name), "supports_packing")
            ]
            raise ConfigError(
                f"sequence_packing: True is available for {', '.join(capable)} only, not "
                f"{self.model}; remove it or set sequence_packing: False"
            )

    def _init_device(self) -> None:
        final = self.final_config_dict
        if "local_rank" in final:
            # One process of a distributed run (set by utils.distributed.launch): RecBole's
            # setup hard-codes the nccl backend; this one takes ddp_backend and a timeout.
            gpu_id = final["gpu_id"]
            if isinstance(gpu_id, tuple):
                gpu_id = ",".join(map(str, gpu_id))
            final["gpu_id"] = str(gpu_id)
            os.environ["CUDA_VISIBLE_DEVICES"] = final["gpu_id"]
            distributed.init_process(final)
        else:
            super()._init_device()
        # RecBole's overall.yaml says use_gpu: True whatever the machine has; say what runs.
        final["use_gpu"] = final["device"].type == "cuda"
        asked = self.external_config_dict.get("gpu_id")
        if asked not in (None, "") and not final["use_gpu"] and not _CPU_WARNED:
            _CPU_WARNED.append(True)  # comparisons and searches build many configs
            print(
                f"warning: gpu_id={asked} was given but CUDA is not available here: this run "
                "is on the CPU",
                file=sys.stderr,
            )

    def _our_yaml_sets(self, key: str) -> bool:
        return key in getattr(self, "_our_yaml_keys", set())

    def _set_default_parameters(self):
        # RecBole's post-processing (super) raises bare exceptions on some bad values and lets
        # the others through to fail after the data loads: check every value here first.
        check_user_keys(self.external_config_dict, extra_known=self.internal_config_dict)
        check_config_values(self.final_config_dict, self.model_class)
        max_len = self.final_config_dict.get("MAX_ITEM_LIST_LENGTH")
        if isinstance(max_len, int) and self.final_config_dict["dense_min_context"] > max_len:
            raise ConfigError(
                f"dense_min_context={self.final_config_dict['dense_min_context']} exceeds "
                f"MAX_ITEM_LIST_LENGTH={max_len}; use a value from 1 to {max_len}"
            )
        self._resolve_packing()
        super()._set_default_parameters()
        for key in PATH_KEYS:
            value = self.final_config_dict.get(key)
            if isinstance(value, str):
                self.final_config_dict[key] = os.path.abspath(value)
