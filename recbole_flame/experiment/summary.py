"""An experiment's summary (``summary.md``): mean ± sd per run over its finished seeds, model
diagnostics (``extras``), milestones, time to accuracy and paired t-tests, all from the result
files (nothing is trained or scored here)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from recbole_flame.experiment.output import markdown_table
from recbole_flame.experiment.spec import dig, result_file
from recbole_flame.experiment.stats import mean_sd_text, paired_test

# The metric columns' order when a spec does not give ``report``; others go last.
METRIC_ORDER = ("hit", "recall", "ndcg", "mrr", "auc", "logloss")


def time_to_accuracy(fast: dict[int, dict], slow: dict[int, dict], a: str, b: str) -> str:
    """Per seed: wall seconds ``a`` took to first reach ``b``'s best validation score, over the
    seconds ``b`` took to reach it (both from the runs' learning curves, the same machine)."""
    parts, ratios = [], []
    for seed in sorted(set(fast) & set(slow)):
        target_curve = slow[seed]["result"]
        target = max(h["valid_score"] for h in target_curve["valid_history"])
        reached = next(
            (h for h in fast[seed]["result"]["valid_history"] if h["valid_score"] >= target), None
        )
        if reached is None:
            parts.append(f"seed {seed}: never reached {target:.4f}")
            continue
        ratio = reached["elapsed_seconds"] / target_curve["elapsed_seconds_to_best"]
        ratios.append(ratio)
        parts.append(
            f"seed {seed}: {reached['elapsed_seconds']:.0f} s (epoch {reached['epoch']}) / "
            f"{target_curve['elapsed_seconds_to_best']:.0f} s = {ratio:.3f}"
        )
    head = f"Time to accuracy, {a} to {b}'s best valid score / {b}'s time to it"
    if ratios:
        head += f": mean {statistics.mean(ratios):.3f}"
    return head + " (" + "; ".join(parts or ["no paired seeds"]) + ")"


def milestone_table(records: dict[str, dict[int, dict]], milestones: list[float]) -> str:
    """The first epoch (0-based, as RecBole counts) whose validation score reaches each
    milestone, per run and seed ("-": never), from the runs' ``valid_history``."""
    rows = []
    for label, runs in records.items():
        for seed, record in sorted(runs.items()):
            history = record["result"].get("valid_history") or []
            if not history:
                continue
            cells = [
                next((str(h["epoch"]) for h in history if h["valid_score"] >= m), "-")
                for m in milestones
            ]
            rows.append([label, seed, *cells])
    headers = ["run", "seed", *[f"first epoch at valid {m:g}" for m in milestones]]
    return markdown_table(headers, rows)


def load_records(spec: dict, out_dir: Path) -> dict[str, dict[int, dict]]:
    """The finished (run, seed) results of ``spec`` under ``out_dir`` (label -> seed ->
    record), with the rows ``derived`` makes from entries inside a run's result."""
    records: dict[str, dict[int, dict]] = {}
    for label in spec["runs"]:
        for seed in spec["seeds"]:
            path = result_file(out_dir, label, seed)
            if path.is_file():
                records.setdefault(label, {})[seed] = json.loads(path.read_text())
    # A run's result may hold a baseline measured inside it (FLAME's frozen stage-1 SASRec on
    # the same splits): ``derived`` turns such entries into a row of their own, per seed.
    for name, entry in spec.get("derived", {}).items():
        for seed, record in records.get(entry["from"], {}).items():
            result = {key: dig(record["result"], path) for key, path in entry["result"].items()}
            if result.get("test_result"):
                records.setdefault(name, {})[seed] = {"result": result}
    return records


def _metric_key(metric: str) -> tuple[int, int]:
    name, _, k = metric.partition("@")
    return (METRIC_ORDER.index(name) if name in METRIC_ORDER else 99, int(k) if k else 0)


def summarize(spec: dict, out_dir: Path) -> str:
    """Markdown: mean ± std per run over the finished seeds, and paired t-tests."""
    records = load_records(spec, out_dir)
    metrics = spec.get("report") or sorted(
        {k for runs in records.values() for r in runs.values() for k in r["result"]["test_result"]},
        key=_metric_key,
    )
    headers = [
        "run",
        "seeds",
        *metrics,
        "best epoch",
        "epochs run",
        "train s / epoch",
        "s to best",
        "s total",
    ]
    rows = []
    for label, runs in records.items():
        results = [r["result"] for r in runs.values()]
        rows.append(
            [
                label,
                len(results),
                # a metric only some models report (CANet's flops_ratio) reads "-" for others
                *[
                    mean_sd_text(
                        [float(r["test_result"][m]) for r in results if m in r["test_result"]]
                    )
                    for m in metrics
                ],
                *[
                    mean_sd_text([float(r[k]) for r in results if r.get(k) is not None]).replace(
                        ".0000", ""
                    )
                    for k in ("best_epoch", "epochs_run")
                ],
                # the median epoch: robust to the first epoch's warm-up and to machine load
                mean_sd_text(
                    [
                        statistics.median(r["epoch_train_seconds"])
                        for r in results
                        if r.get("epoch_train_seconds")
                    ]
                ),
                *[
                    mean_sd_text([float(r[k]) for r in results if r.get(k) is not None])
                    for k in ("elapsed_seconds_to_best", "elapsed_seconds")
                ],
            ]
        )
    lines = [f"### {spec['name']}: {spec.get('description', '')}".rstrip(": "), ""]
    lines.append(markdown_table(headers, rows))
    if spec["extras"]:
        extra_rows = []
        for label, runs in records.items():
            cells = []
            for path in spec["extras"].values():
                values = [dig(r["result"], path) for r in runs.values()]
                cells.append(mean_sd_text([float(v) for v in values if v is not None]))
            if any(c != "-" for c in cells):
                extra_rows.append([label, len(runs), *cells])
        if extra_rows:
            lines.append("")
            lines.append(markdown_table(["run", "seeds", *spec["extras"]], extra_rows))
    if spec.get("milestones"):
        lines.append("")
        lines.append(milestone_table(records, spec["milestones"]))
    for a, b in spec.get("time_to_accuracy", []):
        lines.append("\n" + time_to_accuracy(records.get(a, {}), records.get(b, {}), a, b))
    lines += paired_lines(spec, records, metrics)
    return "\n".join(lines)


def paired_lines(spec: dict, records: dict[str, dict[int, dict]], metrics: list[str]) -> list[str]:
    """One line per ``compare`` pair and test metric (default: the last two metric columns):
    the paired difference over the seeds both runs finished, or why there is no test."""
    lines = []
    for a, b in spec["compare"]:
        common = sorted(set(records.get(a, {})) & set(records.get(b, {})))
        if len(common) < 2:
            lines.append(f"\n{a} vs {b}: {len(common)} paired seed(s), no test")
            continue
        for m in spec.get("test_metrics", metrics[-2:]):
            xa = [float(records[a][s]["result"]["test_result"][m]) for s in common]
            xb = [float(records[b][s]["result"]["test_result"][m]) for s in common]
            test = paired_test(xa, xb)
            lines.append(
                f"\n{a} - {b}, test {m}: {test.difference_text()} over seeds {common}, "
                f"{test.test_text()}"
            )
    return lines
