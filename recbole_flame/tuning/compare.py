"""Side-by-side comparison of several models on one dataset, split and set of seeds."""

from __future__ import annotations

import csv
import json
import os
import statistics
import time
from collections.abc import Sequence
from logging import getLogger
from pathlib import Path
from typing import Any

import torch
import yaml
from recbole.data.dataloader import FullSortEvalDataLoader

from recbole_flame.config import Config
from recbole_flame.experiment.stats import format_mean_sd, mean_sd, paired_test
from recbole_flame.quick_start import prepare, train_and_test
from recbole_flame.tuning.per_user import held_out_ranks, paired_users
from recbole_flame.tuning.search import absolute_paths
from recbole_flame.utils.checkpoint import plain
from recbole_flame.utils.errors import ConfigError
from recbole_flame.utils.paths import profile

# Settings that decide which interactions a model trains and is tested on, and how it is
# scored: models compared side by side must agree on all of them.
DATA_KEYS = (
    "history_limit",
    "eval_exclude_history",
    "eval_args",
    "load_col",
    "unload_col",
    "user_inter_num_interval",
    "item_inter_num_interval",
    "val_interval",
    "rm_dup_inter",
    "threshold",
    "benchmark_filename",
    "metrics",
    "topk",
    "valid_metric",
)


def check_same_data(configs: dict[str, Config]) -> None:
    """Stop with one line if two models would see different data or evaluation settings."""
    (first, base), *others = configs.items()
    for model, config in others:
        for key in DATA_KEYS:
            if plain(config[key]) != plain(base[key]):
                raise ConfigError(
                    f"cannot compare {first} and {model}: their data settings differ "
                    f"({key}: {base[key]!r} vs {config[key]!r}); set {key} for all of them "
                    "(a config file or --key=value)"
                )


def inference_seconds_per_batch(trainer, test_data, batches: int = 10) -> float:
    """Median wall time of RecBole's own per-batch scoring on the first test batches."""
    trainer.model.eval()
    score = (
        trainer._full_sort_batch_eval
        if isinstance(test_data, FullSortEvalDataLoader)
        else trainer._neg_sample_batch_eval
    )
    times = []
    with torch.no_grad():
        for i, batch in enumerate(test_data):
            if i >= batches:
                break
            start = time.perf_counter()
            score(batch)
            times.append(time.perf_counter() - start)
    return statistics.median(times) if times else float("nan")


def comparison_settings(
    models: Sequence[str],
    dataset: str,
    config_files: Sequence[str],
    overrides: dict[str, Any],
) -> tuple[dict[str, Any], list[str]]:
    """The settings every model of the comparison trains with: the evaluation and comparison
    profiles (``properties/profile/``) under what the user gave (``overrides`` and config
    files, which apply to every model), and one line per model whose own defaults the profile
    overrides (``key old -> new``)."""
    chosen = set(overrides)
    for file in config_files:
        with open(file, encoding="utf-8") as f:
            chosen |= set(yaml.safe_load(f) or {})
    shared = {**profile("evaluation"), **profile("comparison")}
    shared = {k: v for k, v in shared.items() if k not in chosen}
    notes = []
    for model in models:
        own = Config(model, dataset, config_files, overrides)
        changed = [
            f"{key} {own[key]!r} -> {value!r}"
            for key, value in shared.items()
            if key != "seed" and plain(own[key]) != plain(value)
        ]
        if changed:
            notes.append(
                f"comparison profile: {own['model']} trains with "
                + ", ".join(changed)
                + " (its own defaults overridden so every model shares them; --key=value sets "
                "one for all)"
            )
    return {**shared, **overrides}, notes


def run_comparison(
    models: Sequence[str],
    dataset: str,
    seeds: Sequence[int] | None = None,
    config_files: Sequence[str] = (),
    overrides: dict[str, Any] | None = None,
    output_dir: str = "comparison",
) -> dict[str, Any]:
    """Train and test each model with each seed (default: the profile's seed) on settings they
    all share (:func:`comparison_settings`); a FLAME run adds its frozen stage-1 SASRec as the
    row ``FLAME (frozen)``. Writes table (md), CSV, JSON and a PNG of the validation metric
    per epoch into ``output_dir``; returns the summary."""
    overrides, config_files = absolute_paths(overrides or {}, config_files)
    settings, notes = comparison_settings(models, dataset, config_files, overrides)
    # default: the seed the runs would use (a config file's, else the profile's)
    seeds = list(seeds or [Config(models[0], dataset, config_files, settings)["seed"]])
    check_same_data(
        {m: Config(m, dataset, config_files, {**settings, "seed": seeds[0]}) for m in models}
    )
    logger = getLogger()
    for note in notes:
        logger.info(note)
    runs = []
    for seed in seeds:
        for model in models:
            config, net, trainer, data = prepare(
                model, dataset, config_files, {**settings, "seed": seed}
            )
            result = train_and_test(config, trainer, data, saved=True)
            ranks = per_user_ranks(trainer, data[2])
            runs.append(
                {
                    "model": config["model"],
                    "seed": seed,
                    "valid_metric": config["valid_metric"],
                    "settings": {k: plain(config[k]) for k in SHARED_TRAINING_KEYS},
                    "test_result": dict(result["test_result"]),
                    "best_valid_result": dict(result["best_valid_result"] or {}),
                    "epoch_seconds": statistics.median(result["epoch_train_seconds"])
                    if result["epoch_train_seconds"]
                    else float("nan"),
                    "inference_seconds_per_batch": inference_seconds_per_batch(trainer, data[2]),
                    "parameters": sum(p.numel() for p in net.parameters() if p.requires_grad),
                    "curve": [(h["epoch"], h["valid_score"]) for h in result["valid_history"]],
                    "best_epoch": result["best_epoch"],
                    "seconds_to_best": result["elapsed_seconds_to_best"],
                    "ranks": ranks,
                }
            )
            if hasattr(net, "scoring_with") and result.get("stage1_test_result"):
                runs.append(frozen_run(runs[-1], result, net, trainer, data[2]))
    summary = summarize(runs, notes)
    write_outputs(summary, Path(output_dir))
    return summary


# The settings of SHARED_TRAINING_KEYS each run recorded (a test checks they are shared).
SHARED_TRAINING_KEYS = (
    "train_batch_size",
    "learning_rate",
    "epochs",
    "stopping_step",
    "valid_metric",
    "metrics",
    "topk",
)


def per_user_ranks(trainer, test_data) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(ranks, users) of the test split, or None where a user has several held-out items
    (the per-user test needs one per user)."""
    if not isinstance(test_data, FullSortEvalDataLoader):
        return None
    ranks, _, users = held_out_ranks(trainer, test_data)
    return (ranks, users) if users.unique().numel() == users.numel() else None


def frozen_run(learnable: dict, result: dict, net, trainer, test_data) -> dict[str, Any]:
    """FLAME's frozen stage-1 SASRec as a run of its own, from the same FLAME run: its test
    and validation results, its stage-1 curve and, scored here, its per-user ranks."""
    curve = result.get("stage1_learning_curve") or {}
    with net.scoring_with("frozen"):
        ranks = per_user_ranks(trainer, test_data)
        seconds = inference_seconds_per_batch(trainer, test_data)
    return {
        **learnable,
        "model": f"{learnable['model']} (frozen)",
        "test_result": dict(result["stage1_test_result"]),
        "best_valid_result": dict(result.get("stage1_valid_result") or {}),
        "epoch_seconds": float("nan"),  # stage 1 may be cached or given: not timed here
        "inference_seconds_per_batch": seconds,
        "parameters": sum(p.numel() for p in net.frozen.parameters()),
        "curve": [(h["epoch"], h["valid_score"]) for h in curve.get("valid_history", [])],
        "best_epoch": curve.get("best_epoch"),
        "seconds_to_best": curve.get("elapsed_seconds_to_best"),
        "ranks": ranks,
    }


# Fewer paired seeds than this give no across-seed p-value (two equal differences gave
# "p = 0.000" once; a t-test on 2 pairs has 1 degree of freedom).
MIN_SEEDS_FOR_P = 3


def summarize(runs: list[dict[str, Any]], notes: Sequence[str] = ()) -> dict[str, Any]:
    """Mean and std per model; each model against the first: a paired t-test across seeds
    (from MIN_SEEDS_FOR_P seeds) and, per seed, a paired t-test over test users on the
    validation metric."""
    models = list(dict.fromkeys(r["model"] for r in runs))
    metrics = list(runs[0]["test_result"])
    by_model = {
        m: sorted((r for r in runs if r["model"] == m), key=lambda r: r["seed"]) for m in models
    }
    first_runs = {r["seed"]: r for r in by_model[models[0]]}
    rows = []
    for model in models:
        mine = by_model[model]
        row: dict[str, Any] = {"model": model, "seeds": [r["seed"] for r in mine]}
        paired = [r for r in mine if r["seed"] in first_runs]
        for metric in metrics:
            values = [r["test_result"][metric] for r in mine]
            mean, std = mean_sd(values)
            row[metric] = {"mean": mean, "std": std, "values": values, "p_vs_first": None}
            if model != models[0] and len(paired) >= MIN_SEEDS_FOR_P:
                mine_v = [r["test_result"][metric] for r in paired]
                first_v = [first_runs[r["seed"]]["test_result"][metric] for r in paired]
                p = paired_test(mine_v, first_v).p
                row[metric]["p_vs_first"] = None if p != p else p  # NaN: identical runs
        row["per_user_vs_first"] = {}
        if model != models[0]:
            for r in paired:
                first = first_runs[r["seed"]]
                metric = r["valid_metric"].lower()
                if r["ranks"] is not None and first["ranks"] is not None:
                    test = paired_users(r["ranks"], first["ranks"], metric)
                    row["per_user_vs_first"][r["seed"]] = {"metric": metric, **test}
        for key in ("epoch_seconds", "inference_seconds_per_batch"):
            row[key] = statistics.median(r[key] for r in mine)
        for key in ("best_epoch", "seconds_to_best"):
            known = [r[key] for r in mine if r[key] is not None]
            row[key] = statistics.fmean(known) if known else float("nan")
        row["parameters"] = mine[0]["parameters"]
        row["settings"] = mine[0]["settings"]
        rows.append(row)
    kept = [{k: v for k, v in r.items() if k != "ranks"} for r in runs]
    return {
        "models": models,
        "metrics": metrics,
        "rows": rows,
        "notes": list(notes),
        "runs": plain(kept),
    }


def markdown(summary: dict[str, Any]) -> str:
    metrics = summary["metrics"]
    head = [
        "model",
        *metrics,
        "epochs to best",
        "time to best (s)",
        "train s/epoch",
        "inference s/batch",
        "parameters",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary["rows"]:
        cells = [row["model"]]
        for metric in metrics:
            cell = row[metric]
            text = format_mean_sd(cell["mean"], cell["std"], len(row["seeds"]))
            if cell["p_vs_first"] is not None:
                text += f" (p={cell['p_vs_first']:.3f})"
            cells.append(text)
        cells += [
            f"{row['best_epoch']:.1f}",
            f"{row['seconds_to_best']:.0f}"
            if row["seconds_to_best"] == row["seconds_to_best"]
            else "-",
            f"{row['epoch_seconds']:.1f}" if row["epoch_seconds"] == row["epoch_seconds"] else "-",
            f"{row['inference_seconds_per_batch']:.4f}",
            f"{row['parameters']:,}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = summary["rows"][0]["seeds"]
    first = summary["models"][0]
    note = (
        f"\nTest metrics of the best-validation model; epochs and wall time (training and "
        f"validation) until the best validation epoch; seeds {seeds}"
    )
    if len(seeds) > 1:
        note += "; mean ± std"
    if len(seeds) >= MIN_SEEDS_FOR_P:
        note += f"; p: paired t-test across seeds against {first}"
    else:
        note += f"; no p-value across seeds (fewer than {MIN_SEEDS_FOR_P})"
    note += "."
    for row in summary["rows"]:
        for seed, t in row["per_user_vs_first"].items():
            note += (
                f"\n{row['model']} - {first}, seed {seed}, test {t['metric']} per user over "
                f"{t['users']} users: {t['mean_diff']:+.4f} ({t['relative_diff']:+.1%}), "
                f"paired t = {t['t']:.2f}, p = {t['p']:.3g}"
            )
    for line in summary.get("notes", []):
        note += f"\n{line}"
    return "\n".join(lines) + note


def write_outputs(summary: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)

    def replace(name: str, write) -> None:
        tmp = folder / f".{name}.tmp"
        write(tmp)
        os.replace(tmp, folder / name)

    replace("comparison.md", lambda p: p.write_text(markdown(summary) + "\n"))
    replace("comparison.json", lambda p: p.write_text(json.dumps(summary, indent=2, default=str)))

    def write_csv(path: Path) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            metrics = summary["metrics"]
            writer.writerow(
                ["model", *[f"{m}_{s}" for m in metrics for s in ("mean", "std", "p_vs_first")]]
                + ["best_epoch", "seconds_to_best", "train_s_per_epoch"]
                + ["inference_s_per_batch", "parameters"]
            )
            for row in summary["rows"]:
                cells = [row["model"]]
                for m in metrics:
                    cells += [row[m]["mean"], row[m]["std"], row[m]["p_vs_first"]]
                cells += [
                    row["best_epoch"],
                    row["seconds_to_best"],
                    row["epoch_seconds"],
                    row["inference_seconds_per_batch"],
                    row["parameters"],
                ]
                writer.writerow(cells)

    replace("comparison.csv", write_csv)
    replace("convergence.png", lambda p: plot_curves(summary, p))


def plot_curves(summary: dict[str, Any], path: Path) -> None:
    """Validation metric per epoch, averaged over seeds, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    for model in summary["models"]:
        curves = [r["curve"] for r in summary["runs"] if r["model"] == model]
        length = min(len(c) for c in curves)
        if length == 0:
            continue
        epochs = [curves[0][i][0] for i in range(length)]
        means = [statistics.fmean(c[i][1] for c in curves) for i in range(length)]
        ax.plot(epochs, means, marker="o", label=model)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {summary['runs'][0]['valid_metric']}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
