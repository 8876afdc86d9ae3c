"""The results page of the docs and the headline numbers elsewhere, generated from the
committed result files.

``python benchmarks/report.py`` (from the repository root) rewrites
``docs/results.md``, one section per experiment of ``benchmarks/experiments/`` with its status
and the summary the engine computes from its result files, the learning-curve and
accuracy-compute plots under ``docs/img/``, and every headline in README.md and the docs pages:
the text between ``<!-- h:NAME -->`` and ``<!-- /h -->``, from the ``headline`` entry of spec
NAME (``{run: A, against: B, metric: ndcg@20}``; ``against_as`` names B in the text;
``form: ratio`` for "0.94 of B's"; ``convergence: True`` adds FLAME's convergence ratio), and
the micro-benchmark tables between ``<!-- micro:NAME -->`` and ``<!-- /micro -->`` from their
result files, and the tables between ``<!-- table:NAME -->`` and ``<!-- /table -->`` drawn from
several experiments' result files (:data:`RESULT_TABLES`). ``--check`` only says whether all
of it is current (the test suite runs it). No number is typed by hand.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from recbole_flame.experiment.output import markdown_table
from recbole_flame.experiment.spec import load_spec, parked_file, result_file, slug
from recbole_flame.experiment.summary import load_records, summarize
from recbole_flame.utils.errors import UserError

EXPERIMENTS = Path("benchmarks") / "experiments"
RESULTS = Path("benchmarks") / "results"
IMG = "img"


def specs(root: Path) -> list[dict[str, Any]]:
    """Every experiment spec under ``root/benchmarks/experiments`` (files that are not specs,
    such as a RecBole config file kept beside them, are skipped), by name."""
    found = []
    for path in sorted((root / EXPERIMENTS).glob("*.yaml")):
        try:
            found.append(load_spec(path))
        except UserError:
            continue
    return found


def status(spec: dict[str, Any], out_dir: Path) -> tuple[str, int, int]:
    """(state, finished (run, seed) pairs, all pairs of the spec). The state: ``converged``
    (every pair reached early stopping), ``in progress`` (a pair is parked or has a curve so
    far), ``partly run`` (the other pairs were never started) or ``not run``."""
    pairs = [(label, seed) for seed in spec["seeds"] for label in spec["runs"]]
    done = sum(result_file(out_dir, label, seed).is_file() for label, seed in pairs)
    if done == len(pairs):
        return "converged", done, len(pairs)
    started = any(
        parked_file(out_dir, label, seed).is_file()
        or (out_dir / f"in_progress-{slug(label)}-seed{seed}.md").is_file()
        for label, seed in pairs
    )
    if started:
        return "in progress", done, len(pairs)
    return ("partly run" if done else "not run"), done, len(pairs)


# --- plots -----------------------------------------------------------------------------------
def _curve(history: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    return [h["epoch"] for h in history], [h["valid_score"] for h in history]


def _valid_metric(records: dict[str, dict[int, dict]]) -> str:
    """The metric the runs selected on: the spec's, else the evaluation profile's (this
    package's ranking models select on it unless told otherwise)."""
    from recbole_flame.utils.paths import profile

    for runs in records.values():
        for record in runs.values():
            metric = (record.get("config") or {}).get("valid_metric")
            if metric:
                return metric
    return profile("evaluation")["valid_metric"]


def _figure(panels: int, size: tuple[float, float], columns: int | None = None):
    """A figure of ``panels``, ``columns`` to a row (default: all side by side), each ``size``
    inches, drawn off screen; unused cells of the last row are hidden."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(columns or panels, panels)
    rows = -(-panels // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(size[0] * columns, size[1] * rows), squeeze=False
    )
    cells = [ax for row in axes for ax in row]
    for ax in cells[panels:]:
        ax.set_visible(False)
    return fig, cells[:panels]


def _label_curves(ax, name: str, metric: str) -> None:
    """A learning-curve panel's title, axes and legend."""
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"valid {metric}")
    ax.legend(fontsize=6)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_flame(root: Path, path: Path) -> bool:
    """FLAME's stage 2 against its stage-1 SASRec (or the given frozen network), validation
    score by epoch, one panel per converged FLAME experiment."""
    panels = []
    for spec in specs(root):
        records = load_records(spec, root / RESULTS / spec["name"])
        flame = records.get("FLAME")
        if spec["runs"].get("FLAME", {}).get("model") == "FLAME" and flame:
            panels.append((spec["name"], flame, _valid_metric(records)))
    if not panels:
        return False
    fig, axes = _figure(len(panels), (4.2, 3.4))
    for ax, (name, runs, metric) in zip(axes, panels, strict=True):
        for i, (seed, record) in enumerate(sorted(runs.items())):
            result = record["result"]
            color = f"C{i}"
            ax.plot(*_curve(result["valid_history"]), color=color, label=f"FLAME, seed {seed}")
            stage1 = (result.get("stage1_learning_curve") or {}).get("valid_history")
            if stage1:
                ax.plot(*_curve(stage1), color=color, ls="--", label=f"stage 1, seed {seed}")
            else:
                frozen = (result.get("stage1_valid_result") or {}).get(metric.lower())
                if frozen is not None:
                    ax.axhline(frozen, color=color, ls=":", label="frozen network")
        _label_curves(ax, name, metric)
    _save(fig, path)
    return True


def plot_dense(root: Path, path: Path) -> bool:
    """Dense against prefix training: every run's validation curve, one panel per dataset."""
    panels = []
    for spec in specs(root):
        if spec["name"].startswith("dense_"):
            records = load_records(spec, root / RESULTS / spec["name"])
            if records:
                panels.append((spec["name"], records, _valid_metric(records)))
    if not panels:
        return False
    fig, axes = _figure(len(panels), (5.2, 3.6))
    for ax, (name, records, metric) in zip(axes, panels, strict=True):
        for i, (label, runs) in enumerate(records.items()):
            for j, (_, record) in enumerate(sorted(runs.items())):
                ax.plot(
                    *_curve(record["result"]["valid_history"]),
                    color=f"C{i}",
                    alpha=0.8,
                    lw=1,
                    label=label if j == 0 else None,
                )
        _label_curves(ax, name, metric)
    _save(fig, path)
    return True


def canet_points(root: Path) -> list[dict[str, Any]]:
    """Every finished run of every experiment with a CANet run, averaged over its seeds: its
    experiment, label, whether it is a static sub-network (a ``fixed_route`` run, the full
    supernet among them), its FLOPs ratio (1 for a run without one: a model of the full route's
    size) and its test metrics."""
    points = []
    for spec in specs(root):
        if not any(r.get("model") == "CANet" for r in spec["runs"].values()):
            continue
        for label, runs in load_records(spec, root / RESULTS / spec["name"]).items():
            if not runs:
                continue
            run = spec["runs"].get(label) or {}  # a derived row is no run of its own
            tests = [record["result"]["test_result"] for record in runs.values()]
            test = {
                key: statistics.mean(float(t[key]) for t in tests)
                for key in tests[0]
                if key != "flops_ratio"
            }
            length = spec["base"].get("MAX_ITEM_LIST_LENGTH", "default")
            points.append(
                {
                    # a static line is a line of one data setting: dataset and sequence length
                    "data": f"{spec['dataset']}, L = {length}",
                    "experiment": spec["name"],
                    "label": label,
                    "model": run.get("model", ""),
                    "static": bool((run.get("config") or {}).get("fixed_route")),
                    "ratio": statistics.mean(float(t.get("flops_ratio", 1.0)) for t in tests),
                    "seeds": len(tests),
                    "test": test,
                }
            )
    return points


def static_line(points: list[dict[str, Any]], ratio: float, metric: str, data: str) -> float | None:
    """The static sub-networks' ``metric`` on ``data`` at ``ratio``, linear between the two
    static points around it; None outside their range."""
    line = sorted(
        (p["ratio"], p["test"][metric]) for p in points if p["static"] and p["data"] == data
    )
    for (r0, v0), (r1, v1) in zip(line, line[1:], strict=False):
        if r0 <= ratio <= r1:
            return v0 if r1 == r0 else v0 + (v1 - v0) * (ratio - r0) / (r1 - r0)
    return None


def plot_canet(root: Path, path: Path, metric: str = "ndcg@10") -> bool:
    """CANet's accuracy against its FLOPs ratio (:func:`canet_points`), one panel per data
    setting in spec order; each panel's static sub-networks are joined into one line."""
    points = canet_points(root)
    if not points:
        return False
    settings = list(dict.fromkeys(p["data"] for p in points))
    fig, axes = _figure(len(settings), (4.6, 3.4), columns=2)
    for ax, data in zip(axes, settings, strict=True):
        here = [p for p in points if p["data"] == data]
        # The line a routed model has to lie above to beat a smaller model of the same cost.
        static = sorted((p["ratio"], p["test"][metric]) for p in here if p["static"])
        if static:
            ax.plot(
                *zip(*static, strict=True), "k--", marker="s", lw=1, label="static sub-networks"
            )
        for i, p in enumerate(p for p in here if not p["static"]):
            ax.scatter([p["ratio"]], [p["test"][metric]], color=f"C{i}", label=p["label"])
        seeds = sorted({p["seeds"] for p in here})
        ax.set_title(f"{data} ({'/'.join(map(str, seeds))} seed{'s' * (seeds != [1])})", fontsize=9)
        ax.set_xlabel("FLOPs ratio (full route = 1)")
        ax.set_ylabel(f"test {metric}")
        ax.set_xlim(0, 1.1)
        # at least +-10% of the panel's mean, so that differences of a few thousandths (within
        # the seed spread) do not fill the panel as if they were large
        values = [p["test"][metric] for p in here]
        centre = statistics.mean(values)
        ax.set_ylim(min(min(values), 0.9 * centre) * 0.98, max(max(values), 1.1 * centre) * 1.02)
        ax.legend(fontsize=7)
    _save(fig, path)
    return True


def canet_table(root: Path, metric: str = "ndcg@10") -> str:
    """The table of :func:`plot_canet`'s points, by FLOPs ratio, with each routed CANet
    point's distance above the static line at its ratio (:func:`static_line`)."""
    found = canet_points(root)
    first = {p["data"]: i for i, p in reversed(list(enumerate(found)))}  # data in spec order
    points = sorted(found, key=lambda p: (first[p["data"]], p["ratio"], p["label"]))
    if not points:
        return "not run yet"
    metrics = ["hit@10", "hit@20", "ndcg@10", "ndcg@20"]
    headers = [
        "data",
        "run",
        "kind",
        "experiment",
        "seeds",
        "FLOPs ratio",
        *[f"test {m}" for m in metrics],
        f"static line's {metric} at its ratio",
        "above the static line by",
    ]
    rows = []
    for p in points:
        routed = p["model"] == "CANet" and not p["static"]
        line = static_line(points, p["ratio"], metric, p["data"]) if routed else None
        kind = "static sub-network" if p["static"] else "routed" if routed else p["model"]
        rows.append(
            [
                p["data"],
                p["label"],
                kind,
                p["experiment"],
                str(p["seeds"]),
                f"{p['ratio']:.2f}",
                *[f"{p['test'][m]:.4f}" if m in p["test"] else "-" for m in metrics],
                "-" if line is None else f"{line:.4f}",
                "-" if line is None else f"{p['test'][metric] - line:+.4f}",
            ]
        )
    return markdown_table(headers, rows)


def flame_dataset_rows(root: Path, metric: str = "ndcg@20") -> list[dict[str, Any]]:
    """One row per FLAME experiment in its authors' prefix recipe (a FLAME run, prefix
    training, the authors' end-aligned positions), first seed: the dataset as its runs see it
    (``dataset.json`` of ``benchmarks/probes/dataset_stats.py``), the frozen network's and
    FLAME's test ``metric``, the per-user paired test (``per_user-seed<k>.json``) and how fast
    stage 2 reached the frozen network's best validation score."""
    rows = []
    for spec in specs(root):
        base = spec["base"]
        flame = next((k for k, r in spec["runs"].items() if r.get("model") == "FLAME"), None)
        if flame is None or base.get("train_mode") != "prefix":
            continue
        if base.get("position_alignment") != "end":
            continue
        out_dir = root / RESULTS / spec["name"]
        seed = spec["seeds"][0]
        stats_file = out_dir / "dataset.json"
        stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
        frozen_given = bool(base.get("frozen_checkpoint"))
        row: dict[str, Any] = {
            "experiment": spec["name"],
            "dataset": spec["dataset"],
            "frozen": "the authors' released SASRec" if frozen_given else "our stage 1",
            "stats": stats,
            "state": status(spec, out_dir)[0],
        }
        record_file = result_file(out_dir, flame, seed)
        if record_file.is_file():
            result = json.loads(record_file.read_text())["result"]
            row["flame"] = result["test_result"].get(metric)
            row["frozen_score"] = (result.get("stage1_test_result") or {}).get(metric)
            row["reached"] = result.get("stage2_epoch_reaching_stage1_best")
            row["ratio"] = result.get("convergence_ratio")
            row["best_epoch"] = result.get("best_epoch")
        else:
            probe = out_dir / f"frozen_score-seed{seed}.json"
            if probe.is_file():
                row["frozen_score"] = json.loads(probe.read_text())["test_result"].get(metric)
        per_user = out_dir / f"per_user-seed{seed}.json"
        if per_user.is_file():
            paired = json.loads(per_user.read_text()).get("paired") or {}
            test = next(iter(paired.values()), None)
            row["p"] = test.get("p") if test else None
        rows.append(row)
    return rows


def flame_datasets_table(root: Path, metric: str = "ndcg@20") -> str:
    """:func:`flame_dataset_rows` as a table."""
    rows = flame_dataset_rows(root, metric)
    if not rows:
        return "not run yet"
    headers = [
        "dataset",
        "frozen SASRec",
        "users",
        "items",
        "mean sequence length",
        f"frozen test {metric}",
        f"FLAME test {metric}",
        "gain (p, per user)",
        "stage-2 epoch reaching the frozen best valid (best epoch; convergence ratio)",
        "state",
    ]
    table = []
    for r in rows:
        stats, flame, frozen = r["stats"], r.get("flame"), r.get("frozen_score")
        gain = "-"
        if flame is not None and frozen:
            gain = f"{(flame - frozen) / frozen:+.1%}"
            if r.get("p") is not None:
                gain += f" (p = {r['p']:.2g})"
        conv = "-"
        if flame is not None:
            conv = f"{r.get('reached') or 'never'} ({r.get('best_epoch')}"
            conv += f"; {r['ratio']:.2g})" if r.get("ratio") else ")"
        table.append(
            [
                r["dataset"],
                r["frozen"],
                f"{stats['users']:,}" if stats else "-",
                f"{stats['items']:,}" if stats else "-",
                f"{stats['mean_length']:.2f}" if stats else "-",
                "-" if frozen is None else f"{frozen:.4f}",
                "-" if flame is None else f"{flame:.4f}",
                gain,
                conv,
                r["state"],
            ]
        )
    return markdown_table(headers, table)


def flame_gain_range(root: Path, metric: str = "ndcg@20") -> str:
    """One line for the README: the least and the largest gain of FLAME over its frozen
    SASRec across the finished runs of :func:`flame_dataset_rows`, and on which datasets."""
    done = [r for r in flame_dataset_rows(root, metric) if r.get("flame") is not None]
    done = [r for r in done if r.get("frozen_score")]
    if not done:
        return "not finished on any dataset yet"
    gains = sorted(((r["flame"] - r["frozen_score"]) / r["frozen_score"], r) for r in done)
    (lo, lo_row), (hi, hi_row) = gains[0], gains[-1]
    datasets = sorted({r["dataset"] for r in done})
    shown = metric.replace("ndcg", "NDCG")
    return (
        f"test {shown} {lo:+.1%} ({lo_row['dataset']}, {lo_row['frozen']}) to {hi:+.1%} "
        f"({hi_row['dataset']}, {hi_row['frozen']}) over the frozen SASRec, {len(done)} "
        f"run{'s' if len(done) > 1 else ''} on {len(datasets)} of the paper's datasets "
        f"({', '.join(datasets)})"
    )


PLOTS = {
    "flame_curves.png": (plot_flame, "FLAME against its stage-1 SASRec (dashed) or frozen network"),
    "dense_vs_prefix.png": (plot_dense, "Dense against prefix training, SASRec"),
    "canet_accuracy_compute.png": (
        plot_canet,
        "CANet: test NDCG@10 against FLOPs ratio, per dataset",
    ),
}


# --- headlines -------------------------------------------------------------------------------
def marker(tag: str, names: str = "a-z_") -> re.Pattern:
    """The pattern of a generated span ``<!-- TAG:NAME -->...<!-- /TAG -->``."""
    return re.compile(rf"(<!-- {tag}:([{names}]+) -->)(.*?)(<!-- /{tag} -->)", re.S)


def fill_markers(text: str, pattern: re.Pattern, what: str, render: Any) -> str:
    """``text`` with the body of every ``pattern`` span replaced by ``render(name)``; a name
    ``render`` does not know (None) stops with one line naming ``what`` it should name."""

    def fill(match: re.Match) -> str:
        body = render(match.group(2))
        if body is None:
            raise UserError(f"a docs marker names no {what}: {match.group(2)}")
        return match.group(1) + body + match.group(4)

    return pattern.sub(fill, text)


HEADLINE = marker("h", "A-Za-z0-9_")


def headline(spec: dict[str, Any], root: Path) -> str:
    """The spec's ``headline``: run A against run B on one test metric, mean over the seeds
    both finished (and a paired p from 3 seeds on)."""
    from recbole_flame.experiment.stats import paired_test

    entry = spec.get("headline")
    if not entry:
        raise UserError(f"spec {spec['name']} has no headline entry")
    records = load_records(spec, root / RESULTS / spec["name"])
    a, b, metric = entry["run"], entry["against"], entry["metric"]
    seeds = sorted(set(records.get(a, {})) & set(records.get(b, {})))
    if not seeds:
        return f"{a} against {b}: not finished"
    xa = [float(records[a][s]["result"]["test_result"][metric]) for s in seeds]
    xb = [float(records[b][s]["result"]["test_result"][metric]) for s in seeds]
    ma, mb = statistics.mean(xa), statistics.mean(xb)
    b = entry.get("against_as", b)  # how the text names B, where its run label is terse
    shown_metric = metric.replace("ndcg", "NDCG").replace("hit", "HR").replace("auc", "AUC")
    runs = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}"
    if len(seeds) >= 3:
        p_value = paired_test(xa, xb).p
        runs += ", p < 0.01" if p_value < 0.01 else f", p = {p_value:.2f}"
    if entry.get("form") == "ratio":
        text = f"{ma / mb:.2f} of {b}'s test {shown_metric}"
        flops = [records[a][s]["result"]["test_result"].get("flops_ratio") for s in seeds]
        if all(f is not None for f in flops):
            text += f" at {statistics.mean(flops):.2f} of its FLOPs"
        return f"{text} ({runs})"
    if entry.get("convergence"):  # FLAME's: stage 1's epochs to its best / stage 2's to it
        ratios = [records[a][s]["result"].get("convergence_ratio") for s in seeds]
        shown = [f"{r:.2f}" if r is not None else "none" for r in ratios]
        runs += f"; convergence ratio {', '.join(shown)}"
    return (
        f"test {shown_metric} {ma:.4f} against {b}'s {mb:.4f} ({100 * (ma / mb - 1):+.1f}%, {runs})"
    )


def with_headlines(text: str, root: Path) -> str:
    """``text`` with every headline marker's content regenerated."""
    by_name = {spec["name"]: spec for spec in specs(root)}
    return fill_markers(
        text,
        HEADLINE,
        "spec",
        lambda name: headline(by_name[name], root) if name in by_name else None,
    )


MICRO = marker("micro")
MICRO_RESULTS = Path("benchmarks") / "results" / "micro"


#: marker name -> (result file under benchmarks/results/micro, the script under benchmarks/micro/
#: whose ``table`` renders it)
MICRO_TABLES: dict[str, tuple[str, str]] = {
    "distributed": ("distributed/result.json", "distributed"),
    "authors_curve": ("authors_curve/result.json", "authors_curve"),
    # the first check, which capped their run (and so their annealing length R) at 3 epochs
    "authors_curve_r3": ("authors_curve/result_num_epoch3.json", "authors_curve"),
    "canet_inference": ("canet_inference/result.json", "canet_inference"),
    "canet_inference_large_batch": ("canet_inference/batch2048.json", "canet_inference"),
    "prefix_scaling": ("prefix_scaling/result.json", "prefix_scaling"),
    "flame_cost": ("flame_cost/result.json", "flame_cost"),
    "eval_scorer_valid": ("eval_scorer/valid.json", "eval_scorer"),
    "eval_scorer_memory": ("eval_scorer/memory.json", "eval_scorer"),
    "packing": ("packing/result.json", "packing"),
}


def micro_table(script: str) -> Any:
    """The ``table`` renderer of ``benchmarks/micro/<script>.py`` (each script owns its own)."""
    folder = Path(__file__).resolve().parent / "micro"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))  # the scripts import their shared ``common`` module
    name = f"micro_{script}"  # not the bare name: ``distributed`` is also a PyPI package
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, folder / f"{script}.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name].table


TABLE = marker("table")
#: marker name -> renderer of the committed result files under the root
RESULT_TABLES: dict[str, Any] = {
    "canet_accuracy_compute": canet_table,
    "flame_datasets": flame_datasets_table,
}


def with_micro_tables(text: str, root: Path) -> str:
    """``text`` with every micro-benchmark marker's table regenerated from its result file."""

    def render(name: str) -> str | None:
        if name not in MICRO_TABLES:
            return None
        file, script = MICRO_TABLES[name]
        table = micro_table(script)
        path = root / MICRO_RESULTS / file
        return (
            "\n"
            + (table(json.loads(path.read_text())) if path.is_file() else "not measured yet")
            + "\n"
        )

    return fill_markers(text, MICRO, "micro-benchmark table", render)


SPAN = marker("span")
#: marker name -> renderer of one inline line from the committed result files under the root
RESULT_SPANS: dict[str, Any] = {"flame_gain_range": flame_gain_range}


def with_result_spans(text: str, root: Path) -> str:
    """``text`` with every inline result marker's line regenerated from the result files."""

    def render(name: str) -> str | None:
        return RESULT_SPANS[name](root) if name in RESULT_SPANS else None

    return fill_markers(text, SPAN, "result span", render)


def with_result_tables(text: str, root: Path) -> str:
    """``text`` with every result-table marker's table regenerated from the result files."""

    def render(name: str) -> str | None:
        return f"\n{RESULT_TABLES[name](root)}\n" if name in RESULT_TABLES else None

    return fill_markers(text, TABLE, "result table", render)


def headline_pages(root: Path) -> list[Path]:
    """README.md and every docs page (the ones with a headline marker are rewritten)."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


# --- the page --------------------------------------------------------------------------------
def results_page(root: Path, plots: list[str]) -> str:
    """``docs/results.md`` for the result files under ``root``; ``plots`` are the images of
    :data:`PLOTS` that exist."""
    all_specs = specs(root)
    lines = [
        "# Results",
        "",
        "<!-- generated by `python benchmarks/report.py`; do not edit -->",
        "",
        "Every experiment of `benchmarks/experiments/`, trained to early stopping by",
        "`python run_recbole_flame.py --spec=benchmarks/experiments/NAME.yaml`. Each table is the",
        "summary the engine computes from the experiment's result files",
        "(`benchmarks/results/NAME/`, one JSON per run and seed with its command, commit, machine,",
        "wall time and learning curve): test metrics of the best-validation model, mean ± sd over",
        "seeds, and paired t-tests where a spec compares runs.",
        "",
        "| experiment | what it asks | status | finished runs |",
        "|---|---|---|---|",
    ]
    states = {}
    for spec in all_specs:
        state, done, total = status(spec, root / RESULTS / spec["name"])
        states[spec["name"]] = state
        lines.append(
            f"| [{spec['name']}](#{spec['name'].lower()}) | {spec.get('description', '')} | {state} | "
            f"{done} of {total} |"
        )
    lines += [
        "",
        "## FLAME across the paper's datasets",
        "",
        "Each FLAME experiment in the authors' prefix recipe, first seed "
        "([FLAME page](models/flame.md#across-the-papers-datasets)).",
        "",
        flame_datasets_table(root),
    ]
    if plots:
        lines += ["", "## Plots", ""]
        for name in plots:
            lines += [f"![{PLOTS[name][1]}]({IMG}/{name})", "", f"*{PLOTS[name][1]}.*", ""]
    for spec in all_specs:
        out_dir = root / RESULTS / spec["name"]
        lines += ["", f"## {spec['name']}", ""]
        lines.append(f"`python run_recbole_flame.py --spec={EXPERIMENTS / spec['name']}.yaml`")
        lines.append("")
        if states[spec["name"]] == "not run":
            lines.append("Not run yet.")
            continue
        if states[spec["name"]] == "in progress":
            progress = sorted(p.name for p in out_dir.glob("in_progress-*.md"))
            lines.append(
                "In progress (parked runs resume with the command above); the learning curve "
                "so far: " + ", ".join(f"`{RESULTS / spec['name'] / p}`" for p in progress)
            )
            lines.append("")
        summary = summarize(spec, out_dir)
        # the engine's heading repeats the name: the page has its own
        body = summary.split("\n", 2)[2] if summary.startswith("### ") else summary
        lines.append(body)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=".", help="the repository root (default: .)")
    parser.add_argument("--check", action="store_true", help="only say whether it is current")
    args = parser.parse_args(argv)
    root = Path(args.root)
    docs = root / "docs"
    plots = []
    for name, (draw, _) in PLOTS.items():
        if args.check:
            if (docs / IMG / name).is_file():
                plots.append(name)
        else:
            (docs / IMG).mkdir(parents=True, exist_ok=True)
            if draw(root, docs / IMG / name):
                plots.append(name)
    wanted = {docs / "results.md": results_page(root, plots)}
    for path in headline_pages(root):
        if path.is_file() and path not in wanted:
            text = path.read_text(encoding="utf-8")
            if any(m.search(text) for m in (HEADLINE, MICRO, TABLE, SPAN)):
                filled = with_micro_tables(with_headlines(text, root), root)
                wanted[path] = with_result_spans(with_result_tables(filled, root), root)
    stale = [
        path
        for path, text in wanted.items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]
    if args.check:
        for path in stale:
            print(f"stale: {path}; run python benchmarks/report.py")
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path], encoding="utf-8")
        print(f"wrote {path}")
    print(f"plots: {', '.join(plots) or 'none'} under {docs / IMG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
