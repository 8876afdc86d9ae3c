"""Ray Tune search over a hyper file, selecting on the validation metric.

Unlike RecBole 1.2.1's own path it asks for no GPU unless told or present, makes paths absolute
before Ray changes directory, reports the validation score after every epoch (so ASHA can stop
weak trials), selects on validation only, and never ``eval``s the hyper file.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from recbole_flame.config import parse_cmd_args
from recbole_flame.config.configurator import absolute_paths, visible_devices_kept
from recbole_flame.quick_start.quick_start import checked_config, prepare
from recbole_flame.tuning.hyper import check_search_space, parse_hyper_file, search_space
from recbole_flame.tuning.ray_api import tune_api
from recbole_flame.utils.checkpoint import plain
from recbole_flame.utils.errors import ConfigError, UserError


@dataclass
class SearchSettings:
    model: str
    dataset: str
    hyper_file: str
    trials: int = 8
    config_files: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    cpus_per_trial: float | None = None  # None: all CPUs of the machine
    gpus_per_trial: float | None = None  # None: 1 if CUDA is available, else 0
    ray_address: str | None = None  # None: start a local Ray
    output_dir: str = "ray_results"
    name: str | None = None
    resume: bool = False
    grace_period: int = 1
    max_concurrent: int | None = None


def _trial(
    params: dict[str, Any],
    *,
    model: str,
    dataset: str,
    base: dict,
    config_files: list,
    threads: int,
):
    """One Tune trial: train with validation each epoch, reporting it; no test evaluation."""
    _, _, tune_report = tune_api()

    torch.set_num_threads(threads)
    config_dict = {**base, **params}
    # Keep the devices Ray assigned: RecBole would otherwise set CUDA_VISIBLE_DEVICES itself.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    config_dict["gpu_id"] = visible
    config_dict["use_gpu"] = bool(visible)
    config, _, trainer, (train_data, valid_data, _) = prepare(
        model, dataset, config_files, config_dict
    )

    def report(epoch: int, score: float) -> None:
        # RecBole calls this after its early-stopping check and before acting on it, so the
        # trial can say whether this is its last epoch: the table then tells a trial that
        # ended on its own from one the scheduler stopped.
        if trainer.cur_step > trainer.stopping_step:
            end = "early stopping (patience)"
        elif epoch + 1 >= trainer.epochs:
            end = "all epochs"
        else:
            end = ""
        tune_report(
            {
                "valid_score": float(score),
                "epoch": epoch + 1,
                "checkpoint": trainer.saved_model_file,
                "end": end,
            }
        )

    trainer.fit(train_data, valid_data, saved=True, callback_fn=report)


def run_search(settings: SearchSettings) -> dict[str, Any]:
    """Run the search; returns the trials table, the best config and its test result."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    RunConfig, FailureConfig, _ = tune_api()
    params = parse_hyper_file(settings.hyper_file)
    overrides, config_files = absolute_paths(settings.overrides, settings.config_files)
    output_dir = Path(settings.output_dir).absolute()
    overrides.setdefault("checkpoint_dir", str(output_dir / "saved"))
    overrides.setdefault("show_progress", False)
    # The single run's pre-flight (one-line errors before Ray starts; the dataset materialised
    # or downloaded once here, so concurrent trials never write the same files), without
    # narrowing the GPUs Ray will count to gpu_id's.
    def check_hyper(config) -> None:  # the hyper file against the config, before any data
        unknown = [p.name for p in params if p.name not in config.final_config_dict]
        if unknown:
            raise ConfigError(
                f"hyper file '{settings.hyper_file}' names keys {unknown} that "
                f"{settings.model}'s config does not have; check their spelling"
            )
        check_search_space(params, config["model"], settings.hyper_file)

    with visible_devices_kept():
        config, provided = checked_config(
            settings.model, settings.dataset, config_files, overrides, also_check=check_hyper
        )
    print(provided)
    mode = "max" if config["valid_metric_bigger"] else "min"
    epochs = int(config["epochs"])

    cpus = settings.cpus_per_trial or float(os.cpu_count() or 1)
    gpus = settings.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if torch.cuda.is_available() else 0.0
    started_ray = not ray.is_initialized()
    if started_ray:
        if settings.ray_address:
            ray.init(address=settings.ray_address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)

    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            model=config["model"],
            dataset=settings.dataset,
            base=overrides,
            config_files=config_files,
            threads=max(1, int(cpus)),
        ),
        {"cpu": cpus, "gpu": gpus},
    )
    name = settings.name or f"{config['model']}-{settings.dataset}"
    experiment = output_dir / name
    if settings.resume:
        if not tune.Tuner.can_restore(str(experiment)):
            raise ConfigError(f"nothing to resume at '{experiment}'; run without --resume first")
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(params),
            tune_config=tune.TuneConfig(
                metric="valid_score",
                mode=mode,
                num_samples=settings.trials,
                # Sampling follows the config's seed, so a search can be repeated exactly. Ray
                # ignores TuneConfig's max_concurrent_trials (with only a warning) when given a
                # BasicVariantGenerator, so the limit goes to the generator itself.
                search_alg=BasicVariantGenerator(
                    random_state=int(config["seed"]), max_concurrent=settings.max_concurrent or 0
                ),
                scheduler=ASHAScheduler(
                    time_attr="training_iteration",
                    max_t=epochs,
                    grace_period=min(settings.grace_period, epochs),
                    reduction_factor=2,
                ),
            ),
            run_config=RunConfig(
                name=name,
                storage_path=str(output_dir),
                failure_config=FailureConfig(max_failures=0),
                verbose=1,
            ),
        )
    try:
        grid = tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()

    rows = _trial_rows(grid, [p.name for p in params], mode)
    finished = [r for r in rows if r["best_valid_score"] is not None]
    summary: dict[str, Any] = {
        "model": config["model"],
        "dataset": settings.dataset,
        "valid_metric": config["valid_metric"],
        "mode": mode,
        "experiment": str(experiment),
        "trials": rows,
        "best_config": None,
        "best_valid_score": None,
        "test_result": None,
    }
    if finished:
        best = (max if mode == "max" else min)(finished, key=lambda r: r["best_valid_score"])
        summary["best_config"] = best["config"]
        summary["best_valid_score"] = best["best_valid_score"]
        summary["test_result"] = _test_best(settings, config_files, overrides, best)
    _write(summary, experiment)
    if not finished:
        failed = [r["status"][len("ERROR: ") :] for r in rows if r["status"].startswith("ERROR")]
        why = f"the first: {failed[0]}" if failed else "none reported a validation score"
        raise SearchFailed(
            f"every trial of the search failed ({why}); trials: {experiment}/trials.csv"
        )
    return summary


class SearchFailed(UserError):
    """A search none of whose trials finished a validation."""


def error_line(error: BaseException | str) -> str:
    """The line of a trial's error that says what went wrong: Ray wraps the trial's exception
    in its own text and traceback, whose last ``SomethingError: message`` line is the trial's."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line):
            return line
    return lines[0] if lines else type(error).__name__


def _trial_rows(grid, names: list[str], mode: str) -> list[dict[str, Any]]:
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        scores = (
            history["valid_score"].dropna().tolist()
            if history is not None and "valid_score" in history
            else []
        )
        best = (max if mode == "max" else min)(scores) if scores else None
        checkpoint = None
        if history is not None and "checkpoint" in history and len(history):
            checkpoint = history["checkpoint"].dropna().iloc[-1]
        error = result.error
        end = ""
        if history is not None and "end" in history and len(history):
            last = history["end"].iloc[-1]
            end = last if isinstance(last, str) else ""  # Ray stores "" as NaN
        if error:
            status = "ERROR: " + error_line(error)[:160]
        elif end:
            status = f"done: {end}"
        else:
            status = "stopped by ASHA" if scores else "not started"
        trial_id = (result.metrics or {}).get("trial_id")
        rows.append(
            {
                "trial": trial_id or (Path(result.path).name if result.path else "?"),
                "config": {k: plain(result.config.get(k)) for k in names},
                "best_valid_score": best,
                "epochs": len(scores),
                "status": status,
                "checkpoint": checkpoint,
            }
        )
    return rows


def _test_best(settings: SearchSettings, config_files, overrides, best) -> dict[str, float] | None:
    """The best trial's best-validation checkpoint, evaluated once on the test split."""
    checkpoint = best.get("checkpoint")
    if not checkpoint or not os.path.isfile(checkpoint):
        return None
    config_dict = {**overrides, **best["config"]}
    _, _, trainer, (_, _, test_data) = prepare(
        settings.model, settings.dataset, config_files, config_dict
    )
    return dict(trainer.evaluate(test_data, load_best_model=True, model_file=checkpoint))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def trials_markdown(summary: dict[str, Any]) -> str:
    names = list(summary["trials"][0]["config"]) if summary["trials"] else []
    head = ["trial", *names, f"best valid {summary['valid_metric']}", "epochs", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary["trials"]:
        cells = [row["trial"], *(row["config"][n] for n in names)]
        cells += [row["best_valid_score"], row["epochs"], row["status"]]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def _write(summary: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".search_results.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, folder / "search_results.json")
    names = list(summary["trials"][0]["config"]) if summary["trials"] else []
    tmp = folder / ".trials.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", *names, "best_valid_score", "epochs", "status"])
        for row in summary["trials"]:
            cells = [row["trial"], *(json.dumps(row["config"][n]) for n in names)]
            writer.writerow([*cells, row["best_valid_score"], row["epochs"], row["status"]])
    os.replace(tmp, folder / "trials.csv")


def settings_from_cli(args, overrides: Sequence[str]) -> SearchSettings:
    config_files = args.config_files.split() if args.config_files else []
    return SearchSettings(
        model=args.model,
        dataset=args.dataset,
        hyper_file=args.hyper,
        trials=args.trials,
        config_files=config_files,
        overrides=parse_cmd_args(overrides),
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        ray_address=args.ray_address,
        output_dir=args.output_dir,
        name=args.name,
        resume=bool(args.resume),
        max_concurrent=args.max_concurrent,
    )
