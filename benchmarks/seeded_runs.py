"""The refactor check: a seeded short run of each model of this package (ml-100k, tiny sizes, one
torch thread), printed as one JSON line per run. A change that is meant to change no number
prints the same lines before and after:

    python benchmarks/seeded_runs.py > after.txt           # on the change
    git worktree add /tmp/before HEAD && cd /tmp/before    # the code before it
    PYTHONPATH=/tmp/before python /path/to/benchmarks/seeded_runs.py > before.txt
    diff before.txt after.txt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch

SEQ = {
    "MAX_ITEM_LIST_LENGTH": 20,
    "hidden_size": 16,
    "inner_size": 32,
    "n_layers": 1,
    "n_heads": 2,
    "epochs": 2,
    "train_batch_size": 512,
    "eval_batch_size": 2048,
    "gpu_id": "",
    "state": "WARNING",
    "show_progress": False,
    "seed": 7,
}
CTR = {
    "threshold": {"rating": 4},
    "load_col": {
        "inter": ["user_id", "item_id", "rating", "timestamp"],
        "user": ["user_id", "age", "gender", "occupation"],
        "item": ["item_id", "release_year", "class"],
    },
    "eval_args": {
        "split": {"RS": [0.8, 0.1, 0.1]},
        "order": "RO",
        "group_by": None,
        "mode": "labeled",
    },
    "train_neg_sample_args": None,
    "metrics": ["AUC", "LogLoss"],
    "valid_metric": "AUC",
    "embedding_size": 8,
    "epochs": 2,
    "gpu_id": "",
    "state": "WARNING",
    "show_progress": False,
    "seed": 7,
}
RUNS = {
    "SASRec": ("SASRec", SEQ),
    "SASRec dense": ("SASRec", {**SEQ, "train_mode": "dense"}),
    "FLAME": ("FLAME", {**SEQ, "stage1_epochs": 1}),
    "TiM4Rec": (
        "TiM4Rec",
        {
            **SEQ,
            "d_state": 8,
            "head_dim": 16,
            "epochs": 1,
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        },
    ),
    "CANet": (
        "CANet",
        {
            **SEQ,
            "hidden_size_list": [16, 32],
            "n_layers_list": [1, 2],
            "embedding_size_list": [16, 32],
            "router_hidden_size": 16,
            "router_inner_size": 32,
            "inference_timing_batches": 0,
            "epochs": 1,
        },
    ),
    "CETNet": ("CETNet", CTR),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="*", help=f"some of {', '.join(RUNS)} (default: all)")
    args = parser.parse_args()
    unknown = [r for r in args.runs if r not in RUNS]
    if unknown:
        parser.error(f"unknown run {unknown[0]!r}; the runs are {', '.join(RUNS)}")
    torch.set_num_threads(1)
    from recbole_flame.quick_start import run

    for label in args.runs or RUNS:
        model, config = RUNS[label]
        here = os.getcwd()
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)  # RecBole writes log/ and saved/ under the current directory
            try:
                result = run(model, "ml-100k", config_dict={**config, "checkpoint_dir": tmp})
            finally:
                os.chdir(here)
        keep = {k: result.get(k) for k in ("best_valid_score", "test_result", "stage1_test_result")}
        print(label, json.dumps(keep, default=str), flush=True)


if __name__ == "__main__":
    sys.exit(main())
