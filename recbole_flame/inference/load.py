"""Rebuild a trained run from its checkpoint: config, inference network and data.

RecBole's ``load_data_and_model`` unpickles a whole ``Config`` (refused by torch >= 2.6's safe
loader), finds only RecBole's own models and loads onto the device the checkpoint was written
on. Here the checkpoint's ``rebuild`` record (plain data: model, dataset, the settings the run
was given, a fingerprint of the id vocabulary; see :mod:`recbole_flame.inference.record`) is
enough to build a fresh :class:`~recbole_flame.config.Config`, the dataset and its splits as the
run made them, and the network, on the CPU or any chosen device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.utils import ModelType, init_seed

from recbole_flame.inference.record import (
    LEFT_OUT,
    REBUILD_VERSION,
    data_fingerprint,
)
from recbole_flame.utils.checkpoint import first_mismatch, load_checkpoint
from recbole_flame.utils.errors import CheckpointError, DatasetNotFoundError, UserError


@dataclass
class History:
    """Every interaction of the dataset (after its filters and ``history_limit``, before the
    split), ordered by user then time as RecBole orders a sequential dataset: "everything we
    know" about each user. ``bounds[u]:bounds[u + 1]`` are user ``u``'s rows."""

    inter: Interaction
    bounds: np.ndarray

    def rows(self, user: int) -> slice:
        return slice(int(self.bounds[user]), int(self.bounds[user + 1]))

    def count(self, user: int) -> int:
        return int(self.bounds[user + 1] - self.bounds[user])


@dataclass
class LoadedModel:
    """A trained run rebuilt by :func:`load_model`.

    ``model`` is the network that scores (FLAME: its learnable SASRec alone), in eval mode on
    ``device``; ``model_name`` the run's model. ``dataset`` is the whole dataset as the run
    built it (ids remapped the same way), ``splits`` its train, valid and test loaders, and
    ``history`` every interaction by user and time."""

    path: str
    config: Any
    model: torch.nn.Module
    model_name: str
    dataset: Any
    history: History
    splits: tuple
    checkpoint: dict[str, Any] = field(repr=False)

    @property
    def model_type(self) -> ModelType:
        return self.config["MODEL_TYPE"]

    @property
    def device(self) -> torch.device:
        return self.config["device"]

    @property
    def uid_field(self) -> str:
        return self.dataset.uid_field

    @property
    def iid_field(self) -> str:
        return self.dataset.iid_field

    @property
    def n_items(self) -> int:
        return int(self.dataset.item_num)


def _device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device that exists here; one line if it does not."""
    try:
        chosen = torch.device(device or "cpu")
    except (RuntimeError, TypeError) as exc:
        raise UserError(
            f"device '{device}' is not a torch device (cpu, cuda, cuda:1, ...)"
        ) from exc
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device '{device}' asked for, but CUDA is not available here; use cpu")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise UserError(
                f"device '{device}' asked for, but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return chosen


def rebuild_entry(checkpoint: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's ``rebuild`` record, checked; one line when it is missing or unreadable."""
    record = checkpoint.get("rebuild")
    if record is None:
        raise CheckpointError(
            f"checkpoint '{path}' has no 'rebuild' record (model, dataset and settings), so it "
            "cannot be rebuilt: it was written before recbole_flame could load models; train it "
            "again with this version (its 'config' is kept for provenance only)"
        )
    needed = ("version", "model", "network", "dataset", "settings")
    if not isinstance(record, dict) or any(k not in record for k in needed):
        raise CheckpointError(
            f"checkpoint '{path}' has a 'rebuild' record without {', '.join(needed)}; it is not "
            "a model file written by recbole_flame"
        )
    if not isinstance(record["version"], int) or record["version"] > REBUILD_VERSION:
        raise CheckpointError(
            f"checkpoint '{path}' was written by a newer recbole_flame (rebuild record version "
            f"{record['version']}; this one reads up to {REBUILD_VERSION}); upgrade recbole_flame"
        )
    return record


def _settings(
    record: dict[str, Any],
    device: torch.device,
    data_path: str | os.PathLike | None,
    overrides: dict[str, Any] | None,
) -> dict[str, Any]:
    settings = {k: v for k, v in dict(record["settings"]).items() if k not in LEFT_OUT}
    if data_path is not None:
        settings["data_path"] = str(data_path)
    # Built for the CPU; the device is set once the config exists (gpu_id would rewrite
    # CUDA_VISIBLE_DEVICES and pick the device from it).
    settings.update({"gpu_id": "", "use_gpu": False, "state": "WARNING", "show_progress": False})
    if device.type != "cuda" and settings.get("ssd_backend") == "kernel":
        # TiM4Rec's CUDA kernel and its PyTorch path share the weights (tested in test_tim4rec)
        settings["ssd_backend"] = "auto"
    settings.update(overrides or {})
    return settings


def _provide(config: Any, path: str | os.PathLike) -> None:
    """The run's dataset at ``data_path``, or one line naming the checkpoint and the dataset."""
    from recbole_flame.data.datasets import dataset_source, provide_dataset

    try:
        dataset_source(config)  # on disk, bundled with this package, or in RecBole's list
    except DatasetNotFoundError:
        pass
    else:
        provide_dataset(config)
        return
    name = config["dataset"]
    folder = Path(config["data_path"]).parent
    raise DatasetNotFoundError(
        f"checkpoint '{path}' was trained on dataset '{name}', which is not in {folder} (no "
        f"{name}/{name}.inter there); give the folder that holds {name}/ as data_path "
        "(--data_path=DIR)"
    )


def _check_same_data(record: dict[str, Any], dataset: Any, path: str | os.PathLike) -> None:
    """The dataset maps every user and item token to the id it had at training time."""
    then = record.get("data") or {}
    now = data_fingerprint(dataset) or {}
    for kind in ("users", "items"):
        was, is_ = then.get(kind), now.get(kind)
        if not was or not is_ or was == is_:
            continue
        detail = (
            f"{is_['count']} {kind} now, {was['count']} at training time"
            if was["count"] != is_["count"]
            else f"the same {was['count']} {kind}, but in another id order"
        )
        raise CheckpointError(
            f"checkpoint '{path}': dataset '{dataset.dataset_name}' at "
            f"{dataset.config['data_path']} is not the data it was trained on ({detail}); give "
            "the same files and settings"
        )


def known_history(dataset: Any) -> History:
    """Every interaction of ``dataset`` (still a DataFrame: before ``data_preparation``) by user
    then time, with RecBole's stable tie order (see :class:`History`)."""
    inter = dataset._dataframe_to_interaction(dataset.inter_feat)
    by = [dataset.uid_field]
    if dataset.time_field and dataset.time_field in inter:
        by.append(dataset.time_field)
    inter.sort(by=by)  # stable, last key first: RecBole's own order for sequences
    uids = inter[dataset.uid_field].numpy()
    bounds = np.searchsorted(uids, np.arange(dataset.user_num + 1), side="left")
    return History(inter=inter, bounds=bounds)


def _network_state(
    record: dict[str, Any], checkpoint: dict[str, Any]
) -> tuple[str, dict[str, torch.Tensor]]:
    """The class to build and its weights: FLAME's learnable SASRec alone (inference runs
    nothing else), any other network as saved."""
    weights = checkpoint["state_dict"]
    if record["network"] == "FLAME":
        prefix = "learnable."
        return "SASRec", {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    return record["network"], weights


def load_model(
    path: str | os.PathLike,
    device: str | torch.device | None = "cpu",
    data_path: str | os.PathLike | None = None,
    config_dict: dict[str, Any] | None = None,
) -> LoadedModel:
    """Rebuild the run that wrote checkpoint ``path`` (a file of this package's trainer: best
    model, ``-last.pth`` or a FLAME stage 1) on ``device``, whatever device it was trained on.

    ``data_path``: where the dataset's folder is now (default: where the run found it).
    ``config_dict``: settings to change that do not change the model (``eval_batch_size``, ...).
    A file that is not such a checkpoint, a dataset that is not found or not the same data
    raise a :class:`~recbole_flame.utils.errors.UserError` with one line naming it."""
    from recbole.data import create_dataset, data_preparation

    from recbole_flame.config import Config
    from recbole_flame.config.configurator import visible_devices_kept
    from recbole_flame.data import apply_history_limit
    from recbole_flame.utils.registry import get_model

    chosen = _device(device)
    checkpoint = load_checkpoint(path, map_location="cpu")
    record = rebuild_entry(checkpoint, path)
    settings = _settings(record, chosen, data_path, config_dict)
    with visible_devices_kept():
        config = Config(record["model"], record["dataset"], config_dict=settings)
    config["device"] = chosen
    config["use_gpu"] = chosen.type == "cuda"
    _provide(config, path)

    # The same seed as the run's: a random ordering (eval_args order RO) shuffles before it
    # splits, and the splits must be the run's.
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    if config["history_limit"]:
        apply_history_limit(dataset, config["history_limit"])
    _check_same_data(record, dataset, path)
    history = known_history(dataset)
    splits = tuple(data_preparation(config, dataset))

    network, weights = _network_state(record, checkpoint)
    net = get_model(network)(config, splits[0]._dataset)
    problem = first_mismatch(net, weights)
    if problem is not None:
        raise CheckpointError(f"checkpoint '{path}' does not fit a {network}: {problem}")
    net.load_state_dict(weights)
    if network == record["network"]:
        net.load_other_parameter(checkpoint.get("other_parameter"))
    net = net.to(chosen).eval()
    return LoadedModel(
        path=str(path),
        config=config,
        model=net,
        model_name=record["model"],
        dataset=dataset,
        history=history,
        splits=splits,
        checkpoint={k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer")},
    )
