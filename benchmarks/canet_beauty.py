"""CANet against its full supernet and SASRec: accuracy, FLOPs ratio, inference time.

    nice -n 5 python benchmarks/canet_beauty.py --dataset=amazon-beauty \
        --data_path=../shared/datasets --epochs=1

Three runs on the same split and seed, ``--epochs`` each, selected on validation NDCG@10:
CANet (the router picks a route per user), the full supernet (``fixed_route: full``, the
largest route for everyone: same weights layout, no router) and this package's SASRec with
CANet's width (d=128, 4 heads, 2 blocks: RecBole's defaults otherwise). Then, on the trained
models, full-sort inference time per test batch (interleaved, medians).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import interleaved_medians, markdown_table, write_json  # noqa: E402
from recbole_flame.quick_start import prepare  # noqa: E402

RUNS = {
    "CANet": ("CANet", {}),
    "full supernet": ("CANet", {"fixed_route": "full"}),
    "SASRec": ("SASRec", {"hidden_size": 128, "inner_size": 512, "n_heads": 4}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--data_path", default="../shared/datasets")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--timing_batches", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/canet_beauty.json")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    base = {
        "data_path": os.path.abspath(args.data_path),
        "epochs": args.epochs,
        "seed": 42,
        "MAX_ITEM_LIST_LENGTH": 50,
        "train_batch_size": 256,
        "eval_batch_size": 256,
        "learning_rate": 1e-3,
        "metrics": ["Hit", "NDCG"],
        "topk": [10, 20],
        "valid_metric": "NDCG@10",
        "gpu_id": "",
        "show_progress": False,
        "checkpoint_dir": os.path.abspath("benchmarks/results/saved"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "state": "WARNING",
    }
    report: dict = {"settings": base, "threads": torch.get_num_threads(), "runs": {}}
    models, test_data = {}, None
    for label, (name, extra) in RUNS.items():
        _, model, trainer, (train, valid, test) = prepare(
            name, args.dataset, config_dict={**base, **extra}
        )
        trainer.fit(train, valid, saved=False)
        result = trainer.evaluate(test, load_best_model=True)
        entry = {
            "test": dict(result),
            "epoch_train_seconds": list(trainer.epoch_train_seconds),
            "params": sum(p.numel() for p in model.parameters()),
        }
        if name == "CANet":
            entry["route_counts"] = trainer.result_extras()["route_counts"]
        report["runs"][label] = entry
        print(f"{label}: {entry}", flush=True)
        models[label], test_data = model.eval(), test
        write_json(args.out, report)

    batches = [b[0] for _, b in zip(range(args.timing_batches), test_data, strict=False)]

    def infer(model):
        def one(i: int) -> None:
            with torch.no_grad():
                model.full_sort_predict(batches[i % len(batches)])

        return one

    times = interleaved_medians({k: infer(m) for k, m in models.items()}, args.timing_batches)
    report["inference_s_per_batch"] = times
    write_json(args.out, report)

    full = report["runs"]["full supernet"]["test"]
    rows = []
    for label, entry in report["runs"].items():
        test = entry["test"]
        rows.append(
            [
                label,
                test["ndcg@10"],
                test["ndcg@20"],
                test["ndcg@10"] / full["ndcg@10"] if full["ndcg@10"] else float("nan"),
                test.get("flops_ratio", "-"),
                times[label],
                sum(entry["epoch_train_seconds"]) / len(entry["epoch_train_seconds"]),
            ]
        )
    print(f"\n## CANet on {args.dataset}, {args.epochs} epoch(s), CPU\n")
    print(
        markdown_table(
            [
                "model",
                "test NDCG@10",
                "test NDCG@20",
                "NDCG@10 / full",
                "FLOPs ratio",
                f"inference s / batch of {base['eval_batch_size']}",
                "train s / epoch",
            ],
            rows,
        )
    )
    print(f"\nCANet routes on test: {report['runs']['CANet'].get('route_counts')}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
