"""What a training step over 2 processes (gloo, on the CPU) costs against one process on the
same global batch, and how much of it is communication: for SASRec and FLAME (prefix, packed,
FLAME.yaml's settings) on ml-100k (``--datasets``: others).

    python benchmarks/micro/distributed.py [--steps=20] [--rounds=2]

One process with all the machine's threads, then 2 processes with half each, in alternating
rounds (the two layouts cannot share the cores at once), each taking ``--steps`` training steps
on the same global batches of ``train_batch_size`` rows (drawn once; rank r takes half r of each)
through this package's trainer, DDP's gradient hooks included. Reported: the median step time of
each layout, their ratio, and the collectives a distributed step adds, timed alone on the same
process group (median of 20): the all-reduce of every trainable gradient, and for FLAME the
gather of its path outputs (forward all-gather and backward all-reduce). On a GPU machine the
same script measures NCCL. Time with nothing else running on the machine.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from typing import Any

import torch
import torch.multiprocessing as mp
from common import run, timed

from recbole_flame.experiment.output import markdown_table
from recbole_flame.utils import distributed

MODELS = ("SASRec", "FLAME")


class Batches(list):
    """The batches one ``_train_epoch`` call trains on (as its loader)."""

    shuffle = False


def settings(dataset: str) -> dict:
    base = {
        "train_mode": "prefix",
        "show_progress": False,
        "state": "ERROR",
        "epochs": 1,
        "gpu_id": "",
        "checkpoint_dir": os.path.join(tempfile.gettempdir(), "ddp_bench"),
        "seed": 1,
    }
    if dataset == "amazon-beauty":  # the FLAME authors' recipe
        base.update(history_limit=53, eval_exclude_history=True)
    return base


def backbone_settings(dataset: str, base: dict) -> dict:
    """SASRec with FLAME's backbone settings (FLAME.yaml), so the two step the same network."""
    from common import BACKBONE_KEYS

    from recbole_flame.config import Config

    flame = Config("FLAME", dataset, config_dict=base)
    return {**base, **{k: flame[k] for k in BACKBONE_KEYS}}


def step_times(model: str, dataset: str, config_dict: dict, steps: int, part: int | None) -> dict:
    """Median seconds of one training step over ``steps`` global batches (``part``: this rank's
    half of each), and on a distributed run the collectives timed alone."""
    from recbole_flame.quick_start import prepare

    config, net, trainer, (train_data, _, _) = prepare(model, dataset, config_dict=config_dict)
    if model == "FLAME":
        net.anneal(1)
    rows = train_data._dataset.inter_feat
    size = config["train_batch_size"]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))
    batches = []
    for k in range(steps + 2):
        index = order[k * size : (k + 1) * size]
        if part is not None:
            half = size // distributed.world_size()
            index = index[part * half : (part + 1) * half]
        batches.append(rows[index])
    for b in batches[:2]:  # warm-up
        trainer._train_epoch(Batches([b]), 0)
    samples = [timed(lambda b=b: trainer._train_epoch(Batches([b]), 0)) for b in batches[2:]]
    params = [p for p in net.parameters() if p.requires_grad]
    out = {"step_s": statistics.median(samples), "trainable": sum(p.numel() for p in params)}
    if part is not None:
        out.update(collectives(net, model, size, params))
    return out


def collectives(net, model: str, size: int, params) -> dict:
    import torch.distributed as dist

    flat = torch.zeros(sum(p.numel() for p in params))
    for _ in range(3):
        dist.all_reduce(flat)
    out = {
        "grad_allreduce_s": statistics.median(
            timed(lambda: dist.all_reduce(flat)) for _ in range(20)
        )
    }
    if model == "FLAME":
        local = size // distributed.world_size()
        views = torch.randn(
            len(net.sample_paths()) * local, net.learnable.hidden_size, requires_grad=True
        )

        def gather() -> None:
            distributed.gather_rows(views).sum().backward()

        for _ in range(3):
            gather()
        out["flame_gather_s"] = statistics.median(timed(gather) for _ in range(20))
    return out


def _worker(
    local_rank: int, model: str, dataset: str, config_dict: dict, steps: int, out: str
) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    config_dict = {**config_dict, "local_rank": local_rank}
    result = step_times(model, dataset, config_dict, steps, part=local_rank)
    if local_rank == 0:
        torch.save(result, out)


def two_processes(model: str, dataset: str, config_dict: dict, steps: int) -> dict:
    out = os.path.join(tempfile.mkdtemp(), "rank0.pt")
    ddp = {
        "world_size": 2,
        "nproc": 2,
        "ip": "127.0.0.1",
        "port": distributed.free_port(),
        "offset": 0,
    }
    mp.spawn(_worker, args=(model, dataset, {**config_dict, **ddp}, steps, out), nprocs=2)
    return torch.load(out, weights_only=False)


def table(report: dict[str, Any]) -> str:
    """The table of ``benchmarks/micro/distributed.py``'s result."""
    rows = []
    for name, entry in report["runs"].items():
        dataset, model = name.split("/")
        gather = entry["flame_gather_s"]
        rows.append(
            [
                dataset,
                model,
                entry["trainable_parameters"],
                entry["one_process_step_s"],
                entry["two_process_step_s"],
                entry["ratio"],
                entry["grad_allreduce_s"],
                gather if gather is not None else "-",
                entry["communication_share"],
            ]
        )
    headers = [
        "dataset",
        "model",
        "trainable parameters",
        f"1 process x {report['threads_one_process']} threads: s/step",
        f"2 processes x {report['threads_per_rank']} thread(s): s/step",
        "2 / 1",
        "gradient all-reduce s",
        "FLAME gather s",
        "communication / 2-process step",
    ]
    machine = report.get("machine") or {}
    note = (
        f"\n\n`{report.get('command', '?')}` at commit {str(report.get('commit', '?'))[:7]}: "
        f"{machine.get('cpus', '?')} CPUs, torch {machine.get('torch', '?')}, "
        f"{report.get('wall_seconds', 0):.0f} s"
    )
    return markdown_table(headers, rows) + note


def arguments(parser) -> None:
    parser.add_argument("--datasets", nargs="+", default=["ml-100k"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)


def measure(args, save) -> dict[str, Any]:
    threads = args.threads
    report: dict[str, Any] = {
        "threads_one_process": threads,
        "threads_per_rank": max(1, threads // 2),
        "runs": {},
    }
    for dataset in args.datasets:
        base = settings(dataset)
        for model in MODELS:
            config_dict = backbone_settings(dataset, base) if model == "SASRec" else base
            one, two = [], []
            for _ in range(args.rounds):
                torch.set_num_threads(threads)
                one.append(step_times(model, dataset, config_dict, args.steps, part=None))
                two.append(two_processes(model, dataset, config_dict, args.steps))
            entry = {
                "one_process_step_s": statistics.median(r["step_s"] for r in one),
                "two_process_step_s": statistics.median(r["step_s"] for r in two),
                "grad_allreduce_s": statistics.median(r["grad_allreduce_s"] for r in two),
                "flame_gather_s": statistics.median(r["flame_gather_s"] for r in two)
                if model == "FLAME"
                else None,
                "trainable_parameters": one[0]["trainable"],
                "global_batch": config_dict.get("train_batch_size") or "yaml default",
                "rounds": {"one": one, "two": two},
            }
            entry["ratio"] = entry["two_process_step_s"] / entry["one_process_step_s"]
            comm = entry["grad_allreduce_s"] + (entry["flame_gather_s"] or 0.0)
            entry["communication_share"] = comm / entry["two_process_step_s"]
            report["runs"][f"{dataset}/{model}"] = entry
            print(f"{dataset} {model}: done", flush=True)
    return report


if __name__ == "__main__":
    sys.exit(
        run(
            __doc__,
            measure,
            table,
            out="benchmarks/results/micro/distributed/result.json",
            arguments=arguments,
            threads=None,
        )
    )
