"""What sequence packing saves: a prefix training epoch, packed over unpacked, for SASRec and
FLAME (the paper's settings, FLAME.yaml), on amazon-beauty and ml-100k.

    python benchmarks/micro/packing.py --threads=2 [--batches=20]

For each dataset, ``--batches`` batches are drawn from RecBole's prefix training loader and each
takes one training step in four ways, interleaved (SASRec unpacked, SASRec packed, FLAME
unpacked, FLAME packed): same batches, same starting weights. An epoch is the sum of its steps,
so the epoch ratio is the ratio of the mean step times over the same batches (the median over
batches of the per-batch ratio is reported beside it). Each step's floating-point operations
(``torch.utils.flop_counter``: matrix products and attention, forward and backward) over its time
give its achieved GFLOP/s, printed beside the machine's float32 matmul rate at the same thread
count (a 1024 x 1024 product, the median of 20). Time with nothing else running on the machine.
"""

from __future__ import annotations

import copy
import statistics
import sys
from typing import Any

import torch
from common import count_flops, flame_and_backbone, interleaved_over, run, timed, train_step

from recbole_flame.experiment.output import markdown_table


def matmul_peak_gflops(n: int = 1024, repeats: int = 20) -> float:
    """The machine's float32 matmul rate at the current thread count (median of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    seconds = statistics.median(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / seconds / 1e9


def step_flops(model, batch) -> int:
    """Floating-point operations of one training step (no optimiser update), both passes."""

    def step(b) -> None:
        losses = model.calculate_loss(b)
        (sum(losses) if isinstance(losses, tuple) else losses).backward()

    model.train()
    flops = count_flops(step, batch)
    model.zero_grad()
    return flops


def with_packing(model: torch.nn.Module, packing: bool) -> torch.nn.Module:
    """A copy of ``model`` (same weights) that trains packed or not."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if hasattr(module, "packing"):
            module.packing = packing
    return twin


def measure(dataset: str, args) -> dict:
    base = {
        "train_mode": "prefix",
        "show_progress": False,
        "state": "ERROR",
        "epochs": 1,
        "checkpoint_dir": "/tmp/packing_bench",
    }
    if dataset == "amazon-beauty":  # the authors' recipe of issue 30
        base.update(history_limit=53, eval_exclude_history=True)
    flame, sasrec, train_data, flame_config = flame_and_backbone(dataset, base)
    models = {
        "SASRec unpacked": with_packing(sasrec, False),
        "SASRec packed": with_packing(sasrec, True),
        "FLAME unpacked": with_packing(flame, False),
        "FLAME packed": with_packing(flame, True),
    }
    optimizers = {
        name: torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
        for name, m in models.items()
    }
    batches = [b for _, b in zip(range(args.batches + 2), train_data, strict=False)]
    lengths = torch.cat([b["item_length"] for b in batches]).float()
    flops = {
        name: statistics.fmean(step_flops(m, b) for b in batches[2:5]) for name, m in models.items()
    }
    samples = interleaved_over(
        {
            name: lambda b, m=m, o=optimizers[name]: train_step(m, o, b)
            for name, m in models.items()
        },
        batches[2:],
        warmup=batches[:2],
    )
    steps = len(train_data)
    out = {
        "steps_per_epoch": steps,
        "mean_sample_length": float(lengths.mean()),
        "max_seq_length": flame_config["MAX_ITEM_LIST_LENGTH"],
        "mean_step_s": {k: statistics.fmean(v) for k, v in samples.items()},
        "median_step_s": {k: statistics.median(v) for k, v in samples.items()},
        "epoch_estimate_s": {k: statistics.fmean(v) * steps for k, v in samples.items()},
        "step_gflop": {k: v / 1e9 for k, v in flops.items()},
        "samples": samples,
    }
    out["achieved_gflops_per_s"] = {k: out["step_gflop"][k] / out["mean_step_s"][k] for k in models}
    for model in ("SASRec", "FLAME"):
        packed, unpacked = samples[f"{model} packed"], samples[f"{model} unpacked"]
        out[f"{model}_epoch_ratio"] = statistics.fmean(packed) / statistics.fmean(unpacked)
        out[f"{model}_median_batch_ratio"] = statistics.median(
            p / u for p, u in zip(packed, unpacked, strict=True)
        )
    return out


def arguments(parser) -> None:
    parser.add_argument("--datasets", nargs="+", default=["amazon-beauty", "ml-100k"])
    parser.add_argument("--batches", type=int, default=20)


def measure_all(args, save) -> dict[str, Any]:
    report: dict[str, Any] = {"matmul_peak_gflops_per_s": matmul_peak_gflops(), "runs": {}}
    for dataset in args.datasets:
        report["runs"][dataset] = measure(dataset, args)
        print(f"{dataset}: done", flush=True)
    return report


def table(report: dict[str, Any]) -> str:
    """Per dataset and model: the mean step unpacked and packed, the epoch and per-batch
    ratios, the packed epoch estimate and the achieved GFLOP/s, under the machine's matmul
    rate."""
    rows = []
    for dataset, entry in report["runs"].items():
        for model in ("SASRec", "FLAME"):
            rate = entry["achieved_gflops_per_s"]
            rows.append(
                [
                    dataset,
                    model,
                    entry["steps_per_epoch"],
                    entry["mean_step_s"][f"{model} unpacked"],
                    entry["mean_step_s"][f"{model} packed"],
                    entry[f"{model}_epoch_ratio"],
                    entry[f"{model}_median_batch_ratio"],
                    entry["epoch_estimate_s"][f"{model} packed"],
                    rate[f"{model} unpacked"],
                    rate[f"{model} packed"],
                ]
            )
    peak = (
        f"float32 matmul peak ({report['threads']} threads): "
        f"{report['matmul_peak_gflops_per_s']:.1f} GFLOP/s\n\n"
    )
    headers = [
        "dataset",
        "model",
        "steps/epoch",
        "unpacked s/step",
        "packed s/step",
        "epoch packed / unpacked",
        "median batch ratio",
        "packed epoch s (estimate)",
        "GFLOP/s unpacked",
        "GFLOP/s packed",
    ]
    return peak + markdown_table(headers, rows)


if __name__ == "__main__":
    sys.exit(
        run(
            __doc__,
            measure_all,
            table,
            out="benchmarks/results/micro/packing/result.json",
            arguments=arguments,
            threads=None,
        )
    )
