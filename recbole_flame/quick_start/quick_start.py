"""Train and evaluate one model on one dataset, as RecBole's ``run_recbole`` does."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from logging import getLogger
from typing import Any

from recbole.data import create_dataset, data_preparation
from recbole.utils import ModelType, init_logger, init_seed

from recbole_flame.config import Config
from recbole_flame.data import apply_history_limit, dense_train_dataloader
from recbole_flame.data.datasets import (
    check_headers,
    check_id_fields,
    check_time_field,
    dataset_source,
    provide_dataset,
)
from recbole_flame.data.packed import lay_out_in_loader
from recbole_flame.data.prefix import prefix_data_preparation, uses_onthefly
from recbole_flame.model.capabilities import capability
from recbole_flame.trainer.trainer import TrainingInterrupted
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
    problem = capability(cls, "dense_training_error")(config)
    if problem is None and not capability(cls, "supports_dense_training"):
        capable = [
            m for m in available_models()[0] if capability(get_model(m), "supports_dense_training")
        ]
        problem = (
            f"train_mode: dense is not available for {name} (it is for {', '.join(capable)}); "
            "use train_mode: prefix"
        )
    if problem is not None:
        raise ConfigError(f"{name}: {problem}")


# Fewer training steps an epoch than this get a warning: each validation then follows a
# handful of updates, so early stopping and a search compare barely trained models (ml-100k,
# dense, batch 2048: two steps an epoch, and a two-trial search tied).
MIN_STEPS_PER_EPOCH = 10


def few_steps_warning(config: Config, train_data) -> str | None:
    """A line when an epoch of ``train_data`` (the loader ``fit`` will iterate: its length is
    the optimizer steps of an epoch, on this process) has fewer than MIN_STEPS_PER_EPOCH
    steps, naming the batch size, the train mode and a batch size that gives enough steps."""
    steps = len(train_data)
    if steps >= MIN_STEPS_PER_EPOCH:
        return None
    rows = len(train_data._dataset)
    batch = config["train_batch_size"]
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        unit = "windows" if config["train_mode"] == "dense" else "prefix rows"
        mode = f"train_mode {config['train_mode']}"
        if config["train_mode"] == "prefix" and config["sequence_packing"]:
            mode += ", sequence packing on (within each batch: the same steps)"
    else:
        unit, mode = "training rows", f"{config['model']} takes no train_mode"
    # a loader with negative sampling fits fewer rows than train_batch_size into a step
    rows_per_step = getattr(train_data, "step", batch) or batch
    here = -(-rows // distributed.world_size())  # each process trains on its share
    enough = max(1, batch * here // (MIN_STEPS_PER_EPOCH * rows_per_step))
    return (
        f"an epoch has only {steps} training step{'s' if steps != 1 else ''} ({rows} {unit}, "
        f"train_batch_size {batch}, {mode}): each validation follows a handful of updates, so "
        "early stopping and a search compare barely trained models; set train_batch_size to "
        f"{enough} or less for {MIN_STEPS_PER_EPOCH} steps or more"
    )


def reset_logging(config: Config) -> None:
    """RecBole's ``init_logger`` uses ``logging.basicConfig``, which does nothing once the root
    logger has handlers; drop ours so each run logs to its own file. In a distributed run only
    rank 0 has a log file; the others print errors to stderr."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    if distributed.is_main():
        # RecBole's ensure_dir checks, then creates: processes starting at once (a search's
        # trials) race on it, and the loser's makedirs fails. exist_ok cannot fail.
        os.makedirs(os.path.join("log", config["model"]), exist_ok=True)
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
    also_check: Callable[[Config], None] | None = None,
) -> tuple[Config, str]:
    """The run's config once every check that needs no loaded data has passed, and where its
    dataset comes from (provided at ``data_path`` by now). ``also_check``: the caller's own
    checks of the config (a search's hyper file), run before the dataset is looked for."""
    config = Config(
        model=model,
        dataset=dataset,
        config_file_list=config_file_list,
        config_dict=config_dict,
        cmd_args=cmd_args,
    )
    # model-specific bad input stops here, before any data is loaded
    capability(config.model_class, "check_config")(config)
    check_train_mode(config)
    uses_onthefly(config)  # prefix_loader: onthefly where it cannot serve the run: one line
    if also_check is not None:
        also_check(config)
    check_dataset_on_disk(config)
    check_headers(config)  # a header without name:type fields or another separator: one line
    check_id_fields(config)  # user or item column named otherwise: one line naming the keys
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
    if uses_onthefly(config):  # the same batches, without RecBole's O(samples x L) rows
        train_data, valid_data, test_data = prefix_data_preparation(config, data)
    else:
        train_data, valid_data, test_data = data_preparation(config, data)
    if config["train_mode"] == "dense":
        before = len(train_data._dataset)
        train_data = dense_train_dataloader(config, train_data)
        logger.info(f"train_mode dense: {before} prefix rows -> {len(train_data._dataset)} windows")
    few = few_steps_warning(config, train_data)
    if few is not None:
        logger.warning(few)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    if getattr(net, "packing", False):  # the row layout computed in the loader, on the CPU
        lay_out_in_loader(train_data, config)
    logger.info(net)
    os.makedirs(config["checkpoint_dir"], exist_ok=True)  # before RecBole's racy ensure_dir
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
    after_test: Callable[..., dict[str, Any]] | None = None,
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
    called after each validation. ``after_test(config, model, trainer, data, result)``
    (one process only) measures the tested model further; its entries join the result.
    """
    if nproc != 1 or world_size > 0:
        if after_test is not None:
            raise ConfigError("after_test measures a run in this process: nproc 1 only")
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
        model,
        dataset,
        config_file_list,
        saved,
        cmd_args,
        resume,
        config_dict,
        callback_fn,
        after_test,
    )


def _run_process(
    model,
    dataset,
    config_file_list,
    saved,
    cmd_args,
    resume,
    config_dict,
    callback_fn=None,
    after_test=None,
):
    """:func:`run` in this process: the only one, or one process of a distributed run."""
    config, net, trainer, data = prepare(model, dataset, config_file_list, config_dict, cmd_args)
    if resume:
        trainer.resume_checkpoint(resume)
    result = train_and_test(config, trainer, data, saved=saved, callback_fn=callback_fn)
    if after_test is not None:
        result.update(after_test(config, net, trainer, data, result))
    return result


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
    start = time.perf_counter()
    try:
        with StepCounter() as steps:
            best_valid_score, best_valid_result = trainer.fit(
                train_data,
                valid_data,
                saved=saved,
                show_progress=config["show_progress"],
                callback_fn=callback_fn,
            )
    except TrainingInterrupted as exc:
        if exc.resume_file is not None:
            raise
        # Nothing on disk to resume from: say how far it got, so a rerun is a known cost.
        progress = interrupted_progress(
            config, trainer, len(train_data), steps, time.perf_counter() - start
        )
        raise TrainingInterrupted(None, progress) from exc
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


class StepCounter:
    """Counts optimizer steps while in use, per optimizer (a global post-step hook, so it also
    sees an optimizer the trainer builds inside ``fit``, as FLAME's stage 1 does)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.last: int | None = None  # id() of the optimizer that stepped last
        self._handle = None

    def _hook(self, optimizer, _args, _kwargs) -> None:
        self.counts[id(optimizer)] = self.counts.get(id(optimizer), 0) + 1
        self.last = id(optimizer)

    def __enter__(self) -> StepCounter:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = register_optimizer_step_post_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def interrupted_progress(
    config: Config, trainer, steps_per_epoch: int, steps: StepCounter, seconds: float
) -> str:
    """How far a run stopped by Ctrl-C before anything was saved got: `` after 52 s and 37
    training steps (an epoch here is 380), before the first validation ...``."""
    done = steps.counts.get(steps.last, 0) if steps.last is not None else 0
    inner = steps.last is not None and steps.last != id(trainer.optimizer)
    stage = " of FLAME stage 1" if inner and hasattr(trainer, "stage1_checkpoint") else ""
    text = (
        f" after {seconds:.0f} s and {done} training step{'s' if done != 1 else ''}{stage} (an "
        f"epoch here is {steps_per_epoch})"
    )
    validations = len(getattr(trainer, "valid_history", []))
    if validations and not inner:
        return text + (
            f", {validations} validation(s) done, but this run keeps its state in memory only "
            "(saved=False)"
        )
    return text + (
        f", before the first validation (after epoch {config['eval_step']}) saved the run's state"
    )


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
