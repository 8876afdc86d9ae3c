"""CANet against its full supernet and SASRec: accuracy, FLOPs ratio, inference time.

    nice -n 5 python benchmarks/canet_beauty.py --dataset=amazon-beauty \
        --epochs=1 --space=cpu
    # the routed run alone with an override, e.g. the batch-level balance loss:
    nice -n 10 python benchmarks/canet_beauty.py --epochs=1 --space=cpu --only CANet \
        --canet balance_loss=batch --out benchmarks/results/canet_beauty_batch.json

Three runs on the same split and seed, ``--epochs`` each, selected on validation NDCG@10:
CANet (the router picks a route per user; trained with its defaults, the authors' layout),
the full supernet (``fixed_route: full``, the largest route for everyone: same weights layout,
no router) and this package's SASRec with the full route's width and depth (RecBole's prefix
training). To early stopping, use ``benchmarks/specs/canet_beauty_cpu.yaml`` with
``benchmarks/converge.py``. Then, on the trained models, full-sort inference time per
test batch (interleaved, medians).

``--space=paper`` is the authors' routing space (hidden {64, 96, 128} x depth {2, 4, 6, 8} x
embedding {64, 96, 128}): its full route is 16x a d=64 two-block SASRec per user, about 40
minutes an epoch on a 2-core CPU. ``--space=cpu`` (hidden {32, 48, 64} x depth {1, 2, 3, 4} x
embedding {32, 48, 64}, also 36 routes) keeps the shape of the space at a size a CPU can train.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import interleaved_medians, markdown_table, write_json  # noqa: E402
from recbole_flame.quick_start import prepare  # noqa: E402

SPACES = {
    "paper": {
        "hidden_size_list": [64, 96, 128],
        "n_layers_list": [2, 4, 6, 8],
        "embedding_size_list": [64, 96, 128],
    },
    "cpu": {
        "hidden_size_list": [32, 48, 64],
        "n_layers_list": [1, 2, 3, 4],
        "embedding_size_list": [32, 48, 64],
    },
}


def runs(space: dict, canet: dict | None = None) -> dict[str, tuple[str, dict]]:
    """The three runs; ``canet`` overrides (e.g. ``balance_loss``) go to the routed run only."""
    width, depth = max(space["hidden_size_list"]), max(space["n_layers_list"])
    sasrec = {"hidden_size": width, "inner_size": 4 * width, "n_heads": 4, "n_layers": depth}
    return {
        "CANet": ("CANet", {**space, **(canet or {})}),
        "full supernet": ("CANet", dict(space, fixed_route="full")),
        "SASRec": ("SASRec", sasrec),
    }


def parse_setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON where it parses (numbers, lists), else a string."""
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument(
        "--data_path", default=None, help="default: RecBole's (amazon-beauty: the bundled copy)"
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--timing_batches", type=int, default=10)
    parser.add_argument("--space", choices=sorted(SPACES), default="cpu")
    parser.add_argument("--out", default="benchmarks/results/canet_beauty.json")
    parser.add_argument(
        "--only", nargs="+", choices=["CANet", "full supernet", "SASRec"], help="a subset of runs"
    )
    parser.add_argument(
        "--canet", action="append", default=[], metavar="KEY=VALUE", help="routed-run override"
    )
    args = parser.parse_args()
    canet = dict(parse_setting(t) for t in args.canet)
    torch.set_num_threads(os.cpu_count() or 1)
    base = {
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
    if args.data_path:
        base["data_path"] = os.path.abspath(args.data_path)
    report: dict = {
        "settings": base,
        "space": SPACES[args.space],
        "canet_overrides": canet,
        "threads": torch.get_num_threads(),
        "runs": {},
    }
    models, test_data = {}, None
    for label, (name, extra) in runs(SPACES[args.space], canet).items():
        if args.only and label not in args.only:
            continue
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
            extras = trainer.result_extras()
            for key in ("route_counts", "route_entropy", "route_perplexity", "routes_used"):
                entry[key] = extras[key]
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

    full = report["runs"].get("full supernet", {}).get("test", {})
    rows = []
    for label, entry in report["runs"].items():
        test = entry["test"]
        rows.append(
            [
                label,
                test["ndcg@10"],
                test["ndcg@20"],
                test["ndcg@10"] / full["ndcg@10"] if full.get("ndcg@10") else float("nan"),
                test.get("flops_ratio", "-"),
                times[label],
                sum(entry["epoch_train_seconds"]) / len(entry["epoch_train_seconds"]),
            ]
        )
    print(f"\n## CANet on {args.dataset}, {args.space} space, {args.epochs} epoch(s), CPU\n")
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
    if "CANet" in report["runs"]:
        print(f"\nCANet routes on test: {report['runs']['CANet'].get('route_counts')}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
