"""TiM4Rec against RecBole's SASRec: CPU training-step time and peak memory as L grows.

    nice -n 10 python benchmarks/micro/tim4rec_scaling.py --lengths=50,200,800 --batch=64 --reps=5

Synthetic full-length sequences (every step real, increasing timestamps), the same d = 64,
2 layers and batch for both models; TiM4Rec uses its yaml defaults (time-aware, pure-PyTorch
SSD, chunk 32), SASRec RecBole's (2 heads, inner 256). No dataset is read.

* Time: the median over ``--reps`` interleaved repetitions (SASRec, TiM4Rec, SASRec, ...) of one
  optimisation step (forward, CE loss over all items, backward, Adam), after 2 warm-up steps.
* Peak memory: each (model, L) runs in a fresh subprocess. Once the model, the optimiser and
  the batch exist, it reads its resident set size (VmRSS) and resets the kernel's peak-RSS mark
  (``5 > /proc/self/clear_refs``), takes one training step and reads the peak (VmHWM): the
  difference is the memory one step needs on top of the model (activations, gradients, Adam's
  state), allocator slack included, measured the same way for both models. (torch's allocator
  statistics exist for CUDA only, and tracemalloc does not see tensor memory.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from common import train_step
from recbole.data.interaction import Interaction

from recbole_flame.config import Config
from recbole_flame.experiment.output import markdown_table, write_json
from recbole_flame.utils.registry import get_model
from recbole_flame.utils.timing import interleaved_medians

MODELS = ("SASRec", "TiM4Rec")
N_ITEMS = 2000


class _Synthetic:
    """What the two models read from a dataset: the item count and which fields exist."""

    field2type = {"item_id_list": None, "timestamp_list": None}

    def num(self, field: str) -> int:
        return N_ITEMS


def build(model_name: str, length: int, seed: int = 0):
    """A model for sequences of ``length`` steps and its Adam optimiser."""
    settings = {
        "MAX_ITEM_LIST_LENGTH": length,
        "hidden_size": 64,
        "n_layers": 2,
        "gpu_id": "",
        "use_gpu": False,
        "learning_rate": 1e-3,
    }
    config = Config(model_name, "ml-100k", config_dict=settings)
    torch.manual_seed(seed)
    model = get_model(model_name)(config, _Synthetic())
    # Importing RecBole's sequential models (SINE) switches anomaly detection on: a debugging
    # aid that slows every backward pass.
    torch.autograd.set_detect_anomaly(False)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def batch(length: int, size: int, seed: int = 0) -> Interaction:
    g = torch.Generator().manual_seed(seed)
    gaps = torch.randint(1, 86400, (size, length), generator=g).float()
    return Interaction(
        {
            "item_id_list": torch.randint(1, N_ITEMS, (size, length), generator=g),
            "item_length": torch.full((size,), length),
            "timestamp_list": 8.8e8 + gaps.cumsum(1),
            "item_id": torch.randint(1, N_ITEMS, (size,), generator=g),
        }
    )


def _status_mib(key: str) -> float:
    """A ``/proc/self/status`` field (given in kB), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status (Linux only)")


def memory_child(model_name: str, length: int, size: int) -> None:
    """Run in a fresh process: print the peak RSS growth of one training step, in MiB."""
    model, optimizer = build(model_name, length)
    data = batch(length, size)
    train_step(model, optimizer, data)  # one-time allocations: Adam's state, thread pools
    before = _status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    train_step(model, optimizer, data)
    print(json.dumps({"step_peak_mib": _status_mib("VmHWM") - before, "before_mib": before}))


def measure_memory(model_name: str, length: int, size: int, threads: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        f"--memory_child={model_name},{length}",
        f"--batch={size}",
        f"--threads={threads}",
    ]
    # Large blocks straight from mmap, so freed activations leave the resident set and the
    # next step's peak is measured from the model's own footprint.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="50,200,800")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)"
    )
    parser.add_argument("--out", default="benchmarks/results/micro/tim4rec_scaling/result.json")
    parser.add_argument("--memory_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        name, length = args.memory_child.split(",")
        memory_child(name, int(length), args.batch)
        return

    lengths = [int(v) for v in args.lengths.split(",")]
    rows, report = [], {"batch": args.batch, "threads": args.threads, "results": {}}
    for length in lengths:
        built = {name: build(name, length) for name in MODELS}
        data = batch(length, args.batch)
        times = interleaved_medians(
            {
                name: lambda i, m=model, o=opt, d=data: train_step(m, o, d)
                for name, (model, opt) in built.items()
            },
            args.reps,
        )
        del built
        memory = {name: measure_memory(name, length, args.batch, args.threads) for name in MODELS}
        report["results"][length] = {"step_s": times, "memory": memory}
        rows.append(
            [
                length,
                times["SASRec"],
                times["TiM4Rec"],
                times["TiM4Rec"] / times["SASRec"],
                memory["SASRec"]["step_peak_mib"],
                memory["TiM4Rec"]["step_peak_mib"],
            ]
        )
        print(f"L={length}: {times}, {memory}", flush=True)

    first = rows[0]
    for row in rows:
        row.insert(4, row[2] / first[2])  # TiM4Rec's time relative to the shortest L
    print(
        f"\n## TiM4Rec vs SASRec, one training step on CPU (batch {args.batch}, d=64, "
        f"2 layers, {N_ITEMS} items, {args.threads} thread(s))\n"
    )
    print(
        markdown_table(
            [
                "L",
                "SASRec s/step",
                "TiM4Rec s/step",
                "TiM4Rec / SASRec",
                f"TiM4Rec time vs L={first[0]}",
                "SASRec step peak MiB",
                "TiM4Rec step peak MiB",
            ],
            rows,
        )
    )
    if args.out:
        write_json(args.out, report)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
