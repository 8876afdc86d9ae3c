"""Side-by-side comparison of several models on one dataset, split and set of seeds."""

from __future__ import annotations

import csv
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from recbole.data.dataloader import FullSortEvalDataLoader

from recbole_flame.config import Config
from recbole_flame.quick_start import prepare, train_and_test
from recbole_flame.tuning.search import absolute_paths
from recbole_flame.utils.checkpoint import plain
from recbole_flame.utils.errors import ConfigError

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


def run_comparison(
    models: Sequence[str],
    dataset: str,
    seeds: Sequence[int],
    config_files: Sequence[str] = (),
    overrides: dict[str, Any] | None = None,
    output_dir: str = "comparison",
) -> dict[str, Any]:
    """Train and test each model with each seed; write table (md), CSV, JSON and a PNG of the
    validation metric per epoch into ``output_dir``; returns the summary."""
    overrides, config_files = absolute_paths(overrides or {}, config_files)
    check_same_data(
        {m: Config(m, dataset, config_files, {**overrides, "seed": seeds[0]}) for m in models}
    )
    runs = []
    for seed in seeds:
        for model in models:
            config, net, trainer, data = prepare(
                model, dataset, config_files, {**overrides, "seed": seed}
            )
            result = train_and_test(config, trainer, data, saved=True)
            runs.append(
                {
                    "model": config["model"],
                    "seed": seed,
                    "valid_metric": config["valid_metric"],
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
                }
            )
    summary = summarize(runs)
    write_outputs(summary, Path(output_dir))
    return summary


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, std and paired t-test (each model against the first, paired by seed)."""
    from scipy import stats

    models = list(dict.fromkeys(r["model"] for r in runs))
    metrics = list(runs[0]["test_result"])
    by_model = {
        m: sorted((r for r in runs if r["model"] == m), key=lambda r: r["seed"]) for m in models
    }
    rows = []
    for model in models:
        mine = by_model[model]
        row: dict[str, Any] = {"model": model, "seeds": [r["seed"] for r in mine]}
        for metric in metrics:
            values = [r["test_result"][metric] for r in mine]
            row[metric] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values,
                "p_vs_first": None,
            }
            first = [r["test_result"][metric] for r in by_model[models[0]]]
            if model != models[0] and len(values) > 1 and len(values) == len(first):
                p = stats.ttest_rel(values, first).pvalue
                row[metric]["p_vs_first"] = None if p != p else float(p)  # NaN: identical runs
        for key in ("epoch_seconds", "inference_seconds_per_batch"):
            row[key] = statistics.median(r[key] for r in mine)
        for key in ("best_epoch", "seconds_to_best"):
            row[key] = statistics.fmean(r[key] for r in mine if r[key] is not None)
        row["parameters"] = mine[0]["parameters"]
        rows.append(row)
    return {"models": models, "metrics": metrics, "rows": rows, "runs": plain(runs)}


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
            text = f"{cell['mean']:.4f}"
            if len(row["seeds"]) > 1:
                text += f" ± {cell['std']:.4f}"
            if cell["p_vs_first"] is not None:
                text += f" (p={cell['p_vs_first']:.3f})"
            cells.append(text)
        cells += [
            f"{row['best_epoch']:.1f}",
            f"{row['seconds_to_best']:.0f}",
            f"{row['epoch_seconds']:.1f}",
            f"{row['inference_seconds_per_batch']:.4f}",
            f"{row['parameters']:,}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = summary["rows"][0]["seeds"]
    note = (
        f"\nTest metrics of the best-validation model; epochs and wall time (training and "
        f"validation) until the best validation epoch; seeds {seeds}"
    )
    if len(seeds) > 1:
        note += "; mean ± std, p: paired t-test against the first model"
    return "\n".join(lines) + note + "."


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
