"""Runs to early stopping, from a small spec per experiment; resumable across sittings.

    nice -n 5 python benchmarks/converge.py benchmarks/specs/dense_sasrec_ml100k.yaml
    python benchmarks/converge.py benchmarks/specs/dense_sasrec_ml100k.yaml --summary

A spec (yaml) names the dataset, the seeds, settings shared by every run (``base``) and the runs
(label -> model and its own settings), and optionally ``compare: [[A, B], ...]`` for paired
tests, ``extras: {column: dotted.path}``, entries of the run's result (model diagnostics such
as ``cetnet_diagnostics.test.fused.auc``) tabulated beside the metrics, and ``derived: {row:
{from: run, result: {key: dotted.path}}}``, a baseline measured inside a run (FLAME's frozen
stage-1 SASRec) as a row of its own that ``compare`` can pair with the run, and
``milestones: [0.05, ...]``: the first epoch each run's validation score reached each value, and
``time_to_accuracy: [[A, B], ...]``: A's wall time to B's best validation score over B's own
time to it, per seed (valid only where both ran on the same machine). Each (run, seed)
trains to early stopping with RecBole's trainer through :func:`recbole_flame.quick_start.run`
and writes ``benchmarks/results/<spec>/<label>-seed<k>.json``
with its command, commit, machine, wall time, learning curve and test result. A finished
(run, seed) is skipped; one that was stopped resumes from its last validated epoch (its
``-last.pth`` under ``<spec>/ckpt/``), so a long experiment can span several sittings.
``--park`` also packs that run state (and the best model it names) into
``<spec>/parked/<label>-seed<k>.tar``, which is committed: on a fresh clone, where the ignored
``ckpt/`` folder is empty, the same command unpacks it and goes on from the same epoch.
Seeds go in the outer loop, so a partial experiment still holds complete pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import markdown_table, write_json  # noqa: E402
from recbole_flame.utils.files import atomic_write  # noqa: E402

METRIC_ORDER = ("hit", "recall", "ndcg", "mrr", "auc", "logloss")


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", label).strip("-")


def load_spec(path: str | Path) -> dict[str, Any]:
    spec = yaml.safe_load(Path(path).read_text())
    spec.setdefault("name", Path(path).stem)
    spec.setdefault("path", f"benchmarks/specs/{Path(path).name}")
    spec.setdefault("seeds", [2020])
    spec.setdefault("base", {})
    spec.setdefault("compare", [])
    spec.setdefault("extras", {})
    return spec


def dig(result: dict[str, Any], path: str) -> Any:
    """``result[a][b]...`` for ``path`` ``"a.b..."`` (an integer indexes a list), or None where
    an entry is missing."""
    value: Any = result
    for key in path.split("."):
        index = int(key) if key.lstrip("-").isdigit() else None
        if isinstance(value, list) and index is not None and -len(value) <= index < len(value):
            value = value[index]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            return None
    return value


def provenance() -> dict[str, Any]:
    """Command, commit and machine of this sitting."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    return {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "machine": {
            "host": platform.node(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
        },
    }


def result_file(out_dir: Path, label: str, seed: int) -> Path:
    """Where a run's result lives: ``<out_dir>/<label slug>-seed<k>.json``."""
    return out_dir / f"{slug(label)}-seed{seed}.json"


def run_config(spec: dict, label: str, seed: int, out_dir: Path) -> tuple[dict[str, Any], Path]:
    """The config dict of one (run, seed) of ``spec`` and its checkpoint folder."""
    entry = spec["runs"][label]
    ckpt = out_dir / "ckpt" / f"{slug(label)}-seed{seed}"
    config = {
        **spec["base"],
        **(entry.get("config") or {}),
        "seed": seed,
        "checkpoint_dir": str(ckpt),
        "show_progress": False,
    }
    # "$VAR" in a setting (e.g. the folder of downloaded weights) comes from the environment,
    # "{seed}" is the run's seed (e.g. another run's stage-1 cache of the same seed).
    config = {
        k: os.path.expandvars(v).replace("{seed}", str(seed)) if isinstance(v, str) else v
        for k, v in config.items()
    }
    if spec.get("data_path"):
        config["data_path"] = str((ROOT / spec["data_path"]).resolve())
    return config, ckpt


def prepare_run(spec: dict, label: str, seed: int, out_dir: Path) -> tuple:
    """``recbole_flame.quick_start.prepare`` for one (run, seed) of ``spec``, quietly: what the
    probes read a run's model, trainer and data with. Returns prepare's tuple."""
    from recbole_flame.quick_start import prepare

    config, _ = run_config(spec, label, seed, out_dir)
    config["state"] = "WARNING"
    return prepare(spec["runs"][label]["model"], spec["dataset"], config_dict=config)


def load_finished(spec: dict, label: str, seed: int, out_dir: Path) -> tuple:
    """Config, model (holding its best-validation weights), trainer and test data of a finished
    (run, seed) of ``spec``, and its result record: what the probes score."""
    from recbole_flame.utils.checkpoint import load_checkpoint

    record = json.loads(result_file(out_dir, label, seed).read_text())
    config, model, trainer, (_, _, test_data) = prepare_run(spec, label, seed, out_dir)
    model.load_state_dict(load_checkpoint(record["result"]["checkpoint"])["state_dict"])
    return config, model, trainer, test_data, record


def probe_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every probe of a spec's runs takes: the spec, ``--seed``, ``--threads``."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("spec")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    return parser


def probe_setup(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, dict, Path]:
    """Parsed arguments (torch threads set), the spec and its results folder."""
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    return args, spec, ROOT / "benchmarks" / "results" / spec["name"]


def run_states(ckpt: Path) -> list[Path]:
    """The resume states of one run under its checkpoint folder, oldest first: the trainer's
    ``*-last.pth``, and FLAME stage 1's hidden ``.<cache>.pth.last`` while stage 1 trains."""
    states = [*ckpt.glob("*-last.pth"), *ckpt.glob("*/.*.pth.last")]
    return sorted(states, key=os.path.getmtime)


def parked_file(out_dir: Path, label: str, seed: int) -> Path:
    return out_dir / "parked" / f"{slug(label)}-seed{seed}.tar"


def park(spec: dict, label: str, seed: int, out_dir: Path) -> Path | None:
    """Pack an unfinished run's newest state, and the best-model file it names, into
    :func:`parked_file` (a plain tar, paths relative to the run's checkpoint folder), so the run
    can go on from a fresh clone; None if the run has no state or has finished."""
    from recbole_flame.utils.checkpoint import load_checkpoint

    _, ckpt = run_config(spec, label, seed, out_dir)
    states = run_states(ckpt)
    if result_file(out_dir, label, seed).is_file() or not states:
        return None
    root = ckpt.absolute()
    state = states[-1].absolute()
    members = [state]
    best = Path(load_checkpoint(state)["best_model_file"]).absolute()
    if best.is_file() and best.is_relative_to(root):
        members.append(best)
    def pack(f) -> None:
        with tarfile.open(fileobj=f, mode="w") as tar:
            for member in members:
                tar.add(member, arcname=str(member.relative_to(root)))

    target = parked_file(out_dir, label, seed)
    atomic_write(target, pack)
    return target


def unpark(spec: dict, label: str, seed: int, out_dir: Path) -> Path | None:
    """Unpack a run's :func:`parked_file` into its (empty) checkpoint folder and point the
    state's best-model file at the unpacked copy, which lies wherever this clone is; returns the
    unpacked state, or None when there is nothing parked or the folder already holds a state
    (a state on disk is never newer in the tar than here)."""
    from recbole_flame.utils.checkpoint import atomic_save, load_checkpoint

    source = parked_file(out_dir, label, seed)
    _, ckpt = run_config(spec, label, seed, out_dir)
    if not source.is_file() or run_states(ckpt):
        return None
    root = ckpt.absolute()
    with tarfile.open(source) as tar:
        tar.extractall(root, filter="data")
    state_path = run_states(ckpt)[-1]
    state = load_checkpoint(state_path)
    then = Path(state["config"]["checkpoint_dir"]).absolute()
    best = Path(state["best_model_file"]).absolute()
    if best.is_relative_to(then) and then != root:
        state["best_model_file"] = str(root / best.relative_to(then))
        atomic_save(state, state_path)
    return state_path


def run_one(spec: dict, label: str, seed: int, out_dir: Path) -> dict[str, Any]:
    from recbole_flame.quick_start import run

    entry = spec["runs"][label]
    config, ckpt = run_config(spec, label, seed, out_dir)
    unpacked = unpark(spec, label, seed, out_dir)
    if unpacked is not None:
        print(f"== unpacked {shown(parked_file(out_dir, label, seed))} into {shown(ckpt)}")
    states = sorted(ckpt.glob("*-last.pth"), key=os.path.getmtime)
    resume = str(states[-1]) if states else None
    print(f"== {label} seed {seed}" + (f" (resuming {resume})" if resume else ""), flush=True)
    start = time.perf_counter()
    result = run(entry["model"], spec["dataset"], config_dict=config, resume=resume)
    record = {
        **provenance(),
        "spec": spec["name"],
        "label": label,
        "seed": seed,
        "config": config,
        "resumed_from": resume,
        "sitting_wall_seconds": time.perf_counter() - start,
        "result": result,
    }
    write_json(result_file(out_dir, label, seed), record)
    return record


def shown(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def progress_report(spec: dict, label: str, seed: int, out_dir: Path) -> str | None:
    """Markdown learning curve of an unfinished run, read from its newest ``-last.pth`` run
    state (its validation history), with the command that resumes it; None if it has none
    or has finished."""
    from recbole_flame.utils.checkpoint import load_checkpoint

    if result_file(out_dir, label, seed).is_file():
        return None
    _, ckpt = run_config(spec, label, seed, out_dir)
    states = run_states(ckpt)
    if not states:
        return None
    state = load_checkpoint(states[-1])
    history = state.get("valid_history") or []
    if not history:
        return None
    best = max(history, key=lambda h: h["valid_score"])
    rows = [[h["epoch"], h["valid_score"], round(h["train_seconds"])] for h in history]
    name = f"{slug(label)}-seed{seed}"
    stage = " (FLAME stage 1, the backbone SASRec)" if states[-1].name.endswith(".last") else ""
    settings = json.dumps([spec["base"], spec["runs"][label]])
    env = "".join(f"{var}=PATH " for var in sorted(set(re.findall(r"\$(\w+)", settings))))
    parked = parked_file(out_dir, label, seed)
    where = (
        f"parked (committed) in `{shown(parked)}`, which the command below unpacks on a fresh clone"
        if parked.is_file()
        else "not committed, under the ignored ckpt/ folder"
    )
    return "\n".join(
        [
            f"# {name}{stage}: in progress, not converged (stopped at the end of a sitting)",
            "",
            f"Validations so far: {len(history)}; best valid score {best['valid_score']} at epoch "
            f"{best['epoch']}; wall seconds so far {state.get('elapsed_seconds', 0):.0f}. Run "
            f"state ({where}): `{shown(states[-1])}`.",
            "",
            f"Resume (same command): `{env}python benchmarks/converge.py {spec['path']} --threads 1 "
            f'--only "{label}" --seeds {seed}`',
            "",
            markdown_table(["epoch", "valid score", "train seconds (cumulative)"], rows),
        ]
    )


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


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


def summarize(spec: dict, out_dir: Path) -> str:
    """Markdown: mean ± std per run over the finished seeds, and paired t-tests."""
    from scipy import stats

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
    metrics = spec.get("report") or sorted(
        {k for runs in records.values() for r in runs.values() for k in r["result"]["test_result"]},
        key=lambda k: (
            METRIC_ORDER.index(k.split("@")[0]) if k.split("@")[0] in METRIC_ORDER else 99,
            int(k.split("@")[1]) if "@" in k else 0,
        ),
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
                    mean_std([float(r["test_result"][m]) for r in results if m in r["test_result"]])
                    for m in metrics
                ],
                *[
                    mean_std([float(r[k]) for r in results if r.get(k) is not None]).replace(
                        ".0000", ""
                    )
                    for k in ("best_epoch", "epochs_run")
                ],
                # the median epoch: robust to the first epoch's warm-up and to machine load
                mean_std(
                    [
                        statistics.median(r["epoch_train_seconds"])
                        for r in results
                        if r.get("epoch_train_seconds")
                    ]
                ),
                *[
                    mean_std([float(r[k]) for r in results if r.get(k) is not None])
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
                cells.append(mean_std([float(v) for v in values if v is not None]))
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
    for a, b in spec["compare"]:
        common = sorted(set(records.get(a, {})) & set(records.get(b, {})))
        if len(common) < 2:
            lines.append(f"\n{a} vs {b}: {len(common)} paired seed(s), no test")
            continue
        for m in spec.get("test_metrics", metrics[-2:]):
            xa = [float(records[a][s]["result"]["test_result"][m]) for s in common]
            xb = [float(records[b][s]["result"]["test_result"][m]) for s in common]
            t = stats.ttest_rel(xa, xb)
            diffs = [x - y for x, y in zip(xa, xb, strict=True)]
            lines.append(
                f"\n{a} - {b}, test {m}: mean diff {statistics.mean(diffs):+.4f} (sd "
                f"{statistics.stdev(diffs):.4f}, per seed {', '.join(f'{d:+.4f}' for d in diffs)}) "
                f"over seeds {common}, paired t = {t.statistic:.2f}, p = {t.pvalue:.3f}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spec", help="a yaml spec under benchmarks/specs/")
    parser.add_argument("--only", nargs="+", help="run only these labels")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the spec's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--summary", action="store_true", help="print the table and stop")
    parser.add_argument(
        "--progress",
        action="store_true",
        help="write in_progress-<run>.md (learning curve so far) for each unfinished run, and stop",
    )
    parser.add_argument(
        "--park",
        action="store_true",
        help="as --progress, and pack each unfinished run's state into parked/<run>.tar (to "
        "commit, so a fresh clone resumes it)",
    )
    parser.add_argument("--out", default=None, help="default: benchmarks/results/<spec name>")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    if args.seeds:
        spec["seeds"] = [int(s) for s in args.seeds.split(",")]
    out_dir = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / spec["name"]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.progress or args.park:
        for seed in spec["seeds"]:
            for label in spec["runs"]:
                if args.park and (packed := park(spec, label, seed, out_dir)) is not None:
                    size = packed.stat().st_size / 2**20
                    print(f"wrote {shown(packed)} ({size:.1f} MiB)")
                stale = out_dir / f"in_progress-{slug(label)}-seed{seed}.md"
                report = progress_report(spec, label, seed, out_dir)
                if report is None:
                    stale.unlink(missing_ok=True)  # finished (or never started)
                    continue
                stale.write_text(report + "\n")
                print(f"wrote {shown(stale)}")
        return
    if not args.summary:
        for seed in spec["seeds"]:
            for label in spec["runs"]:
                if args.only and label not in args.only:
                    continue
                if (result_file(out_dir, label, seed)).is_file():
                    print(f"== {label} seed {seed}: done", flush=True)
                    continue
                run_one(spec, label, seed, out_dir)
                # a curve or state written at an earlier stop is stale once the run has its result
                (out_dir / f"in_progress-{slug(label)}-seed{seed}.md").unlink(missing_ok=True)
                parked_file(out_dir, label, seed).unlink(missing_ok=True)
    table = summarize(spec, out_dir)
    (out_dir).mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
