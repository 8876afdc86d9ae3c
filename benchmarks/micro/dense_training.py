"""Prefix against dense training for SASRec and FLAME: epoch time, and accuracy at equal time.

    nice -n 5 python benchmarks/micro/dense_training.py --dataset=amazon-beauty \
        --sasrec_budget=180 --flame_budget=360

Settings are the FLAME paper's (``PAPER``): d=64, 2 blocks, dropout 0.5, L=50, batch 256,
Adam 1e-3, seed 42. Both modes trim each batch to its longest sequence.

1. Epoch time: one training step of each mode in turn (prefix, dense, prefix, ...) on
   successive batches of its own shuffled loader; the epoch time is the mean step time times
   the loader's steps per epoch (batches differ in length, so the mean, not the median).
2. Equal wall-clock: both modes train from the same initial weights, in alternating slices of
   ``--slice`` seconds so that load on a shared machine falls on both alike, until each has
   trained for the budget; validation NDCG@20 (full ranking) at ``--evals`` evenly spaced
   points of its training time (evaluation time not counted). FLAME's frozen network is the
   dense SASRec trained in the SASRec part, the same for both FLAME modes.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import torch
from common import run, train_step

from recbole_flame.experiment.output import markdown_table
from recbole_flame.quick_start import prepare

MODES = ("prefix", "dense")

# The FLAME paper's SASRec and FLAME settings (as FLAME.yaml), full ranking, leave-one-out.
PAPER = {
    "n_layers": 2,
    "n_heads": 2,
    "hidden_size": 64,
    "inner_size": 256,
    "hidden_dropout_prob": 0.5,
    "attn_dropout_prob": 0.5,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "initializer_range": 0.02,
    "loss_type": "CE",
    "MAX_ITEM_LIST_LENGTH": 50,
    "train_batch_size": 256,
    "learning_rate": 1e-3,
    "seed": 42,
    "metrics": ["Hit", "NDCG"],
    "topk": [5, 10, 20],
    "valid_metric": "NDCG@20",
    "show_progress": False,
    "gpu_id": "",
}


class Runner:
    """One (model, mode): its model, optimiser, endless batch stream and training clock."""

    def __init__(self, name: str, mode: str, base: dict, dataset: str) -> None:
        self.name, self.mode = name, mode
        _, self.model, self.trainer, (self.train, self.valid, _) = prepare(
            name, dataset, config_dict=dict(base, train_mode=mode)
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=base["learning_rate"])
        self.epoch, self.steps, self.seconds = 1, 0, 0.0
        self._batches = iter(self.train)
        self.curve: list[tuple[float, int, float]] = []
        self._anneal()

    def _anneal(self) -> None:
        if hasattr(self.model, "anneal"):
            self.model.anneal(self.epoch)

    def next_batch(self):
        try:
            return next(self._batches)
        except StopIteration:
            self.epoch += 1
            self._anneal()
            self._batches = iter(self.train)
            return next(self._batches)

    def step(self) -> float:
        batch = self.next_batch()
        start = time.perf_counter()
        train_step(self.model, self.optimizer, batch)
        spent = time.perf_counter() - start
        self.seconds += spent
        self.steps += 1
        return spent

    def validate(self) -> float:
        result = self.trainer.evaluate(self.valid, load_best_model=False)
        self.model.train()
        score = float(result["ndcg@20"])
        self.curve.append((round(self.seconds, 1), self.steps, score))
        print(
            f"  {self.name} {self.mode}: {self.seconds:.0f}s, {self.steps} steps, "
            f"epoch {self.epoch}: valid NDCG@20 {score:.4f}",
            flush=True,
        )
        return score


def epoch_times(runners: dict[str, Runner], steps: int) -> dict[str, dict[str, float]]:
    """Mean step seconds (interleaved) and the implied epoch seconds of each mode. Each mode's
    runner times its own steps (not the building of its next batch), the clock its equal-time
    budget runs on, so the interleaving is this loop's rather than ``interleaved_over``'s."""
    spent: dict[str, list[float]] = {m: [] for m in runners}
    for i in range(steps + 2):
        for mode, runner in runners.items():
            t = runner.step()
            if i >= 2:  # warm-up
                spent[mode].append(t)
    out = {}
    for mode, runner in runners.items():
        mean = sum(spent[mode]) / len(spent[mode])
        out[mode] = {
            "step_s": mean,
            "steps": len(runner.train),
            "epoch_s": mean * len(runner.train),
        }
    return out


def equal_time(runners: dict[str, Runner], budget: float, slice_s: float, evals: int) -> None:
    marks = {m: [budget * (k + 1) / evals for k in range(evals)] for m in runners}
    while any(marks.values()):
        for mode, runner in runners.items():
            stop = min(runner.seconds + slice_s, budget)
            while marks[mode] and runner.seconds < stop:
                runner.step()
                if runner.seconds >= marks[mode][0]:
                    marks[mode].pop(0)
                    runner.validate()


def fresh_pair(name: str, base: dict, dataset: str, init: dict | None) -> dict[str, Runner]:
    runners = {mode: Runner(name, mode, base, dataset) for mode in MODES}
    state = runners["prefix"].model.state_dict()
    runners["dense"].model.load_state_dict(state)  # the same initial weights
    if init is not None:
        for r in runners.values():
            r.model.load_frozen(init)
    return runners


def arguments(parser) -> None:
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument(
        "--data_path", default=None, help="default: RecBole's (amazon-beauty: the bundled copy)"
    )
    parser.add_argument("--timing_steps", type=int, default=30)
    parser.add_argument("--sasrec_budget", type=float, default=180.0)
    parser.add_argument("--flame_budget", type=float, default=360.0)
    parser.add_argument("--slice", type=float, default=15.0)
    parser.add_argument("--evals", type=int, default=3)


def measure(args, save) -> dict[str, Any]:
    base = dict(
        PAPER,
        eval_batch_size=1024,
        checkpoint_dir=os.path.abspath("benchmarks/results/saved"),
        state="WARNING",
        load_col={"inter": ["user_id", "item_id", "timestamp"]},
    )
    if args.data_path:
        base["data_path"] = os.path.abspath(args.data_path)
    report: dict[str, Any] = {"settings": base, "args": vars(args)}
    frozen = None
    for name, budget in (("SASRec", args.sasrec_budget), ("FLAME", args.flame_budget)):
        # Timing on throwaway models, so the equal-time runs start from fresh weights.
        timing = epoch_times(fresh_pair(name, base, args.dataset, frozen), args.timing_steps)
        report[f"{name}_timing"] = timing
        print(f"{name} timing: {timing}", flush=True)
        runners = fresh_pair(name, base, args.dataset, frozen)
        equal_time(runners, budget, args.slice, args.evals)
        report[f"{name}_curves"] = {m: r.curve for m, r in runners.items()}
        if name == "SASRec":
            frozen = runners["dense"].model.state_dict()
        save(report)
    return report


def table(report: dict[str, Any]) -> str:
    """Epoch time of each mode and validation NDCG@20 after equal training time."""
    timing_rows, curve_rows = [], []
    for name in ("SASRec", "FLAME"):
        timing = report[f"{name}_timing"]
        timing_rows.append(
            [
                name,
                timing["prefix"]["steps"],
                timing["prefix"]["epoch_s"],
                timing["dense"]["steps"],
                timing["dense"]["epoch_s"],
                timing["dense"]["epoch_s"] / timing["prefix"]["epoch_s"],
            ]
        )
        curves = report[f"{name}_curves"]
        for p, d in zip(curves["prefix"], curves["dense"], strict=False):
            curve_rows.append([name, p[0], p[1], p[2], d[1], d[2]])
    title = (
        f"## Prefix vs dense training on {report['args']['dataset']} "
        f"(CPU, {report['threads']} threads)\n\n"
    )
    timing_table = markdown_table(
        [
            "model",
            "prefix steps/epoch",
            "prefix s/epoch",
            "dense steps/epoch",
            "dense s/epoch",
            "dense / prefix",
        ],
        timing_rows,
    )
    curve_table = markdown_table(
        ["model", "train s", "prefix steps", "prefix NDCG@20", "dense steps", "dense NDCG@20"],
        curve_rows,
    )
    return f"{title}{timing_table}\n\nValidation NDCG@20 after equal training time\n\n{curve_table}"


if __name__ == "__main__":
    sys.exit(
        run(
            __doc__,
            measure,
            table,
            out="benchmarks/results/micro/dense_training/result.json",
            arguments=arguments,
            threads=None,
        )
    )
