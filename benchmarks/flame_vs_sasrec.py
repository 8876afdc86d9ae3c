"""FLAME against RecBole's SASRec on one dataset: inference cost, training cost, convergence.

    python benchmarks/flame_vs_sasrec.py --dataset=amazon-beauty \
        --epochs=3 --timing_steps=20

1. Timing (interleaved, medians): full-sort inference per evaluation batch and one training
   step, FLAME stage 2 against SASRec, on the same batches. Per-epoch training time is the
   median step time times the steps per epoch.
2. Convergence: SASRec trained from scratch for ``--epochs`` epochs, then FLAME stage 2 with
   that SASRec's best checkpoint as its frozen network, also for ``--epochs`` epochs; the
   validation NDCG@20 after every epoch of each. On a CPU the frozen SASRec is far from
   converged (the paper freezes a fully trained one), so this shows the early curve only.

Settings are the paper's (FLAME.yaml): d=64, 2 blocks, 2 heads, dropout 0.5, L=50, batch 256,
Adam 1e-3, seed 42, full ranking, leave-one-out.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import interleaved_medians, markdown_table, train_step, write_json  # noqa: E402
from recbole_flame.quick_start import prepare  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument(
        "--data_path", default=None, help="default: RecBole's (amazon-beauty: the bundled copy)"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--timing_steps", type=int, default=20)
    parser.add_argument("--eval_batch_size", type=int, default=256)
    parser.add_argument("--out", default="benchmarks/results/flame_vs_sasrec.json")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    base = dict(
        PAPER,
        epochs=args.epochs,
        eval_batch_size=args.eval_batch_size,
        checkpoint_dir=os.path.abspath("benchmarks/results/saved"),
    )
    if args.data_path:
        base["data_path"] = os.path.abspath(args.data_path)
    report: dict = {"settings": base, "device": "cpu", "threads": torch.get_num_threads()}

    # --- timing, interleaved on the same batches -------------------------------------------
    # Cost does not depend on the weights: time fresh models (FLAME's frozen one random).
    _, sasrec, _, (train_data, _, test_data) = prepare("SASRec", args.dataset, config_dict=base)
    _, flame, _, _ = prepare("FLAME", args.dataset, config_dict=base)
    eval_batches = [b[0] for _, b in zip(range(args.timing_steps + 2), test_data, strict=False)]
    sasrec.eval(), flame.eval()

    def infer(model):
        def run(i):
            with torch.no_grad():
                model.full_sort_predict(eval_batches[i % len(eval_batches)])

        return run

    infer_t = interleaved_medians(
        {"SASRec": infer(sasrec), "FLAME": infer(flame)}, args.timing_steps
    )
    train_batches = [b for _, b in zip(range(args.timing_steps + 2), train_data, strict=False)]
    s_opt = torch.optim.Adam(sasrec.parameters(), lr=1e-3)
    f_opt = torch.optim.Adam([p for p in flame.parameters() if p.requires_grad], lr=1e-3)
    flame.anneal(1)
    step_t = interleaved_medians(
        {
            "SASRec": lambda i: train_step(sasrec, s_opt, train_batches[i % len(train_batches)]),
            "FLAME": lambda i: train_step(flame, f_opt, train_batches[i % len(train_batches)]),
        },
        args.timing_steps,
    )
    steps = len(train_data)
    report["timing"] = {
        "inference_s_per_batch": infer_t,
        "train_s_per_step": step_t,
        "steps_per_epoch": steps,
        "eval_batch_users": args.eval_batch_size,
    }

    print(f"timing: inference {infer_t}, train step {step_t}", flush=True)

    # --- convergence: SASRec from scratch, then FLAME stage 2 on it ------------------------
    curves: dict[str, list[tuple[int, float, float]]] = {}
    _, _, s_trainer, (train_data, valid_data, test_data) = prepare(
        "SASRec", args.dataset, config_dict=base
    )
    curves["SASRec"] = _fit_with_curve(s_trainer, train_data, valid_data)
    sasrec_ckpt = s_trainer.saved_model_file
    s_test = s_trainer.evaluate(test_data, load_best_model=True)

    _, _, f_trainer, (f_train, f_valid, f_test) = prepare(
        "FLAME", args.dataset, config_dict=dict(base, frozen_checkpoint=sasrec_ckpt)
    )
    curves["FLAME"] = _fit_with_curve(f_trainer, f_train, f_valid)
    f_test_result = f_trainer.evaluate(f_test, load_best_model=True)
    report["curves"] = curves
    report["test"] = {"SASRec": dict(s_test), "FLAME": dict(f_test_result)}

    print(f"\n## FLAME vs SASRec on {args.dataset} (CPU, {torch.get_num_threads()} threads)\n")
    print(
        markdown_table(
            ["measure", "SASRec", "FLAME", "FLAME / SASRec"],
            [
                [
                    f"full-sort inference, s per batch of {args.eval_batch_size} users (median)",
                    infer_t["SASRec"],
                    infer_t["FLAME"],
                    infer_t["FLAME"] / infer_t["SASRec"],
                ],
                [
                    "training step, s (median)",
                    step_t["SASRec"],
                    step_t["FLAME"],
                    step_t["FLAME"] / step_t["SASRec"],
                ],
                [
                    f"training epoch, min ({steps} steps x median step)",
                    step_t["SASRec"] * steps / 60,
                    step_t["FLAME"] * steps / 60,
                    step_t["FLAME"] / step_t["SASRec"],
                ],
            ],
        )
    )
    rows = []
    for e in range(args.epochs):
        row = [e + 1]
        for name in ("SASRec", "FLAME"):
            curve = curves[name]
            row += [curve[e][1], curve[e][2]] if e < len(curve) else ["-", "-"]
        rows.append(row)
    print("\nValidation NDCG@20 after each epoch (FLAME's frozen network = SASRec's best above)\n")
    print(
        markdown_table(
            ["epoch", "SASRec NDCG@20", "SASRec epoch s", "FLAME NDCG@20", "FLAME epoch s"], rows
        )
    )
    metrics = [f"{m}@{k}" for m in ("hit", "ndcg") for k in (5, 10, 20)]
    print("\nTest (best-validation model)\n")
    print(
        markdown_table(
            ["model", *metrics],
            [[name, *[report["test"][name][m] for m in metrics]] for name in ("SASRec", "FLAME")],
        )
    )
    write_json(args.out, report)
    print(f"\nwrote {args.out}")


def _fit_with_curve(trainer, train_data, valid_data) -> list[tuple[int, float, float]]:
    """Fit with validation every epoch; returns (epoch, NDCG@20, train+eval seconds)."""
    curve: list[tuple[int, float, float]] = []
    last = [time.perf_counter()]

    def record(epoch: int, score: float) -> None:
        now = time.perf_counter()
        curve.append((epoch + 1, score, now - last[0]))
        last[0] = now
        print(f"  epoch {epoch + 1}: valid NDCG@20 {score:.4f} ({curve[-1][2]:.0f}s)", flush=True)

    trainer.fit(train_data, valid_data, saved=True, callback_fn=record)
    return curve


if __name__ == "__main__":
    main()
