"""What every micro-benchmark under ``benchmarks/micro/`` shares: :func:`run`, the runner each
script hands its measurement and its table to (arguments, threads, provenance, writing, child
processes), and what they time and count: one training step as RecBole's trainer takes it, and
the floating-point operations of a step. Interleaved timing itself is
:mod:`recbole_flame.utils.timing` (re-exported here), which the package's own inference timing
uses."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from recbole_flame.experiment.output import provenance, write_json
from recbole_flame.utils.timing import interleaved_over, interleaved_samples, timed

__all__ = [
    "BACKBONE_KEYS",
    "child_command",
    "count_flops",
    "flame_and_backbone",
    "in_fresh_process",
    "interleaved_over",
    "interleaved_samples",
    "run",
    "synthetic_model",
    "timed",
    "train_step",
]

#: A measurement: the parsed arguments and a ``save(partial)`` that writes what is measured
#: so far (so that a run stopped early keeps it); returns the result's own keys.
Measure = Callable[[argparse.Namespace, Callable[[dict[str, Any]], None]], dict[str, Any]]


def _thread_counts(text: str) -> list[int]:
    counts = [int(v) for v in text.split(",") if v.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be positive integers: {text!r}")
    return counts


def run(
    doc: str,
    measure: Measure,
    table: Callable[[dict[str, Any]], str],
    *,
    out: str | Callable[[argparse.Namespace], str],
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    threads: int | None = 1,
    child: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    argv: list[str] | None = None,
) -> int:
    """Run one micro-benchmark from the command line and return its exit status.

    The parser takes the script's own ``arguments`` and ``--threads`` (torch threads, default
    ``threads``, None: every CPU; a comma list such as ``1,2`` is kept in
    ``args.thread_counts`` for a script that loops over it, ``args.threads`` is the first) and
    ``--out`` (the JSON written, default ``out`` or ``out(args)``; empty: not written). The result file holds
    the command, commit and machine (:func:`provenance`), the threads, the load average before
    (other work on the machine), what ``measure`` returns and the wall seconds; ``table``
    renders it (the same renderer the docs tables are generated with) and is printed.

    With ``child``, the script can also measure in a fresh process (a process's peak memory
    is a high-water mark): :func:`in_fresh_process` starts it with ``--child=JSON`` and this
    prints ``child(payload)`` as its last line; a MemoryError there exits 3.
    """
    parser = argparse.ArgumentParser(description=doc.strip().split("\n")[0])
    if arguments is not None:
        arguments(parser)
    default_threads = threads if threads is not None else os.cpu_count() or 1
    parser.add_argument(
        "--threads",
        type=_thread_counts,
        default=[default_threads],
        help=f"torch threads, or a comma list of counts (default {default_threads})",
    )
    parser.add_argument("--out", default=None, help="result JSON (empty: not written)")
    if child is not None:
        parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.thread_counts, args.threads = args.threads, args.threads[0]
    if args.out is None:
        args.out = out(args) if callable(out) else out
    torch.set_num_threads(args.threads)
    if child is not None and args.child is not None:
        try:
            print(json.dumps(child(json.loads(args.child))), flush=True)
        except MemoryError:
            print("MemoryError", file=sys.stderr, flush=True)
            return 3
        return 0

    start = time.perf_counter()
    head = {
        **provenance(),
        "threads": args.threads if len(args.thread_counts) == 1 else args.thread_counts,
        # other work on the machine (1-minute load average; alone, it is about the threads)
        "load_average_before": os.getloadavg()[0],
    }

    def save(partial: dict[str, Any]) -> None:
        if args.out:
            write_json(args.out, {**head, **partial, "wall_seconds": time.perf_counter() - start})

    report = {**head, **measure(args, save)}
    report["wall_seconds"] = time.perf_counter() - start
    if args.out:
        write_json(args.out, report)
    print(table(report))
    if args.out:
        print(f"written: {os.path.relpath(args.out)}")
    return 0


def child_command(script: str, payload: dict[str, Any], threads: int) -> list[str]:
    """The command that runs ``script``'s child measurement on ``payload`` (see :func:`run`)."""
    return [
        sys.executable,
        str(Path(script).resolve()),
        f"--child={json.dumps(payload)}",
        f"--threads={threads}",
    ]


def in_fresh_process(
    script: str, payload: dict[str, Any], threads: int, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """``script``'s child measurement of ``payload`` in a fresh process: its printed result."""
    proc = subprocess.run(
        child_command(script, payload, threads),
        capture_output=True,
        text=True,
        check=True,
        env=None if env is None else {**os.environ, **env},
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


#: The SASRec keys of a FLAME config: a SASRec built with them is FLAME's backbone, so a FLAME
#: step and a SASRec step are timed on the same network.
BACKBONE_KEYS = (
    "n_layers",
    "n_heads",
    "hidden_size",
    "inner_size",
    "hidden_dropout_prob",
    "attn_dropout_prob",
    "hidden_act",
    "layer_norm_eps",
    "initializer_range",
    "loss_type",
    "MAX_ITEM_LIST_LENGTH",
    "train_batch_size",
    "learning_rate",
    "position_alignment",
)


def synthetic_model(
    model_name: str,
    settings: dict[str, Any],
    n_items: int,
    fields: tuple[str, ...] | None = None,
    seed: int = 0,
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A model of ``n_items`` items built without a dataset (its shape is all a timing needs)
    from ``settings`` over the model's yaml, on the CPU, and Adam (lr 1e-3) over its trainable
    parameters; ``fields`` names the dataset's fields where the model checks them."""
    from recbole_flame.config import Config
    from recbole_flame.model.dataset_stub import DatasetStub
    from recbole_flame.utils.registry import get_model

    config = Config(
        model_name,
        "ml-100k",
        config_dict={"gpu_id": "", "use_gpu": False, "learning_rate": 1e-3, **settings},
    )
    torch.manual_seed(seed)
    model = get_model(model_name)(config, DatasetStub(n_items, fields))
    # Importing RecBole's sequential models (SINE) switches anomaly detection on: a debugging
    # aid that slows every backward pass.
    torch.autograd.set_detect_anomaly(False)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.Adam(params, lr=1e-3)


def flame_and_backbone(dataset: str, config_dict: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """FLAME on ``dataset`` (annealed to its first stage-2 epoch), a SASRec with FLAME's
    backbone settings (so the two differ in method only), FLAME's training loader and
    config."""
    from recbole_flame.config import Config
    from recbole_flame.quick_start import prepare

    _, flame, _, (train_data, _, _) = prepare("FLAME", dataset, config_dict=config_dict)
    flame_config = Config("FLAME", dataset, config_dict=config_dict)
    backbone = {k: flame_config[k] for k in BACKBONE_KEYS}
    _, sasrec, _, _ = prepare("SASRec", dataset, config_dict={**config_dict, **backbone})
    flame.anneal(1)
    return flame, sasrec, train_data, flame_config


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Any) -> None:
    """One optimisation step as RecBole's trainer takes it (losses in a tuple are summed)."""
    model.train()
    optimizer.zero_grad()
    losses = model.calculate_loss(batch)
    loss = sum(losses) if isinstance(losses, tuple) else losses
    loss.backward()
    optimizer.step()


def count_flops(step: Callable[[Any], Any], batch: Any) -> int:
    """Floating-point operations of one call ``step(batch)`` (matrix products and attention,
    forward and backward, as ``torch.utils.flop_counter`` counts them): a cost that does not
    depend on the machine or its load."""
    with FlopCounterMode(display=False) as counter:
        step(batch)
    return counter.get_total_flops()
