"""What a FLAME stage-2 training step costs against a SASRec step, in each train mode, and
against the authors' own code on the same batches.

    python benchmarks/micro/flame_cost.py --datasets ml-100k amazon-beauty --modes dense prefix \
        --steps=10 [--authors_dir=PATH] [--threads=2]

For every (dataset, mode): this package's SASRec and FLAME (the paper's settings, FLAME.yaml)
each take training steps on the same batches of that mode's loader, interleaved (SASRec,
FLAME, SASRec, ...), and the median step time of each is reported with their ratio; the epoch
estimate is the mean step time times the loader's steps (dense batches differ in length).
With ``--authors_dir`` (a checkout of github.com/woo-joo/FLAME_SIGIR26) the authors' FLAME
takes its step on the same prefix batches, left-padded to L as their loader gives them, in the
same interleaving. Time with nothing else running on the machine.

Each step's floating-point operations are also counted (``torch.utils.flop_counter``: matrix
products and attention, forward and backward, on the first measured batch). Their ratio does
not depend on the machine or its load: it is the least step-time ratio that faster kernels
alone could reach, since FLAME does this much more arithmetic than SASRec per step.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import statistics
import sys
from types import ModuleType, SimpleNamespace
from typing import Any

import torch
from common import count_flops, flame_and_backbone, interleaved_over, run, train_step

from recbole_flame.experiment.output import markdown_table


def import_from_checkout(folder: str, package: str, module: str) -> ModuleType:
    """``package.module`` of the checkout at ``folder`` (the authors' ``models.flame``, which
    itself imports ``models.sasrec``), registered as ``package`` so its own absolute imports
    resolve inside that checkout, without putting the checkout on the import path."""
    spec = importlib.machinery.PathFinder.find_spec(package, [os.path.abspath(folder)])
    if spec is None:
        raise SystemExit(f"--authors_dir={folder}: no {package}/ folder in it")
    sys.modules[package] = importlib.util.module_from_spec(spec)
    if spec.loader is not None:
        spec.loader.exec_module(sys.modules[package])
    return importlib.import_module(f"{package}.{module}")


def authors_step_fn(authors_dir: str, config, n_items: int):
    """A training step of the authors' FLAME (their module, random frozen weights: the cost
    does not depend on them) on a RecBole prefix batch, left-padded as their sampler does."""
    AuthorsFLAME = import_from_checkout(authors_dir, "models", "flame").FLAME

    class Unloaded(AuthorsFLAME):
        def load_frozen(self, args):  # their weights file is per dataset; cost is the same
            for param in self.frozen.parameters():
                param.requires_grad = False

    length = config["MAX_ITEM_LIST_LENGTH"]
    args = SimpleNamespace(
        max_len=length,
        tau=1.0,
        lambda_0=1.0,
        lambda_R=1e-5,
        num_epoch=200,
        std=0.02,
        num_item=n_items - 1,
        num_latent=config["hidden_size"],
        dropout=config["hidden_dropout_prob"],
        num_head=config["n_heads"],
        num_layer=config["n_layers"],
        dataset="",
    )
    model = Unloaded(args)
    model.anneal(1)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step(batch) -> None:
        seq, lens = batch["item_id_list"], batch["item_length"]
        left = torch.zeros(len(seq), length, dtype=seq.dtype)
        for row, n in enumerate(lens.tolist()):
            left[row, length - n :] = seq[row, :n]
        model.train()
        optimizer.zero_grad()
        loss = model.compute_loss(model(left), batch["item_id"])
        loss.backward()
        optimizer.step()

    return step


def measure(dataset: str, mode: str, args) -> dict:
    base = {
        "train_mode": mode,
        "show_progress": False,
        "state": "ERROR",
        "epochs": 1,
        "checkpoint_dir": "/tmp/flame_cost",
    }
    if args.data_path and dataset != "ml-100k":
        base["data_path"] = os.path.abspath(args.data_path)
    flame, sasrec, train_data, flame_config = flame_and_backbone(dataset, base)
    batches = [b for _, b in zip(range(args.steps + 2), train_data, strict=False)]
    optimizers = {
        "SASRec": torch.optim.Adam(sasrec.parameters(), lr=1e-3),
        "FLAME": torch.optim.Adam([p for p in flame.parameters() if p.requires_grad], lr=1e-3),
    }
    fns = {
        "SASRec": lambda b: train_step(sasrec, optimizers["SASRec"], b),
        "FLAME": lambda b: train_step(flame, optimizers["FLAME"], b),
    }
    if args.authors_dir and mode == "prefix":
        fns["authors FLAME"] = authors_step_fn(
            args.authors_dir, flame_config, flame.learnable.item_embedding.num_embeddings
        )
    for b in batches[:2]:  # warm-up
        for fn in fns.values():
            fn(b)
    flops = {name: count_flops(fn, batches[2]) for name, fn in fns.items()}
    samples = interleaved_over(fns, batches[2:])
    steps = len(train_data)
    return {
        "steps_per_epoch": steps,
        "median_step_s": {k: statistics.median(v) for k, v in samples.items()},
        "step_gflops": {k: v / 1e9 for k, v in flops.items()},
        "epoch_estimate_s": {k: statistics.fmean(v) * steps for k, v in samples.items()},
        "samples": samples,
    }


def arguments(parser) -> None:
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "amazon-beauty"])
    parser.add_argument("--modes", nargs="+", default=["dense", "prefix"])
    parser.add_argument(
        "--data_path", default=None, help="default: RecBole's (amazon-beauty: the bundled copy)"
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--authors_dir", default=None)


def measure_all(args, save) -> dict[str, Any]:
    runs = {}
    for dataset in args.datasets:
        for mode in args.modes:
            runs[f"{dataset}/{mode}"] = measure(dataset, mode, args)
            print(f"{dataset}/{mode}: {runs[f'{dataset}/{mode}']['median_step_s']}", flush=True)
    return {"runs": runs}


def table(report: dict[str, Any]) -> str:
    """Per dataset and train mode: SASRec's and FLAME's median step, their time and FLOPs
    ratios, and the authors' FLAME beside ours where it was timed."""
    rows = []
    for name, entry in report["runs"].items():
        dataset, mode = name.split("/")
        med = entry["median_step_s"]
        authors = med.get("authors FLAME")
        gflops = entry["step_gflops"]
        rows.append(
            [
                dataset,
                mode,
                entry["steps_per_epoch"],
                med["SASRec"],
                med["FLAME"],
                med["FLAME"] / med["SASRec"],
                gflops["FLAME"] / gflops["SASRec"],
                authors if authors is not None else "-",
                med["FLAME"] / authors if authors else "-",
                gflops["FLAME"] / gflops["authors FLAME"] if authors else "-",
                entry["epoch_estimate_s"]["FLAME"] / entry["epoch_estimate_s"]["SASRec"],
            ]
        )
    headers = [
        "dataset",
        "mode",
        "steps/epoch",
        "SASRec s/step",
        "FLAME s/step",
        "FLAME / SASRec, time",
        "FLAME / SASRec, FLOPs",
        "authors' FLAME s/step",
        "ours / authors', time",
        "ours / authors', FLOPs",
        "epoch ratio (mean steps)",
    ]
    return markdown_table(headers, rows)


if __name__ == "__main__":
    sys.exit(
        run(
            __doc__,
            measure_all,
            table,
            out="benchmarks/results/micro/flame_cost/result.json",
            arguments=arguments,
            threads=None,
        )
    )
