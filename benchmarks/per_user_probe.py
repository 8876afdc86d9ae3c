"""Where two converged runs differ: test NDCG and HR per group of users, by history length.

    python benchmarks/per_user_probe.py benchmarks/specs/dense_sasrec_ml100k.yaml --seed 1 \
        --labels "SASRec prefix" "SASRec dense" --k 20

For each label of a convergence spec, the best-validation checkpoint of that seed's finished run
(the ``checkpoint`` of ``benchmarks/results/<spec>/<label>-seed<k>.json``) is scored on the test
split by the run's own trainer (RecBole's full ranking, the run's settings), and each user's rank
of the held-out item gives NDCG@k and HR@k. Users are grouped by the length of the input the
model reads (``item_length``: shorter than L, or a full window of L items, whose last item sits at
position L - 1 under RecBole's positions). Writes ``benchmarks/results/<spec>/per_user-seed<k>.json``
with command, commit and machine.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import markdown_table, write_json  # noqa: E402
from benchmarks.converge import load_finished, probe_parser, probe_setup, provenance  # noqa: E402


def held_out_ranks(trainer, test_data) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based rank of each test row's held-out item among all items, and the row's input
    length. Ties count against the item (as a top-k cut may drop it)."""
    ranks, lengths = [], []
    length_field = trainer.config["ITEM_LIST_LENGTH_FIELD"]
    trainer.model.eval()
    trainer.tot_item_num = test_data._dataset.item_num  # set by RecBole's evaluate()
    with torch.no_grad():
        for batch in test_data:
            interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batch)
            target = scores[positive_u, positive_i]
            rank = (scores[positive_u] >= target.unsqueeze(1)).sum(dim=1) - 1
            ranks.append(rank.cpu())
            lengths.append(interaction[length_field][positive_u].cpu())
    return torch.cat(ranks), torch.cat(lengths)


def group_metrics(ranks: torch.Tensor, k: int) -> dict[str, float]:
    hit = ranks < k
    ndcg = torch.where(hit, 1.0 / torch.log2(ranks.double() + 2.0), torch.zeros(()))
    return {
        "users": int(ranks.numel()),
        f"hit@{k}": hit.double().mean().item(),
        f"ndcg@{k}": ndcg.mean().item(),
    }


def main() -> None:
    parser = probe_parser(__doc__)
    parser.add_argument("--labels", nargs="+", required=True)
    parser.add_argument("--k", type=int, default=20)
    start = time.perf_counter()
    args, spec, out_dir = probe_setup(parser)
    per_label: dict[str, Any] = {}
    rows = []
    for label in args.labels:
        config, model, trainer, test_data, record = load_finished(spec, label, args.seed, out_dir)
        ranks, lengths = held_out_ranks(trainer, test_data)
        max_len = int(config["MAX_ITEM_LIST_LENGTH"])
        groups = {
            "all": torch.ones_like(lengths, dtype=torch.bool),
            f"input < {max_len}": lengths < max_len,
            f"input = {max_len}": lengths == max_len,
        }
        per_label[label] = {g: group_metrics(ranks[m], args.k) for g, m in groups.items()}
        # the whole-split value must be the run's own test result (same evaluator, same model)
        reported = record["result"]["test_result"].get(f"ndcg@{args.k}")
        per_label[label]["reported_ndcg"] = reported
        for g, m in per_label[label].items():
            if isinstance(m, dict):
                rows.append([label, g, m["users"], m[f"hit@{args.k}"], m[f"ndcg@{args.k}"]])
        if reported is not None:
            assert math.isclose(
                per_label[label]["all"][f"ndcg@{args.k}"], reported, abs_tol=6e-5
            ), (label, per_label[label]["all"], reported)
    table = markdown_table(["run", "users", "n", f"HR@{args.k}", f"NDCG@{args.k}"], rows)
    print(table)
    write_json(
        out_dir / f"per_user-seed{args.seed}.json",
        {
            **provenance(),
            "spec": spec["name"],
            "seed": args.seed,
            "k": args.k,
            "groups": per_label,
            "table": table,
            "wall_seconds": time.perf_counter() - start,
        },
    )


if __name__ == "__main__":
    main()
