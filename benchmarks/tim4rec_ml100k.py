"""TiM4Rec with and without its time path against SASRec on ml-100k (real timestamps).

    nice -n 5 python benchmarks/tim4rec_ml100k.py --epochs=2
    # or one process per row:  --only=0 --out=benchmarks/results/tim4rec_ml100k_0.json

Three runs on RecBole's leave-one-out split of the bundled ml-100k, the same seed, L = 50,
d = 64, 2 layers, batch 256, Adam 1e-3 and the same number of epochs (selected on validation
NDCG@10): TiM4Rec as the authors configure it (``time_aware: True``), the SSD4Rec-style
baseline (``time_aware: False``) and this package's SASRec (RecBole's, d = 64, 2 heads).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import markdown_table, write_json  # noqa: E402
from recbole_flame.quick_start import run  # noqa: E402

RUNS = {
    "TiM4Rec (time-aware)": ("TiM4Rec", {"time_aware": True}),
    "TiM4Rec time_aware=False (SSD4Rec-style)": ("TiM4Rec", {"time_aware": False}),
    "SASRec": ("SASRec", {"n_heads": 2, "inner_size": 256}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default="benchmarks/results/tim4rec_ml100k.json")
    parser.add_argument(
        "--only", type=int, default=None, help="run only this row (0-2), to run rows in parallel"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = {
        "epochs": args.epochs,
        "seed": 2020,
        "MAX_ITEM_LIST_LENGTH": 50,
        "hidden_size": 64,
        "n_layers": 2,
        "train_batch_size": 256,
        "eval_batch_size": 256,
        "learning_rate": 1e-3,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "metrics": ["Hit", "NDCG"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "gpu_id": "",
        "state": "WARNING",
        "show_progress": False,
        "checkpoint_dir": os.path.abspath("benchmarks/results/saved"),
    }
    report: dict = {"settings": base, "threads": args.threads, "runs": {}}
    rows = []
    for i, (label, (name, extra)) in enumerate(RUNS.items()):
        if args.only is not None and i != args.only:
            continue
        result = run(name, "ml-100k", config_dict={**base, **extra}, saved=False)
        seconds = result["epoch_train_seconds"]
        report["runs"][label] = {
            "test": dict(result["test_result"]),
            "valid": dict(result["best_valid_result"]),
            "epoch_train_seconds": seconds,
        }
        print(f"{label}: {report['runs'][label]}", flush=True)
        write_json(args.out, report)
        test = result["test_result"]
        rows.append([label, test["ndcg@10"], test["hit@10"], sum(seconds) / len(seconds)])
    print(f"\n## ml-100k, {args.epochs} epochs each, CPU ({args.threads} threads)\n")
    print(markdown_table(["model", "test NDCG@10", "test HR@10", "train s / epoch"], rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
