"""RecBole's attention against SDPA (``attention_impl``): CPU training-step time of SASRec and FLAME.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/attention_impl.py --threads=1,2 --reps=9

One optimisation step (train mode: forward, full-softmax CE over all items, backward, Adam) of
this package's SASRec, and of a FLAME stage-2 step (``path_mixing: tiled``, all four paths, the
frozen network's dropout live, as FLAME.yaml), at each sequence length L, with dropout (hidden and
attention) 0.5 and 0: ``attention_impl: recbole`` against ``sdpa`` (SDPA everywhere, attention
dropout included). ``auto`` runs ``sdpa``'s code without attention dropout and ``recbole``'s with
it, so its time is one of the two columns. The two models of a pair are built from the same seed,
so they hold the same weights. Times are medians over ``--reps`` interleaved steps (recbole, sdpa,
recbole, ...) after 2 warm-up steps each, on the same batch.

Synthetic data, no dataset read: batch 256, d = 64, 2 layers, 2 heads, inner 256 (FLAME.yaml's
backbone), ``--items`` items (12102, amazon-beauty's count, by default); each row has a random
length in 1..L, one row is full, so the batch is not trimmed. Writes a JSON with the command,
commit, machine, wall time and every median to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recbole.data.interaction import Interaction  # noqa: E402

from benchmarks.common import interleaved_medians, markdown_table, train_step, write_json  # noqa: E402
from benchmarks.converge import provenance  # noqa: E402
from recbole_flame.config import Config  # noqa: E402
from recbole_flame.utils.registry import get_model  # noqa: E402

IMPLS = ("recbole", "sdpa")


class _Synthetic:
    """What SASRec and FLAME read from a dataset: the item count."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items

    def num(self, field: str) -> int:
        return self.n_items


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
        "gpu_id": "",
        "use_gpu": False,
        "learning_rate": 1e-3,
    }
    config = Config(model_name, "ml-100k", config_dict=settings)
    torch.manual_seed(seed)
    model = get_model(model_name)(config, _Synthetic(n_items))
    # Importing RecBole's sequential models (SINE) switches anomaly detection on: a debugging
    # aid that slows every backward pass.
    torch.autograd.set_detect_anomaly(False)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.Adam(params, lr=1e-3)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="SASRec,FLAME")
    parser.add_argument("--lengths", default="50,200")
    parser.add_argument("--dropouts", default="0.5,0")
    parser.add_argument("--threads", default="1", help="torch thread counts, e.g. 1,2")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--items", type=int, default=12102)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--out", default="benchmarks/results/attention_impl.json")
    args = parser.parse_args()
    start = time.perf_counter()
    report = {**provenance(), "settings": vars(args), "results": []}
    headers = ["model", "threads", "L", "dropout", "recbole s/step", "sdpa s/step", "sdpa/recbole"]
    rows = []
    for threads in [int(v) for v in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for model_name in args.models.split(","):
            for length in [int(v) for v in args.lengths.split(",")]:
                data = batch(length, args.batch, args.items)
                for dropout in [float(v) for v in args.dropouts.split(",")]:
                    built = {
                        impl: build(model_name, length, dropout, impl, args.items) for impl in IMPLS
                    }
                    times = interleaved_medians(
                        {
                            impl: lambda i, m=model, o=opt, d=data: train_step(m, o, d)
                            for impl, (model, opt) in built.items()
                        },
                        args.reps,
                    )
                    del built
                    ratio = times["sdpa"] / times["recbole"]
                    row = [model_name, threads, length, dropout, *times.values(), ratio]
                    rows.append(row)
                    report["results"].append(dict(zip(headers, row, strict=True)))
                    print(dict(zip(headers, row, strict=True)), flush=True)
    report["wall_seconds"] = time.perf_counter() - start
    print(
        f"\n## attention_impl: one training step on CPU (batch {args.batch}, d=64, 2 layers, "
        f"2 heads, {args.items} items, medians of {args.reps} interleaved steps)\n"
    )
    print(markdown_table(headers, rows))
    if args.out:
        write_json(args.out, report)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
