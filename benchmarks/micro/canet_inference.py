"""Where CANet's routed inference spends its time against the full route, on the same test
batches: the router, each width group's blocks and output layer, and the bookkeeping between
them (sorting rows, chunking, putting scores back in order), with the floating-point operations
each part executes and the operator calls it makes.

    python benchmarks/micro/canet_inference.py [--result=benchmarks/results/canet_beauty_cpu/CANet-seed1.json] \
        [--batches=20] [--threads=N] [--eval_batch_size=N] [--row_chunks]

``--row_chunks`` also times both paths with chunks that end only at a depth change or at
``eval_chunk_size`` rows (the rule before chunks also ended at halved lengths), in the same
interleaved loop, so the two chunk rules are compared on the same batches and machine state.

The model is built with the configuration of ``--result`` (a finished CANet run) and its rows
are sent to routes in the proportions of that run's test route histogram (drawn per row, seed
0): run time depends on the routes and the sequence lengths, not on the weights' values, so
the trained checkpoint is not needed (the trained router's link between a user's length and
route is not kept). Both paths are this package's inference (``grouped_scores``, as
``full_sort_predict`` runs it); the parts are timed inside those calls by wrapping the methods
they call. Routed and full calls alternate, medians over the batches. Operator calls are the
aten operators dispatched: on a GPU each is at least one kernel launch, a cost per call that
does not shrink with the rows. Time with nothing else running on the machine.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch
from common import count_flops, interleaved_over, run
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from recbole_flame.experiment.output import markdown_table
from recbole_flame.model.canet import scoring
from recbole_flame.model.canet.routes import parse_route
from recbole_flame.quick_start import prepare


class OpCounter(TorchDispatchMode):
    """Counts the aten operators dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def row_chunk_sizes(depths: list[int], lengths: list[int], cap: int | None) -> list[int]:
    """The earlier chunk rule: a chunk ends where the depth changes or at ``cap`` rows (equal
    lengths never halve)."""
    return scoring.chunk_sizes(depths, [1] * len(lengths), cap)


class PartTimer:
    """Wraps the model's ``_width_rows`` and ``score_hidden`` so that each call's seconds add
    to its part (blocks or output layer, by width) of the call being timed; with ``counting``
    on, each call's floating-point operations add to ``flops`` instead (an untimed pass)."""

    def __init__(self, model) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.flops: dict[str, float] = defaultdict(float)
        self.counting = False
        for name, part, width_arg in (("_width_rows", "blocks", 3), ("score_hidden", "output", 1)):
            original = getattr(model, name)
            setattr(model, name, self._wrap(original, part, width_arg))

    def _wrap(self, fn, part: str, width_arg: int):
        def timed_part(*args, **kwargs):
            key = f"{part} h{args[width_arg]}"
            if self.counting:
                with FlopCounterMode(display=False) as counter:
                    out = fn(*args, **kwargs)
                self.flops[key] += counter.get_total_flops()
                return out
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds[key] += time.perf_counter() - start
            return out

        return timed_part


def table(report: dict[str, Any]) -> str:
    """The table of ``benchmarks/micro/canet_inference.py``'s result: median seconds per test
    batch of each part, routed and on the full route, and the ratios under it."""
    routed = report["paths"]["routed"]
    full = report["paths"]["full_route"]
    parts = sorted((set(routed["median_seconds"]) | set(full["median_seconds"])) - {"total"})
    parts.append("total")
    total = routed["median_seconds"]["total"]
    # Achieved GFLOP/s per part (results written before it was measured have none).
    rate = [p.get("gflop_per_second") for p in (routed, full)]
    rows = [
        [
            part,
            routed["median_seconds"].get(part, "-"),
            full["median_seconds"].get(part, "-"),
            round(routed["median_seconds"].get(part, 0.0) / total, 3),
        ]
        + ([r.get(part, "-") for r in rate] if rate[0] is not None else [])
        for part in parts
    ]
    pad = ["-", "-"] if rate[0] is not None else []
    rows.append(
        ["operator calls (first batch)", routed["ops_first_batch"], full["ops_first_batch"], "-"]
        + pad
    )
    rows.append(
        [
            "GFLOP executed (first batch)",
            routed["flops_first_batch"] / 1e9,
            full["flops_first_batch"] / 1e9,
            "-",
        ]
        + pad
    )
    headers = ["part", "routed: s per batch", "full route: s per batch", "share of routed time"]
    if rate[0] is not None:
        headers += ["routed: GFLOP/s", "full route: GFLOP/s"]
    shares = ", ".join(f"{name} {share:.2f}" for name, share in report["route_share"].items())
    machine = report.get("machine") or {}
    note = (
        f"\n\nTime ratio routed / full {report['time_ratio']:.2f}; FLOPs ratio as CANet counts "
        f"it (at L, router included) {report['accounted_flops_ratio']:.2f}, as executed on these "
        f"batches {report['executed_flops_ratio']:.2f}. Routes drawn in the shares of "
        f"`{report.get('from', '?')}`'s test histogram ({shares}); {report['batches']} batches "
        f"of {report['batch_size']}. `{report.get('command', '?')}` at commit "
        f"{str(report.get('commit', '?'))[:7]}: {report.get('threads')} thread(s), "
        f"{machine.get('cpus', '?')} CPUs, torch {machine.get('torch', '?')}, load average "
        f"{report.get('load_average_before', '?')} before it (other work on the machine)"
    )
    rows_only = report.get("row_chunks")
    if rows_only:
        note += (
            f".\n\nWith chunks that end only at a depth change or at the row cap (the earlier "
            f"rule), in the same interleaved loop: time ratio routed / full "
            f"{rows_only['time_ratio']:.2f} (executed FLOPs ratio "
            f"{rows_only['executed_flops_ratio']:.2f}); the routed path takes "
            f"{rows_only['routed_vs_halved']:.2f}x and the full route "
            f"{rows_only['full_vs_halved']:.2f}x the time they take with halved-length chunks"
        )
    return markdown_table(headers, rows) + note


def arguments(parser) -> None:
    parser.add_argument("--result", default="benchmarks/results/canet_beauty_cpu/CANet-seed1.json")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--eval_chunk_size", type=int, help="default: CANet.yaml's")
    parser.add_argument("--eval_batch_size", type=int, help="default: the run's")
    parser.add_argument(
        "--row_chunks", action="store_true", help="also time chunks of rows alone (the old rule)"
    )


def measure(args, save) -> dict[str, Any]:
    record = json.loads(Path(args.result).read_text())
    counts = record["result"]["route_counts"]
    config = {k: v for k, v in record["config"].items() if k not in ("checkpoint_dir", "data_path")}
    config.update(show_progress=False, state="ERROR", epochs=0)
    if args.eval_chunk_size is not None:
        config["eval_chunk_size"] = args.eval_chunk_size
    if args.eval_batch_size is not None:
        config["eval_batch_size"] = args.eval_batch_size
    _, model, _, (_, _, test_data) = prepare("CANet", "amazon-beauty", config_dict=config)
    model.eval()
    routes = [parse_route(name) for name in counts]
    weights = torch.tensor([counts[name] for name in counts], dtype=torch.float)
    generator = torch.Generator().manual_seed(0)
    batches = []
    for batch in test_data:
        inter = batch[0]
        seq, length = inter[model.ITEM_SEQ], inter[model.ITEM_SEQ_LEN]
        drawn = torch.multinomial(weights, seq.size(0), replacement=True, generator=generator)
        index = torch.tensor([model.route_index[routes[i]] for i in drawn.tolist()])
        seq = seq[:, : int(length.max())]  # as forward cuts it
        batches.append((seq, length, index))
        if len(batches) == args.batches:
            break
    full = model.route_index[model.full_route]
    timer = PartTimer(model)

    def routed(seq, length, index) -> None:
        start = time.perf_counter()
        model.router_logits(seq, length)
        timer.seconds["router"] += time.perf_counter() - start
        model.grouped_scores(seq, length, index)

    def full_route(seq, length, index) -> None:
        model.grouped_scores(seq, length, torch.full_like(index, full))

    paths = {"routed": routed, "full_route": full_route}
    if args.row_chunks:

        def with_row_chunks(fn):
            def rows_only(*batch) -> None:
                model.chunk_rule = row_chunk_sizes
                try:
                    fn(*batch)
                finally:
                    del model.chunk_rule  # the class's rule again

            return rows_only

        paths["routed, row chunks"] = with_row_chunks(routed)
        paths["full_route, row chunks"] = with_row_chunks(full_route)
    part_samples: dict[str, list[dict[str, float]]] = {name: [] for name in paths}

    def with_parts(name: str, fn):
        def call(batch) -> None:
            timer.seconds.clear()
            fn(*batch)
            part_samples[name].append(dict(timer.seconds))

        return call

    warmup = [batches[i % len(batches)] for i in range(2)]  # fills the sliced-weight cache
    with torch.no_grad():
        totals = interleaved_over(
            {name: with_parts(name, fn) for name, fn in paths.items()}, batches, warmup
        )
        samples: dict[str, list[dict[str, float]]] = {}
        for name in paths:
            samples[name] = []
            for parts, total in zip(part_samples[name][len(warmup) :], totals[name], strict=True):
                parts["bookkeeping"] = total - sum(parts.values())
                parts["total"] = total
                samples[name].append(parts)
        # Each part's operations over all batches (an untimed pass), for its achieved rate.
        part_flops: dict[str, dict[str, float]] = {}
        timer.counting = True
        for name, fn in paths.items():
            timer.flops.clear()
            for batch in batches:
                fn(*batch)
            part_flops[name] = dict(timer.flops)
        timer.counting = False
        for name, fn in paths.items():
            part_flops[name]["total"] = sum(
                count_flops(lambda b, fn=fn: fn(*b), b) for b in batches
            )
        ops, flops = {}, {}
        for name, fn in paths.items():
            with OpCounter() as counter:
                fn(*batches[0])
            ops[name] = counter.calls
            flops[name] = count_flops(lambda b, fn=fn: fn(*b), batches[0])
    report = {
        "from": args.result,
        "batches": len(batches),
        "batch_size": int(batches[0][0].size(0)),
        "eval_chunk_size": model.eval_chunk or 0,
        "route_share": {name: n / sum(counts.values()) for name, n in counts.items()},
        "accounted_flops_ratio": model.flops_ratio(
            Counter(dict(zip(routes, counts.values(), strict=True)))
        ),
        "paths": {},
    }
    for name in paths:
        keys = sorted({k for s in samples[name] for k in s})
        report["paths"][name] = {
            "median_seconds": {
                k: statistics.median(s.get(k, 0.0) for s in samples[name]) for k in keys
            },
            # summed seconds and operations over the batches: each part's achieved rate
            "gflop_per_second": {
                k: part_flops[name][k] / 1e9 / sum(s.get(k, 0.0) for s in samples[name])
                for k in part_flops[name]
            },
            "ops_first_batch": ops[name],
            "flops_first_batch": flops[name],
        }
    routed_s = report["paths"]["routed"]["median_seconds"]["total"]
    full_s = report["paths"]["full_route"]["median_seconds"]["total"]
    report["time_ratio"] = routed_s / full_s
    report["executed_flops_ratio"] = flops["routed"] / flops["full_route"]
    if args.row_chunks:
        medians = {k: v["median_seconds"]["total"] for k, v in report["paths"].items()}
        report["row_chunks"] = {
            "time_ratio": medians["routed, row chunks"] / medians["full_route, row chunks"],
            "routed_vs_halved": medians["routed, row chunks"] / routed_s,
            "full_vs_halved": medians["full_route, row chunks"] / full_s,
            "executed_flops_ratio": flops["routed, row chunks"] / flops["full_route, row chunks"],
        }
    return report


if __name__ == "__main__":
    sys.exit(
        run(
            __doc__,
            measure,
            table,
            out="benchmarks/results/micro/canet_inference/result.json",
            arguments=arguments,
            threads=torch.get_num_threads(),
        )
    )
