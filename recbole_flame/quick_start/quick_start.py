"""Train and evaluate one model on one dataset, as RecBole's ``run_recbole`` does."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from logging import getLogger
from typing import Any

from recbole.data import create_dataset, data_preparation
from recbole.utils import init_logger, init_seed

from recbole_flame.config import Config
from recbole_flame.data import apply_history_limit, dense_train_dataloader
from recbole_flame.data.datasets import (
    check_headers,
    check_time_field,
    dataset_source,
    provide_dataset,
)
from recbole_flame.utils import distributed
from recbole_flame.utils.errors import ConfigError
from recbole_flame.utils.registry import available_models, get_model, get_trainer


def check_dataset_on_disk(config: Config) -> None:
    """Stop with one line if the dataset is not at ``data_path`` and neither this package (its
    bundled amazon-beauty) nor RecBole's download list can supply it. Writes nothing."""
    dataset_source(config)


def check_train_mode(config: Config) -> None:
    """Stop with one line on a ``train_mode`` the model cannot train with (the value itself is
    checked by its rule when the config is built)."""
    if config["train_mode"] == "prefix":
        return
    cls, name = config.model_class, config["model"]
    explain = getattr(cls, "dense_training_error", None)
    problem = explain(config) if explain is not None else None
    if problem is None and not getattr(cls, "supports_dense_training", False):
        capable = [
            m
            for m in available_models()[0]
            if getattr(get_model(m), "supports_dense_training", False)
        ]
        problem = (
            f"train_mode: dense is not available for {name} (it is for {', '.join(capable)}); "
            "use train_mode: prefix"
        )
    if problem is not None:
        raise ConfigError(f"{name}: {problem}")


def reset_logging(config: Config) -> None:
    """RecBole's ``init_logger`` uses ``logging.basicConfig``, which does nothing once the root
    logger has handlers; drop ours so each run logs to its own file. In a distributed run only
    rank 0 has a log file; the others print errors to stderr."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    if distributed.is_main():
        init_logger(config)
    else:
        root.addHandler(logging.StreamHandler())
        root.setLevel(logging.ERROR)


def checked_config(
    model: str,
    dataset: str,
    config_file_list: Sequence[str] | None = None,
    config_dict: dict[str, Any] | None = None,
    cmd_args: Sequence[str] | None = None,
) -> tuple[Config, str]:
    """The run's config once every check that needs no loaded data has passed, and where its
    dataset comes from (provided at ``data_path`` by now)."""
    config = Config(
        model=model,
        dataset=dataset,
        config_file_list=config_file_list,
        config_dict=config_dict,
        cmd_args=cmd_args,
    )
    check = getattr(config.model_class, "check_config", None)
    if check is not None:
        check(config)  # model-specific bad input stops here, before any data is loaded
    check_train_mode(config)
    check_dataset_on_disk(config)
    check_headers(config)  # a header without name:type fields or another separator: one line
    check_time_field(config)  # a sequential model on data without a time column: one line
    provided = provide_dataset(config)  # at data_path, the bundled copy, or RecBole's download
    return config, provided


def prepare(
    model: str,
    dataset: str,
    config_file_list: Sequence[str] | None = None,
    config_dict: dict[str, Any] | None = None,
    cmd_args: Sequence[str] | None = None,
):
    """Config, logger, dataset, splits, model and trainer, ready to ``fit``.

    Returns ``(config, model, trainer, (train_data, valid_data, test_data))``.
    """
    config, provided = checked_config(model, dataset, config_file_list, config_dict, cmd_args)
    init_seed(config["seed"], config["reproducibility"])
    reset_logging(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)
    logger.info(provided)

    data = create_dataset(config)
    if config["history_limit"]:
        dropped = apply_history_limit(data, config["history_limit"])
        logger.info(
            f"history_limit {config['history_limit']}: dropped {dropped} older interactions"
        )
    logger.info(data)
    train_data, valid_data, test_data = data_preparation(config, data)
    if config["train_mode"] == "dense":
        before = len(train_data._dataset)
        train_data = dense_train_dataloader(config, train_data)
        logger.info(f"train_mode dense: {before} prefix rows -> {len(train_data._dataset)} windows")

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(net)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    return config, net, trainer, (train_data, valid_data, test_data)


def run(
    model: str,
    dataset: str,
    config_file_list: Sequence[str] | None = None,
    config_dict: dict[str, Any] | None = None,
    saved: bool = True,
    cmd_args: Sequence[str] | None = None,
    callback_fn: Callable[[int, float], None] | None = None,
    resume: str | os.PathLike | None = None,
    nproc: int = 1,
    world_size: int = -1,
    ip: str = "localhost",
    port: int | str = 5678,
    group_offset: int = 0,
) -> dict[str, Any] | None:
    """Train ``model`` on ``dataset`` with early stopping on validation, then test the
    best-validation model. ``resume``: a run's ``-last.pth`` state to continue from (the same
    settings; ``epochs`` may grow).

    ``nproc``, ``world_size``, ``ip``, ``port``, ``group_offset``: RecBole's ``run`` options
    for one run over several processes (``nproc`` on this machine; ``world_size`` in all, the
    processes of this machine being ranks ``group_offset`` on). ``train_batch_size`` is the
    global batch; each process trains on its share. Returns global rank 0's result (None on
    the other machines); ``callback_fn`` is not called then.

    Returns RecBole's result dict (``best_valid_score``, ``valid_score_bigger``,
    ``best_valid_result``, ``test_result``) plus ``model``, ``dataset``, ``checkpoint`` (the
    best model's file, or None when ``saved`` is False), ``epoch_train_seconds`` and any
    model-specific entries, the learning curve (``valid_history``, ``best_epoch``,
    ``elapsed_seconds_to_best``, ...) and ``resume_file``. ``callback_fn(epoch, valid_score)`` is
    called after each validation.
    """
    if nproc != 1 or world_size > 0:
        world = distributed.check_launch(nproc, world_size, group_offset, ip, port)
        config, _ = checked_config(model, dataset, config_file_list, config_dict, cmd_args)
        distributed.check_gpus(config["gpu_id"] if config["use_gpu"] else "", nproc)
        return distributed.launch(
            _run_process,
            (model, dataset, config_file_list, saved, cmd_args, resume),
            dict(config_dict or {}),
            nproc,
            world,
            ip,
            port,
            group_offset,
        )
    return _run_process(
        model, dataset, config_file_list, saved, cmd_args, resume, config_dict, callback_fn
    )


def _run_process(
    model, dataset, config_file_list, saved, cmd_args, resume, config_dict, callback_fn=None
):
    """:func:`run` in this process: the only one, or one process of a distributed run."""
    config, _net, trainer, data = prepare(model, dataset, config_file_list, config_dict, cmd_args)
    if resume:
        trainer.resume_checkpoint(resume)
    return train_and_test(config, trainer, data, saved=saved, callback_fn=callback_fn)


def train_and_test(
    config: Config,
    trainer,
    data: tuple,
    saved: bool = True,
    callback_fn: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """``fit`` on the training split with validation, then ``evaluate`` the best model on test."""
    train_data, valid_data, test_data = data
    logger = getLogger()
    best_valid_score, best_valid_result = trainer.fit(
        train_data,
        valid_data,
        saved=saved,
        show_progress=config["show_progress"],
        callback_fn=callback_fn,
    )
    test_result = trainer.evaluate(
        test_data, load_best_model=True, show_progress=config["show_progress"]
    )
    logger.info(f"best valid : {best_valid_result}")
    logger.info(f"test result: {test_result}")
    result = {
        "model": config["model"],
        "dataset": config["dataset"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "checkpoint": trainer.saved_model_file
        if saved and os.path.isfile(trainer.saved_model_file)
        else None,
        "epoch_train_seconds": list(trainer.epoch_train_seconds),
        "resume_file": trainer.resume_file if saved else None,
    }
    result.update(trainer.learning_curve())
    result.update(trainer.result_extras())
    result.update(trainer.after_test(valid_data, test_data))
    return result


def objective_function(
    config_dict: dict[str, Any] | None = None,
    config_file_list: Sequence[str] | None = None,
    saved: bool = False,
) -> dict[str, Any]:
    """RecBole's tuning objective: ``config_dict`` must name ``model`` and ``dataset``.

    Selection uses validation only; the test result is reported for the record."""
    config_dict = dict(config_dict or {})
    model = config_dict.pop("model", None)
    dataset = config_dict.pop("dataset", None)
    if model is None or dataset is None:
        raise ConfigError("objective_function needs 'model' and 'dataset' in config_dict")
    return run(model, dataset, config_file_list, config_dict, saved=saved)
