"""What the probes (``benchmarks/probes/``) read a finished run of a spec with: its model,
trainer and data built as the run built them, its best-validation weights, and per-group
metrics of the held-out items' ranks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from recbole_flame.experiment.spec import load_spec, result_file, results_dir, run_config
from recbole_flame.utils.errors import UserError


def prepare_run(spec: dict, label: str, seed: int, out_dir: Path) -> tuple:
    """``recbole_flame.quick_start.prepare`` for one (run, seed) of ``spec``, quietly: what the
    probes read a run's model, trainer and data with. Returns prepare's tuple."""
    from recbole_flame.quick_start import prepare

    config, _ = run_config(spec, label, seed, out_dir)
    config["state"] = "WARNING"
    return prepare(spec["runs"][label]["model"], spec["dataset"], config_dict=config)


def load_finished(spec: dict, label: str, seed: int, out_dir: Path) -> tuple:
    """Config, model (holding its best-validation weights), trainer and test data of a finished
    (run, seed) of ``spec``, and its result record: what the probes score."""
    from recbole_flame.utils.checkpoint import load_checkpoint

    record = json.loads(result_file(out_dir, label, seed).read_text())
    config, model, trainer, (_, _, test_data) = prepare_run(spec, label, seed, out_dir)
    model.load_state_dict(load_checkpoint(record["result"]["checkpoint"])["state_dict"])
    return config, model, trainer, test_data, record


def probe_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every probe of a spec's runs takes: the spec, ``--seed``, ``--threads``."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("spec", help="an experiment spec, benchmarks/experiments/NAME.yaml")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    return parser


def probe_setup(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, dict, Path]:
    """Parsed arguments (torch threads set), the spec and its results folder
    (``benchmarks/results/<spec name>/`` under the current directory). A bad spec stops with
    one line and exit status 2."""
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        spec = load_spec(args.spec)
    except UserError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return args, spec, results_dir(spec)


def group_metrics(ranks: torch.Tensor, k: int) -> dict[str, Any]:
    """Users, HR@k and NDCG@k of a group of test rows, from each row's 0-based rank of its one
    held-out item."""
    from recbole_flame.experiment.per_user import per_user_metric

    return {
        "users": int(ranks.numel()),
        f"hit@{k}": (ranks < k).double().mean().item(),
        f"ndcg@{k}": per_user_metric(ranks, f"ndcg@{k}").mean().item(),
    }
