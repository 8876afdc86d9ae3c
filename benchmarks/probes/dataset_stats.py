"""A spec's dataset as its runs see it (after filtering and ``history_limit``): users, items,
interactions and the users' sequence lengths, for the cross-dataset tables.

    FLAME_DATA=DIR python benchmarks/probes/dataset_stats.py benchmarks/experiments/flame_toys_authors_prefix.yaml

Writes ``benchmarks/results/<spec>/dataset.json`` with command, commit and machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from recbole.data import create_dataset

from recbole_flame.data.history import apply_history_limit
from recbole_flame.experiment.output import provenance, write_json
from recbole_flame.experiment.spec import load_spec, results_dir, run_config
from recbole_flame.quick_start.quick_start import checked_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spec")
    args = parser.parse_args()
    start = time.perf_counter()
    torch.set_num_threads(1)
    spec = load_spec(args.spec)
    out_dir = results_dir(spec)
    label = next(iter(spec["runs"]))
    settings, _ = run_config(spec, label, spec["seeds"][0], out_dir)
    settings["state"] = "WARNING"
    config, _ = checked_config(spec["runs"][label]["model"], spec["dataset"], config_dict=settings)
    dataset = create_dataset(config)
    if config["history_limit"]:
        apply_history_limit(dataset, config["history_limit"])
    users = np.asarray(dataset.inter_feat[dataset.uid_field])
    lengths = np.bincount(users)[1:]  # id 0 is padding
    lengths = lengths[lengths > 0]
    record = {
        **provenance(),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "spec": args.spec,
        "dataset": spec["dataset"],
        "history_limit": config["history_limit"],
        "users": int(lengths.size),
        "items": int(dataset.item_num - 1),
        "interactions": int(lengths.sum()),
        "mean_length": float(lengths.mean()),
        "median_length": float(np.median(lengths)),
    }
    path = out_dir / "dataset.json"
    write_json(path, record)
    print(record, f"\nwritten: {path}")


if __name__ == "__main__":
    main()
