"""Side-by-side comparison of several models on one dataset, split and set of seeds."""

from __future__ import annotations

import csv
import json
import os
import statistics
from collections.abc import Sequence
from logging import getLogger
from pathlib import Path
from typing import Any

import torch
import yaml
from recbole.data.dataloader import FullSortEvalDataLoader

from recbole_flame.config import Config
from recbole_flame.config.configurator import absolute_paths
from recbole_flame.experiment.per_user import held_out_ranks, paired_users
from recbole_flame.experiment.spec import result_file, run_config
from recbole_flame.experiment.stats import format_mean_sd, holm, mean_sd, paired_test
from recbole_flame.utils.checkpoint import plain
from recbole_flame.utils.errors import ConfigError
from recbole_flame.utils.paths import profile
from recbole_flame.utils.timing import timed

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
    """Median wall time of the trainer's per-batch scoring (the chunked full-sort scorer where
    it serves the model, RecBole's otherwise) on the first test batches."""
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
            times.append(timed(lambda batch=batch: score(batch)))
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
    row ``FLAME (frozen)``. The runs are an experiment of the engine
    (:func:`comparison_spec`, :func:`~recbole_flame.experiment.runs.run_one`): each (model, seed)
    writes its record to ``output_dir`` (``<model>-seed<k>.json``, its checkpoints under
    ``ckpt/``), a finished one is read back instead of trained again, a stopped one resumes.
    Writes table (md), CSV, JSON and a PNG of the validation metric per epoch into
    ``output_dir``; returns the summary."""
    from recbole_flame.experiment.runs import run_one

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
    spec = comparison_spec(models, dataset, seeds, config_files, settings)
    out = Path(output_dir).absolute()
    runs = []
    for seed in seeds:
        for model in models:
            record = finished_record(spec, model, seed, out)
            if record is None:
                record = run_one(spec, model, seed, out, after_test=measure_for_comparison)
            runs.extend(comparison_rows(record))
    summary = summarize(runs, notes, dataset)
    write_outputs(summary, Path(output_dir))
    return summary


def comparison_spec(
    models: Sequence[str],
    dataset: str,
    seeds: Sequence[int],
    config_files: Sequence[str],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The comparison as an experiment spec, built in memory: one run per model, the shared
    settings as its base."""
    return {
        "name": "comparison",
        "path": "(the command line)",
        "dataset": dataset,
        "seeds": list(seeds),
        "config_files": list(config_files),
        "base": dict(settings),
        "runs": {model: {"model": model} for model in models},
        "compare": [],
        "extras": {},
    }


def finished_record(spec: dict, label: str, seed: int, out: Path) -> dict[str, Any] | None:
    """The record of a (model, seed) that an earlier comparison into ``out`` finished with the
    same settings, or None when there is none; one line when the record there was made with
    other settings (it would be compared as if it were this run)."""
    path = result_file(out, label, seed)
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    config, _ = run_config(spec, label, seed, out)
    if plain(record.get("config")) != plain(config) or "comparison" not in record["result"]:
        raise ConfigError(
            f"{path} holds a run of {label} made with other settings; compare into another "
            "--output_dir, or remove that folder to train again"
        )
    return record


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


def _plain_ranks(ranks: tuple[torch.Tensor, torch.Tensor] | None) -> list | None:
    return None if ranks is None else [ranks[0].tolist(), ranks[1].tolist()]


def measure_for_comparison(config, net, trainer, data, result) -> dict[str, Any]:
    """What a comparison needs of a tested run besides its result (the engine's ``after_test``):
    the shared settings, per-user test ranks, scoring time per batch and trainable
    parameters; for FLAME the same of its frozen stage-1 SASRec."""
    test_data = data[2]
    measured = {
        "valid_metric": config["valid_metric"],
        "settings": {k: plain(config[k]) for k in SHARED_TRAINING_KEYS},
        "ranks": _plain_ranks(per_user_ranks(trainer, test_data)),
        "inference_seconds_per_batch": inference_seconds_per_batch(trainer, test_data),
        "parameters": sum(p.numel() for p in net.parameters() if p.requires_grad),
    }
    if hasattr(net, "scoring_with") and result.get("stage1_test_result"):
        with net.scoring_with("frozen"):
            measured["frozen"] = {
                "ranks": _plain_ranks(per_user_ranks(trainer, test_data)),
                "inference_seconds_per_batch": inference_seconds_per_batch(trainer, test_data),
                "parameters": sum(p.numel() for p in net.frozen.parameters()),
            }
    return {"comparison": measured}


def _ranks(plain_ranks: list | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    return (
        None
        if plain_ranks is None
        else (torch.tensor(plain_ranks[0]), torch.tensor(plain_ranks[1]))
    )


def comparison_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The comparison's row(s) of one engine record: the model's, and for FLAME its frozen
    stage-1 SASRec's."""
    result, measured = record["result"], record["result"]["comparison"]
    row = {
        "model": result["model"],
        "seed": record["seed"],
        "valid_metric": measured["valid_metric"],
        "settings": measured["settings"],
        "test_result": dict(result["test_result"]),
        "best_valid_result": dict(result["best_valid_result"] or {}),
        "epoch_seconds": statistics.median(result["epoch_train_seconds"])
        if result["epoch_train_seconds"]
        else float("nan"),
        "inference_seconds_per_batch": measured["inference_seconds_per_batch"],
        "parameters": measured["parameters"],
        "curve": [(h["epoch"], h["valid_score"]) for h in result["valid_history"]],
        "best_epoch": result["best_epoch"],
        "seconds_to_best": result["elapsed_seconds_to_best"],
        "ranks": _ranks(measured["ranks"]),
    }
    if "frozen" not in measured:
        return [row]
    frozen, curve = measured["frozen"], result.get("stage1_learning_curve") or {}
    return [
        row,
        {
            **row,
            "model": f"{row['model']} (frozen)",
            "test_result": dict(result["stage1_test_result"]),
            "best_valid_result": dict(result.get("stage1_valid_result") or {}),
            "epoch_seconds": float("nan"),  # stage 1 may be cached or given: not timed here
            "inference_seconds_per_batch": frozen["inference_seconds_per_batch"],
            "parameters": frozen["parameters"],
            "curve": [(h["epoch"], h["valid_score"]) for h in curve.get("valid_history", [])],
            "best_epoch": curve.get("best_epoch"),
            "seconds_to_best": curve.get("elapsed_seconds_to_best"),
            "ranks": _ranks(frozen["ranks"]),
        },
    ]


# Fewer paired seeds than this give no across-seed p-value (two equal differences gave
# "p = 0.000" once; a t-test on 2 pairs has 1 degree of freedom).
MIN_SEEDS_FOR_P = 3
# A line says so when one model has more than this many times another's parameters.
PARAMETER_RATIO = 2.0
# The level the verdict line calls a corrected p-value significant at.
ALPHA = 0.05


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (``logloss``: yes; ``ndcg@10``: no), by
    RecBole's own list of such metrics."""
    from recbole.evaluator.register import smaller_metrics

    return metric.split("@")[0].lower() in smaller_metrics


def best_models(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, list[str]]:
    """Per metric, the model(s) with the best mean (ties share it; NaN means never win)."""
    best = {}
    for metric in metrics:
        means = [(row[metric]["mean"], row["model"]) for row in rows]
        means = [(m, model) for m, model in means if m == m]
        if not means:
            best[metric] = []
            continue
        top = (min if lower_is_better(metric) else max)(m for m, _ in means)
        best[metric] = [model for m, model in means if m == top]
    return best


def pairwise_tests(
    by_model: dict[str, list[dict[str, Any]]], models: Sequence[str], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """Every pair of models, later minus earlier (``a - b``): per metric the per-seed test
    differences, the seeds on which ``a`` was better and, from MIN_SEEDS_FOR_P seeds, a paired
    t-test across seeds; per seed a paired t-test over test users on the validation metric.
    Each p-value has its Holm correction (``p_holm``) over the pairs: for the across-seed tests
    the family is one metric's pairs, for the per-user tests one seed's pairs."""
    pairs = []
    for i, b in enumerate(models):
        for a in models[i + 1 :]:
            runs_a = {r["seed"]: r for r in by_model[a]}
            runs_b = {r["seed"]: r for r in by_model[b]}
            seeds = sorted(set(runs_a) & set(runs_b))
            entry: dict[str, Any] = {"a": a, "b": b, "seeds": seeds, "metrics": {}, "per_user": {}}
            for metric in metrics:
                va = [runs_a[s]["test_result"][metric] for s in seeds]
                vb = [runs_b[s]["test_result"][metric] for s in seeds]
                diffs = [x - y for x, y in zip(va, vb, strict=True)]
                sign = -1 if lower_is_better(metric) else 1
                # The same difference on every seed (metrics are rounded to 4 digits, so it
                # happens) leaves the t-test nothing but rounding noise: p 0 or NaN, no test.
                spread = max(diffs) - min(diffs) if diffs else 0.0
                constant = spread <= 1e-12 * max([1.0, *(abs(d) for d in diffs)])
                p = None
                if len(seeds) >= MIN_SEEDS_FOR_P and not constant:
                    p = paired_test(va, vb).p
                entry["metrics"][metric] = {
                    "mean_diff": statistics.fmean(diffs) if diffs else float("nan"),
                    "diffs": diffs,
                    "a_better_seeds": sum(1 for d in diffs if sign * d > 0),
                    "same_on_every_seed": len(diffs) > 1 and constant,
                    "p": None if p is None or p != p else p,
                    "p_holm": None,
                }
            for seed in seeds:
                ra, rb = runs_a[seed], runs_b[seed]
                if ra["ranks"] is not None and rb["ranks"] is not None:
                    metric = ra["valid_metric"].lower()
                    test = paired_users(ra["ranks"], rb["ranks"], metric)
                    entry["per_user"][seed] = {"metric": metric, **test, "p_holm": None}
            pairs.append(entry)
    for metric in metrics:
        cells = [pair["metrics"][metric] for pair in pairs]
        for cell, adjusted in zip(cells, holm([c["p"] for c in cells]), strict=True):
            cell["p_holm"] = adjusted
    for seed in sorted({s for pair in pairs for s in pair["per_user"]}):
        tests = [pair["per_user"][seed] for pair in pairs if seed in pair["per_user"]]
        for test, adjusted in zip(tests, holm([t["p"] for t in tests]), strict=True):
            test["p_holm"] = adjusted
    return pairs


def parameter_note(rows: Sequence[dict[str, Any]]) -> str | None:
    """One line when a model has more than PARAMETER_RATIO times the parameters of the
    smallest: a score difference may then be one of size, not of method."""
    sized = [(row["parameters"], row["model"]) for row in rows if row["parameters"] > 0]
    if len(sized) < 2:
        return None
    smallest, name = min(sized)
    larger = [(n, m) for n, m in sized if n > PARAMETER_RATIO * smallest]
    if not larger:
        return None
    listed = ", ".join(f"{m} has {n:,} ({n / smallest:.1f}x)" for n, m in larger)
    return (
        f"parameters differ by more than {PARAMETER_RATIO:g}x: {listed} against {name}'s "
        f"{smallest:,}; part of a score difference may be size, not method (match hidden_size "
        "or embedding_size to compare like with like)"
    )


def summarize(
    runs: list[dict[str, Any]], notes: Sequence[str] = (), dataset: str | None = None
) -> dict[str, Any]:
    """Mean and std per model and the best model per metric; between every pair of models,
    paired tests across seeds (from MIN_SEEDS_FOR_P seeds) and per seed over test users, Holm-
    corrected (:func:`pairwise_tests`); a line when parameter counts differ by more than
    PARAMETER_RATIO. ``p_vs_first`` and ``per_user_vs_first`` keep each model's uncorrected
    tests against the first model, as before."""
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
    best = best_models(rows, metrics)
    for row in rows:
        for metric in metrics:
            row[metric]["best"] = row["model"] in best[metric]
    kept = [{k: v for k, v in r.items() if k != "ranks"} for r in runs]
    return {
        "dataset": dataset,
        "models": models,
        "metrics": metrics,
        "rows": rows,
        "best": best,
        "pairwise": pairwise_tests(by_model, models, metrics),
        "parameter_note": parameter_note(rows),
        "notes": list(notes),
        "runs": plain(kept),
    }


def _p_text(p: float | None) -> str:
    return "-" if p is None else f"{p:.3g}"


def _pair_cell(cell: dict[str, Any], seeds: int) -> str:
    """``+0.0012, 3/3 seeds, p=0.04``: mean difference, seeds won, Holm-corrected p."""
    text = f"{cell['mean_diff']:+.4f}, {cell['a_better_seeds']}/{seeds} seeds"
    if cell["p_holm"] is not None:
        text += f", p={cell['p_holm']:.3g}"
    elif cell.get("same_on_every_seed"):
        text += ", the same on every seed"
    return text


def verdict(summary: dict[str, Any]) -> str | None:
    """Who won on the validation metric's test value, and whether the lead over each other
    model holds up under the corrected tests."""
    metric = summary["runs"][0]["valid_metric"].lower()
    if metric not in summary["metrics"] or not summary["best"].get(metric):
        return None
    winners = summary["best"][metric]
    rows = {row["model"]: row for row in summary["rows"]}
    seeds = len(summary["rows"][0]["seeds"])
    text = (
        f"Best on test {metric} (the validation metric): {' and '.join(winners)} "
        f"({rows[winners[0]][metric]['mean']:.4f})"
    )
    leads = []
    for pair in summary["pairwise"]:
        if winners[0] not in (pair["a"], pair["b"]):
            continue
        other = pair["b"] if pair["a"] == winners[0] else pair["a"]
        if other in winners:
            continue
        sign = 1 if pair["a"] == winners[0] else -1
        cell = pair["metrics"][metric]
        lead = f"over {other} by {sign * cell['mean_diff']:+.4f}"
        if cell["p_holm"] is not None:
            held = "significant" if cell["p_holm"] < ALPHA else "not significant"
            lead += f" ({held} across seeds, Holm p = {cell['p_holm']:.3g})"
        elif pair["per_user"]:
            tests = list(pair["per_user"].values())
            held = sum(1 for t in tests if t["p_holm"] is not None and t["p_holm"] < ALPHA)
            lead += (
                f" (per user significant on {held} of {len(tests)} seed(s), Holm; fewer than "
                f"{MIN_SEEDS_FOR_P} seeds give no test across seeds)"
            )
        leads.append(lead)
    if leads:
        text += ": " + "; ".join(leads)
    if seeds < MIN_SEEDS_FOR_P:
        text += (
            f". With {seeds} seed(s) the seed-to-seed spread is untested; "
            f"{MIN_SEEDS_FOR_P} or more seeds test it"
        )
    return text + "."


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
            cells.append(f"**{text}**" if cell.get("best") else text)
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
    pairs = summary.get("pairwise", [])
    lower = [m for m in metrics if lower_is_better(m)]
    note = (
        f"\nTest metrics of the best-validation model; epochs and wall time (training and "
        f"validation) until the best validation epoch; seeds {seeds}"
    )
    if len(seeds) > 1:
        note += "; mean ± std"
    note += "; bold: the best model per metric (highest"
    note += f"; lowest for {', '.join(lower)})" if lower else ")"
    if len(seeds) < MIN_SEEDS_FOR_P:
        note += f"; no p-value across seeds (fewer than {MIN_SEEDS_FOR_P})"
    note += "."
    text = "\n".join(lines) + note
    if pairs and len(seeds) > 1:
        lines = [
            "| pair | " + " | ".join(metrics) + " |",
            "|" + "---|" * (len(metrics) + 1),
        ]
        for pair in pairs:
            n = len(pair["seeds"])
            cells = [_pair_cell(pair["metrics"][m], n) for m in metrics]
            lines.append(f"| {pair['a']} - {pair['b']} | " + " | ".join(cells) + " |")
        how = (
            f"p: paired t-test across seeds, Holm-corrected over the {len(pairs)} pairs of each "
            "metric"
            if len(seeds) >= MIN_SEEDS_FOR_P
            else f"no p-value: a t-test across seeds needs {MIN_SEEDS_FOR_P} or more; the "
            "per-user tests below are each seed's evidence"
        )
        better = f" (lower is better for {', '.join(lower)})" if lower else ""
        text += (
            "\n\nEvery pair, a - b: the mean test difference, the seeds on which a was "
            f"better{better}, {how}.\n\n" + "\n".join(lines)
        )
    tested = [(pair, seed, t) for pair in pairs for seed, t in pair["per_user"].items()]
    if tested:
        per_seed = len(pairs)
        text += (
            "\n\nPer seed, every pair on the same test users: paired t-test over users on the "
            f"validation metric; Holm p corrected over the {per_seed} pairs of that seed."
        )
        for pair, seed, t in tested:
            # relative to b, which a model scoring 0 on every user leaves undefined
            relative = t["relative_diff"]
            relative = f" ({relative:+.1%})" if relative == relative else ""
            text += (
                f"\n{pair['a']} - {pair['b']}, seed {seed}, test {t['metric']} per user over "
                f"{t['users']} users: {t['mean_diff']:+.4f}{relative}, "
                f"paired t = {t['t']:.2f}, p = {t['p']:.3g}, Holm p = {_p_text(t['p_holm'])}"
            )
    said = verdict(summary) if pairs else None
    if said:
        text += f"\n\n{said}"
    extra = [summary["parameter_note"]] if summary.get("parameter_note") else []
    for line in [*extra, *summary.get("notes", [])]:
        text += f"\n{line}"
    return text


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
                + [f"{m}_best" for m in metrics]
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
                cells += [int(bool(row[m].get("best"))) for m in metrics]
                writer.writerow(cells)

    replace("comparison.csv", write_csv)
    replace("convergence.png", lambda p: plot_curves(summary, p))


def plot_title(summary: dict[str, Any]) -> str:
    """``ml-100k: validation NDCG@20 per epoch, mean over 3 seeds``."""
    seeds = len(summary["rows"][0]["seeds"])
    where = f"{summary['dataset']}: " if summary.get("dataset") else ""
    over = f", mean over {seeds} seeds" if seeds > 1 else f", seed {summary['rows'][0]['seeds'][0]}"
    return f"{where}validation {summary['runs'][0]['valid_metric']} per epoch{over}"


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
    title = plot_title(summary)
    ax.set_title(title, fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    # the title also as the PNG's Title text chunk, so a reader (or a test) finds it by name
    fig.savefig(path, format="png", dpi=120, metadata={"Title": title})
    plt.close(fig)
