"""The chunked full-sort scorer (``eval_item_chunk``) against RecBole's full-sort path.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/micro/eval_scorer.py --part=valid --reps=5
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/micro/eval_scorer.py --part=memory

``--part=valid``: one full-sort validation pass of SASRec on amazon-beauty (RecBole's SASRec
settings: d = 64, 2 blocks, L = 50; ``eval_batch_size`` 4096; untrained weights from seed 2020:
the cost does not depend on them), through the trainer's ``evaluate``, with
``eval_item_chunk: ~`` (the model's ``full_sort_predict``, one batch x catalogue matrix: the path
before the scorer) and with the default chunk (sequences packed, the catalogue in one chunk).
Interleaved rounds after one warm-up each; the metrics of both must be equal. Also the encoder
alone over the pass's batches, padded to L against packed, and the share of padding.

``--part=memory``: top-10 of a synthetic catalogue of 1,000,000 items (d = 64) for 4,096 users,
chunked (16,384 items a chunk), and unchunked (one users x items matrix, then ``topk``) for as
many users as this machine's memory allows (``--unchunked_users``). Each measurement runs in a
fresh process and reports the growth of its peak RSS over its inputs (vectors and table).
Writes a JSON with the command, commit, machine and every sample to ``--out`` (default
``benchmarks/results/micro/eval_scorer/{part}.json``).
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from typing import Any

import torch
from common import in_fresh_process, interleaved_over, run

from recbole_flame.experiment.output import markdown_table

DEFAULT_OUT = "benchmarks/results/micro/eval_scorer/{part}.json"


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def one_memory_run(case: dict[str, Any]) -> dict:
    """In a fresh process: top-k of users x items, chunked or not; peak RSS growth."""
    from recbole_flame.inference.scoring import InnerProductScorer

    users, items, dim, k, chunk = (case[key] for key in ("users", "items", "dim", "k", "chunk"))
    gen = torch.Generator().manual_seed(0)
    vectors = torch.randn(users, dim, generator=gen)
    table = torch.randn(items, dim, generator=gen)
    before = _peak_mib()
    start = time.perf_counter()
    with torch.no_grad():
        if chunk is None:
            scores = vectors @ table.T
            scores[:, 0] = float("-inf")
            top, ids = torch.topk(scores, k, dim=1)
            del scores
        else:
            scorer = InnerProductScorer(lambda batch: vectors, lambda: table, chunk)
            top, ids = scorer.top_k(vectors, k)
    seconds = time.perf_counter() - start
    return {
        "users": users,
        "items": items,
        "dim": dim,
        "k": k,
        "chunk": chunk,
        "seconds": seconds,
        "peak_growth_mib": _peak_mib() - before,
        "inputs_mib": (vectors.numel() + table.numel()) * 4 / 2**20,
        "checksum": float(top.sum()),
        "ids_head": ids[0].tolist(),
    }


def memory_part(args) -> dict:
    """Each case in a child process (peak RSS is a process's high-water mark)."""
    cases = [(args.users, args.chunk)] + [(u, None) for u in args.unchunked_users]
    cases += [(u, args.chunk) for u in args.unchunked_users]
    runs = []
    for users, chunk in cases:
        case = {"users": users, "items": args.items, "dim": args.dim, "k": args.k, "chunk": chunk}
        runs.append(in_fresh_process(__file__, case, args.threads))
        print(runs[-1], flush=True)
    # the same users, chunked and not, must give the same top k
    for users in args.unchunked_users:
        a = next(r for r in runs if r["users"] == users and r["chunk"] is None)
        b = next(r for r in runs if r["users"] == users and r["chunk"] is not None)
        assert a["ids_head"] == b["ids_head"] and abs(a["checksum"] - b["checksum"]) < 1e-2
    rows = [
        [
            r["users"],
            r["chunk"] or "none (users x items)",
            round(r["peak_growth_mib"]),
            round(r["users"] * r["items"] * 4 / 2**20),
            round(r["seconds"], 2),
        ]
        for r in runs
    ]
    table = markdown_table(
        ["users", "item chunk", "peak RSS growth MiB", "users x items x 4 B, MiB", "seconds"],
        rows,
    )
    return {"runs": runs, "table": table}


def valid_part(args) -> dict:
    from recbole_flame.quick_start import prepare

    config = {
        "gpu_id": "",
        "use_gpu": False,
        "state": "WARNING",
        "show_progress": False,
        "eval_batch_size": args.eval_batch_size,
        "checkpoint_dir": "/tmp/eval_scorer_saved",
    }
    config_obj, model, trainer, (_, valid_data, _) = prepare(
        "SASRec", args.dataset, config_dict=config
    )
    model.eval()

    def evaluate(chunk):
        config_obj["eval_item_chunk"] = chunk
        return dict(trainer.evaluate(valid_data, load_best_model=False))

    results = {"none": evaluate(None), "chunked": evaluate(args.chunk)}
    assert results["none"] == results["chunked"], results
    samples = interleaved_over(
        {"none": lambda _: evaluate(None), "chunked": lambda _: evaluate(args.chunk)},
        range(args.reps),
    )

    # The encoder alone over the same batches: padded to L (RecBole's) against packed.
    from recbole_flame.inference.scoring import inner_product_scorer

    packed = inner_product_scorer(model, args.chunk)
    batches = [b[0] for b in valid_data]
    real = sum(int(b["item_length"].sum()) for b in batches)
    padded_positions = sum(b["item_id_list"].numel() for b in batches)

    def padded(_) -> None:
        for b in batches:
            model.forward(b["item_id_list"], b["item_length"])

    def packed_pass(_) -> None:
        for b in batches:
            packed.user_vectors(b)

    with torch.no_grad():
        enc = interleaved_over({"padded": padded, "packed": packed_pass}, range(args.reps))
    med = {k: statistics.median(v) for k, v in {**samples, **enc}.items()}
    ratios = [c / n for c, n in zip(samples["chunked"], samples["none"], strict=True)]
    rows = [
        ["validation pass, eval_item_chunk ~ (RecBole's path)", round(med["none"], 2)],
        [f"validation pass, eval_item_chunk {args.chunk}", round(med["chunked"], 2)],
        ["ratio (median of per-round ratios)", round(statistics.median(ratios), 3)],
        ["encoder alone, padded to L", round(med["padded"], 2)],
        ["encoder alone, packed", round(med["packed"], 2)],
        ["padding share of the padded positions", round(1 - real / padded_positions, 3)],
    ]
    return {
        "dataset": args.dataset,
        "rows_evaluated": len(valid_data.dataset) if hasattr(valid_data, "dataset") else None,
        "metrics": results["none"],
        "samples": samples,
        "encoder_samples": enc,
        "table": markdown_table(["what", "seconds"], rows),
    }


def arguments(parser) -> None:
    parser.add_argument("--part", choices=("valid", "memory"), default="valid")
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--eval_batch_size", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=16384)
    parser.add_argument("--users", type=int, default=4096)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--unchunked_users", type=int, nargs="*", default=[256, 512])


def measure(args, save) -> dict[str, Any]:
    return valid_part(args) if args.part == "valid" else memory_part(args)


def table(report: dict[str, Any]) -> str:
    """The part's table, rendered when it was measured."""
    return report["table"]


if __name__ == "__main__":
    sys.exit(
        run(
            __doc__,
            measure,
            table,
            out=lambda args: DEFAULT_OUT.format(part=args.part),
            arguments=arguments,
            child=one_memory_run,
        )
    )
