"""CETNet against its base models and the multi-embedding baselines on ml-100k as CTR.

    nice -n 10 python benchmarks/cetnet_ml100k.py --epochs=8 --seeds=2020,2021,2022

RecBole's context-aware defaults for ml-100k (``context-aware_ml-100k.yaml``): label = rating >= 4,
user features (age, gender, occupation) and item features (release_year, class), random 8/1/1
split, labeled evaluation, AUC and LogLoss, model selection on validation AUC. Every variant gets
the same epochs, seeds, embedding size and RecBole's own defaults for each base model:

- CETNet[DCNV2,DeepFM]: the heterogeneous ensemble (CETNet.yaml defaults);
- DCNV2, DeepFM: each base model alone;
- CETNet[DCNV2,DCNV2]: the same model twice, each with its own embeddings (multi-embedding);
- DCNV2 2x emb: one DCNV2 with twice the embedding size.

Reports the mean and sample standard deviation over seeds of test AUC and LogLoss (of the
best-validation epoch), parameter counts, and seconds per run. Nothing is tuned on the test set.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import markdown_table, write_json  # noqa: E402
from recbole_flame.quick_start import prepare, run  # noqa: E402

SINGLE_BASE_MODELS = ("DCNV2", "DeepFM")


def variants(embedding_size: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """Variant label -> (model, config keys of its own)."""
    return {
        "CETNet[DCNV2,DeepFM]": ("CETNet", {"base_models": ["DCNV2", "DeepFM"]}),
        "DCNV2": ("DCNV2", {}),
        "DeepFM": ("DeepFM", {}),
        "CETNet[DCNV2,DCNV2]": ("CETNet", {"base_models": ["DCNV2", "DCNV2"]}),
        "DCNV2 2x emb": ("DCNV2", {"embedding_size": 2 * embedding_size}),
    }


def parameter_count(model: str, dataset: str, config: dict[str, Any]) -> int:
    _, net, _, _ = prepare(model, dataset, config_dict=config)
    return sum(p.numel() for p in net.parameters())


def mean_std(values: list[float]) -> tuple[float, float]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.mean(values), std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", default="2020,2021,2022", help="comma-separated")
    parser.add_argument("--embedding_size", type=int, default=16)
    parser.add_argument("--variants", default=None, help="comma-separated labels; default all")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 is fastest on a small shared CPU (2 oversubscribe under load)",
    )
    parser.add_argument("--out", default="benchmarks/results/cetnet_ml100k.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    chosen = variants(args.embedding_size)
    if args.variants:
        chosen = {k: chosen[k] for k in args.variants.split(",")}

    common = {
        "epochs": args.epochs,
        "stopping_step": args.epochs,  # no early stop: every variant trains the same epochs
        "embedding_size": args.embedding_size,
        "gpu_id": "",
        "show_progress": False,
        "state": "WARNING",
        "checkpoint_dir": os.path.abspath("benchmarks/results/saved"),
    }
    report: dict[str, Any] = {"settings": dict(common, seeds=seeds), "runs": {}, "summary": {}}
    rows = []
    for label, (model, own) in chosen.items():
        config = dict(common, **own)
        params = parameter_count(model, args.dataset, dict(config, seed=seeds[0]))
        runs = []
        for seed in seeds:
            start = time.perf_counter()
            result = run(model, args.dataset, config_dict=dict(config, seed=seed), saved=False)
            runs.append(
                {
                    "seed": seed,
                    "seconds": time.perf_counter() - start,
                    "valid": dict(result["best_valid_result"]),
                    "test": dict(result["test_result"]),
                }
            )
            print(
                f"{label} seed={seed}: {runs[-1]['test']} ({runs[-1]['seconds']:.0f}s)", flush=True
            )
        auc = mean_std([r["test"]["auc"] for r in runs])
        logloss = mean_std([r["test"]["logloss"] for r in runs])
        seconds = statistics.mean(r["seconds"] for r in runs)
        report["runs"][label] = runs
        report["summary"][label] = {
            "params": params,
            "auc_mean": auc[0],
            "auc_std": auc[1],
            "logloss_mean": logloss[0],
            "logloss_std": logloss[1],
            "seconds_per_run": seconds,
        }
        rows.append(
            [
                label,
                f"{params:,}",
                f"{auc[0]:.4f} ± {auc[1]:.4f}",
                f"{logloss[0]:.4f} ± {logloss[1]:.4f}",
                f"{seconds:.0f}",
            ]
        )

    headers = ["variant", "params", "test AUC", "test LogLoss", "s/run"]
    print()
    print(
        f"ml-100k CTR, {args.epochs} epochs, seeds {seeds}, embedding_size "
        f"{args.embedding_size}, mean ± std over seeds"
    )
    print(markdown_table(headers, rows))
    summary = report["summary"]
    singles = [m for m in SINGLE_BASE_MODELS if m in summary]
    if "CETNet[DCNV2,DeepFM]" in summary and singles:
        best = max(singles, key=lambda m: summary[m]["auc_mean"])
        gain = summary["CETNet[DCNV2,DeepFM]"]["auc_mean"] - summary[best]["auc_mean"]
        met = gain >= 0.001
        report["target"] = {"best_single": best, "auc_gain": gain, "met": met}
        print(
            f"\nCETNet AUC - best single base model ({best}) AUC = {gain:+.4f} "
            f"(target >= +0.001: {'met' if met else 'not met'})"
        )
    write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
