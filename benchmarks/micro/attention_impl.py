"""RecBole's attention against SDPA (``attention_impl``): CPU step time of SASRec and FLAME.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/micro/attention_impl.py --models=SASRec --eval \
        --threads=1 --reps=11 --out=benchmarks/results/micro/attention_impl/sasrec_t1.json

One optimisation step (train mode: forward, full-softmax CE over all items, backward, Adam) of
this package's SASRec, and of a FLAME stage-2 step (``path_mixing: tiled``, all four paths, the
frozen network's dropout live, as FLAME.yaml), at each sequence length L, with dropout (hidden and
attention) 0.5 and 0: ``attention_impl: recbole`` against ``sdpa`` (SDPA everywhere, attention
dropout included). ``auto`` runs ``sdpa``'s code without attention dropout and ``recbole``'s with
it, so its time is one of the two columns. With ``--eval``, also SASRec's ``full_sort_predict``
on the same batch (eval mode, where ``auto`` is ``sdpa``). The two models of a pair are built from
the same seed, so they hold the same weights, and run on the same batch.

Timing: ``--reps`` rounds (recbole, sdpa, recbole, sdpa, ...) after 2 warm-up rounds; the table
gives each one's median and the median and quartiles of the per-round ratio sdpa / recbole (the
two steps of a round ran under the same load, so the ratio is steadier than either time).

Synthetic data, no dataset read: batch 256, d = 64, 2 layers, 2 heads, inner 256 (FLAME.yaml's
backbone), ``--items`` items (12102, amazon-beauty's count, by default); each row has a random
length in 1..L, one row is full, so the batch is not trimmed. Writes a JSON with the command,
commit, machine, wall time and every sample to ``--out``.
"""

from __future__ import annotations

import os
import statistics
import sys
from typing import Any

import torch
from common import interleaved_samples, run, synthetic_model, train_step
from recbole.data.interaction import Interaction
from recbole.model.layers import MultiHeadAttention
from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec

from recbole_flame.experiment.output import markdown_table
from recbole_flame.model.layers.attention import set_attention_impl

IMPLS = ("recbole", "sdpa")


def build(model_name: str, length: int, dropout: float, impl: str, n_items: int, seed: int = 0):
    """A model in ``impl`` and its Adam optimiser over the trainable parameters."""
    settings = {
        "MAX_ITEM_LIST_LENGTH": length,
        "hidden_size": 64,
        "inner_size": 256,
        "n_layers": 2,
        "n_heads": 2,
        "hidden_dropout_prob": dropout,
        "attn_dropout_prob": dropout,
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "attention_impl": impl,
    }
    return synthetic_model(model_name, settings, n_items, seed=seed)


def batch(length: int, size: int, n_items: int, seed: int = 0) -> Interaction:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (size,), generator=g)
    lengths[0] = length
    items = torch.randint(1, n_items, (size, length), generator=g)
    items[torch.arange(length) >= lengths[:, None]] = 0  # right-padded, as RecBole
    return Interaction(
        {
            "item_id_list": items,
            "item_length": lengths,
            "item_id": torch.randint(1, n_items, (size,), generator=g),
        }
    )


def paired_ratios(samples: dict[str, list[float]]) -> list[float]:
    """sdpa / recbole per round of the interleaving (both timed under the same load)."""
    return [s / r for s, r in zip(samples["sdpa"], samples["recbole"], strict=True)]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def measure_pair(fns: dict, reps: int) -> dict:
    samples = interleaved_samples(fns, reps)
    ratios = paired_ratios(samples)
    return {
        "median_s": {impl: statistics.median(v) for impl, v in samples.items()},
        "ratio_quartiles": quartiles(ratios),
        "samples_s": samples,
    }


def full_sort(model, data) -> None:
    model.eval()
    with torch.no_grad():
        model.full_sort_predict(data)


def core_timings(lengths: list[int], size: int, reps: int, dropouts: list[float], record) -> None:
    """The attention sublayer alone (a RecBole ``MultiHeadAttention``, d = 64, 2 heads, no
    output dropout): forward + backward in train mode at each attention dropout, and forward in
    eval mode, on a causal mask of right-padded sequences. Everything else in a step is the same
    code for both, so this is where the difference is, with less noise than a whole step."""
    threads = torch.get_num_threads()
    for length in lengths:
        items = batch(length, size, 100)["item_id_list"]
        mask = RecBoleSASRec.get_attention_mask(None, items)
        x = torch.randn(size, length, 64, requires_grad=True)
        for dropout in dropouts:
            torch.manual_seed(0)
            layers = {impl: MultiHeadAttention(2, 64, 0.0, dropout, 1e-12) for impl in IMPLS}
            layers["sdpa"].load_state_dict(layers["recbole"].state_dict())
            set_attention_impl(layers["sdpa"], "sdpa")
            cases = [("attention fwd+bwd", _core_train)]
            if dropout == 0:  # eval mode has no dropout: once per L
                cases.append(("attention eval fwd", _core_eval))
            for what, fn in cases:
                result = measure_pair(
                    {
                        impl: lambda i, m=m, f=fn, x=x, k=mask: f(m, x, k)
                        for impl, m in layers.items()
                    },
                    reps,
                )
                record(["MultiHeadAttention", threads, length, dropout, what], result)


def _core_train(layer: MultiHeadAttention, x: torch.Tensor, mask: torch.Tensor) -> None:
    layer.train()
    layer(x, mask).sum().backward()


def _core_eval(layer: MultiHeadAttention, x: torch.Tensor, mask: torch.Tensor) -> None:
    layer.eval()
    with torch.no_grad():
        layer(x, mask)


HEADERS = [
    "model",
    "threads",
    "L",
    "dropout",
    "what",
    "recbole s",
    "sdpa s",
    "sdpa/recbole (paired median)",
    "paired IQR",
]


def arguments(parser) -> None:
    parser.add_argument("--models", default="SASRec,FLAME")
    parser.add_argument("--lengths", default="50,200")
    parser.add_argument("--dropouts", default="0.5,0")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--items", type=int, default=12102)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument(
        "--eval", action="store_true", help="also time SASRec's full_sort_predict (eval mode)"
    )
    parser.add_argument(
        "--core_lengths",
        default="",
        help="also time the attention sublayer alone at these L (e.g. 25,50,100,200)",
    )
    parser.add_argument("--core_reps", type=int, default=21)


def measure(args, save) -> dict[str, Any]:
    settings = {**vars(args), "threads": ",".join(map(str, args.thread_counts))}
    settings.pop("thread_counts")
    report: dict[str, Any] = {"settings": settings, "results": []}

    def record(key: list, result: dict) -> None:
        q1, q2, q3 = result["ratio_quartiles"]
        times = result["median_s"]
        row = [*key, times["recbole"], times["sdpa"], q2, f"{q1:.3f}-{q3:.3f}"]
        report["results"].append({**dict(zip(HEADERS, row, strict=True)), **result})
        print(dict(zip(HEADERS, row, strict=True)), flush=True)
        save(report)  # after every row, so a run stopped early keeps what it measured

    for threads in args.thread_counts:
        torch.set_num_threads(threads)
        if args.core_lengths:
            lengths = [int(v) for v in args.core_lengths.split(",")]
            dropouts = [float(v) for v in args.dropouts.split(",")]
            core_timings(lengths, args.batch, args.core_reps, dropouts, record)
        for model_name in filter(None, args.models.split(",")):
            for length in [int(v) for v in args.lengths.split(",")]:
                data = batch(length, args.batch, args.items)
                for dropout in [float(v) for v in args.dropouts.split(",")]:
                    built = {
                        impl: build(model_name, length, dropout, impl, args.items) for impl in IMPLS
                    }
                    result = measure_pair(
                        {
                            impl: lambda i, m=model, o=opt, d=data: train_step(m, o, d)
                            for impl, (model, opt) in built.items()
                        },
                        args.reps,
                    )
                    record([model_name, threads, length, dropout, "train step"], result)
                    if args.eval and model_name == "SASRec" and dropout == 0:
                        # Dropout is off in eval mode: one measurement per L.
                        result = measure_pair(
                            {
                                impl: lambda i, m=model, d=data: full_sort(m, d)
                                for impl, (model, _) in built.items()
                            },
                            args.reps,
                        )
                        record([model_name, threads, length, "-", "full_sort_predict"], result)
                    del built
    return report


def table(report: dict[str, Any]) -> str:
    """One row per measurement: both implementations' median seconds and the paired ratio."""
    s = report["settings"]
    title = (
        f"## attention_impl on CPU (batch {s['batch']}, d=64, 2 layers, 2 heads, "
        f"{s['items']} items, {s['reps']} interleaved rounds; times are medians, the ratio is "
        "the median of the per-round ratios)\n\n"
    )
    rows = [[r[h] for h in HEADERS] for r in report["results"]]
    return title + markdown_table(HEADERS, rows)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(
        run(
            __doc__,
            measure,
            table,
            out="benchmarks/results/micro/attention_impl/result.json",
            arguments=arguments,
        )
    )
