"""Where two converged runs differ: test NDCG and HR per group of users, by history length.

    python benchmarks/per_user_probe.py benchmarks/specs/dense_sasrec_ml100k.yaml --seed 1 \
        --labels "SASRec prefix" "SASRec dense" --k 20

For each label of a convergence spec, the best-validation checkpoint of that seed's finished run
(the ``checkpoint`` of ``benchmarks/results/<spec>/<label>-seed<k>.json``) is scored on the test
split by the run's own trainer (RecBole's full ranking, the run's settings), and each user's rank
of the held-out item gives NDCG@k and HR@k. Users are grouped by the length of the input the
model reads (``item_length``: shorter than L, or a full window of L items, whose last item sits at
position L - 1 under RecBole's positions). ``--frozen`` also scores a FLAME run's frozen
(stage-1) SASRec, as the label ``"<label> (frozen)"``; ``--paired A B`` compares two scored
labels user by user (the same test users: mean NDCG@k difference, relative difference, paired
t-test over users, and how many users each ranks better), the significance one seed's run can
have. Writes
``benchmarks/results/<spec>/per_user-seed<k>.json`` with command, commit and machine.

    FLAME_WEIGHTS=PATH/frozen_weights python benchmarks/per_user_probe.py \
        benchmarks/specs/flame_beauty_authors.yaml --seed 42 --labels FLAME --frozen \
        --paired FLAME "FLAME (frozen)"
"""

from __future__ import annotations

import contextlib
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


def held_out_ranks(trainer, test_data) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """0-based rank of each test row's held-out item among all items, the row's input length
    and its user id. Ties count against the item (as a top-k cut may drop it)."""
    ranks, lengths, users = [], [], []
    length_field = trainer.config["ITEM_LIST_LENGTH_FIELD"]
    user_field = trainer.config["USER_ID_FIELD"]
    trainer.model.eval()
    trainer.tot_item_num = test_data._dataset.item_num  # set by RecBole's evaluate()
    with torch.no_grad():
        for batch in test_data:
            interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batch)
            target = scores[positive_u, positive_i]
            rank = (scores[positive_u] >= target.unsqueeze(1)).sum(dim=1) - 1
            ranks.append(rank.cpu())
            lengths.append(interaction[length_field][positive_u].cpu())
            users.append(interaction[user_field][positive_u].cpu())
    return torch.cat(ranks), torch.cat(lengths), torch.cat(users)


def user_ndcg(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """NDCG@k of each row with one held-out item: 1 / log2(rank + 2) inside the top k, else 0."""
    return torch.where(ranks < k, 1.0 / torch.log2(ranks.double() + 2.0), torch.zeros(()))


def paired_users(a: tuple, b: tuple, k: int) -> dict[str, float]:
    """Two models' per-user NDCG@k on the same test users (matched by user id): the mean
    difference a - b, relative to b, a paired t-test over users, and the users each ranks
    strictly better."""
    from scipy import stats

    (ranks_a, users_a), (ranks_b, users_b) = a, b
    order_a, order_b = torch.argsort(users_a), torch.argsort(users_b)
    if not torch.equal(users_a[order_a], users_b[order_b]):
        raise SystemExit("--paired: the two labels were scored on different test users")
    ranks_a, ranks_b = ranks_a[order_a], ranks_b[order_b]  # row i is the same user in both
    x, y = user_ndcg(ranks_a, k), user_ndcg(ranks_b, k)
    t = stats.ttest_rel(x.numpy(), y.numpy())
    diff = (x - y).mean().item()
    return {
        "users": int(x.numel()),
        "mean_diff": diff,
        "relative_diff": diff / y.mean().item(),
        "t": float(t.statistic),
        "p": float(t.pvalue),
        "a_better_users": int((ranks_a < ranks_b).sum()),
        "b_better_users": int((ranks_a > ranks_b).sum()),
    }


def group_metrics(ranks: torch.Tensor, k: int) -> dict[str, float]:
    return {
        "users": int(ranks.numel()),
        f"hit@{k}": (ranks < k).double().mean().item(),
        f"ndcg@{k}": user_ndcg(ranks, k).mean().item(),
    }


def main() -> None:
    parser = probe_parser(__doc__)
    parser.add_argument("--labels", nargs="+", required=True)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--frozen", action="store_true",
                        help="also score each FLAME run's frozen SASRec, as '<label> (frozen)'")
    parser.add_argument("--paired", nargs=2, action="append", default=[], metavar=("A", "B"),
                        help="per-user paired comparison of two scored labels (repeatable)")
    start = time.perf_counter()
    args, spec, out_dir = probe_setup(parser)
    per_label: dict[str, Any] = {}
    scored: dict[str, tuple] = {}
    rows = []
    for label in args.labels:
        config, model, trainer, test_data, record = load_finished(spec, label, args.seed, out_dir)
        max_len = int(config["MAX_ITEM_LIST_LENGTH"])
        result = record["result"]
        # (label, scoring context, the run's own test result the whole split must reproduce)
        variants = [(label, contextlib.nullcontext(), result["test_result"])]
        if args.frozen and hasattr(model, "scoring_with"):
            variants.append((f"{label} (frozen)", model.scoring_with("frozen"),
                             result.get("stage1_test_result") or {}))
        for name, scoring, reported_result in variants:
            with scoring:
                ranks, lengths, users = held_out_ranks(trainer, test_data)
            scored[name] = (ranks, users)
            groups = {
                "all": torch.ones_like(lengths, dtype=torch.bool),
                f"input < {max_len}": lengths < max_len,
                f"input = {max_len}": lengths == max_len,
            }
            per_label[name] = {g: group_metrics(ranks[m], args.k) for g, m in groups.items()}
            # the whole-split value must be the run's own test result (same evaluator and model)
            reported = reported_result.get(f"ndcg@{args.k}")
            per_label[name]["reported_ndcg"] = reported
            for g, m in per_label[name].items():
                if isinstance(m, dict):
                    rows.append([name, g, m["users"], m[f"hit@{args.k}"], m[f"ndcg@{args.k}"]])
            if reported is not None:
                assert math.isclose(
                    per_label[name]["all"][f"ndcg@{args.k}"], reported, abs_tol=6e-5
                ), (name, per_label[name]["all"], reported)
    table = markdown_table(["run", "users", "n", f"HR@{args.k}", f"NDCG@{args.k}"], rows)
    print(table)
    paired = {}
    for a, b in args.paired:
        missing = [x for x in (a, b) if x not in scored]
        if missing:
            raise SystemExit(f"--paired: {missing} not scored; scored labels: {list(scored)}")
        paired[f"{a} - {b}"] = p = paired_users(scored[a], scored[b], args.k)
        print(
            f"{a} - {b}, NDCG@{args.k} per user over {p['users']} users: "
            f"{p['mean_diff']:+.4f} ({p['relative_diff']:+.1%}), paired t = {p['t']:.2f}, "
            f"p = {p['p']:.3g}; ranks the held-out item higher for {p['a_better_users']} users, "
            f"lower for {p['b_better_users']}"
        )
    write_json(
        out_dir / f"per_user-seed{args.seed}.json",
        {
            **provenance(),
            "spec": spec["name"],
            "seed": args.seed,
            "k": args.k,
            "groups": per_label,
            "paired": paired,
            "table": table,
            "wall_seconds": time.perf_counter() - start,
        },
    )


if __name__ == "__main__":
    main()
