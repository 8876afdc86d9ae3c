"""Where two converged runs differ: test NDCG and HR per group of users, by history length.

    python benchmarks/probes/per_user_probe.py benchmarks/experiments/dense_sasrec_ml100k.yaml --seed 1 \
        --labels "SASRec prefix" "SASRec dense" --k 20

For each label of an experiment spec, the best-validation checkpoint of that seed's finished run
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

    FLAME_WEIGHTS=PATH/frozen_weights python benchmarks/probes/per_user_probe.py \
        benchmarks/experiments/flame_beauty_authors.yaml --seed 42 --labels FLAME --frozen \
        --paired FLAME "FLAME (frozen)"
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import torch

from recbole_flame.experiment.output import markdown_table, provenance, write_json
from recbole_flame.experiment.per_user import held_out_ranks, paired_users
from recbole_flame.experiment.probes import (
    group_metrics,
    load_finished,
    probe_parser,
    probe_setup,
)


def main() -> None:
    parser = probe_parser(__doc__)
    parser.add_argument("--labels", nargs="+", required=True)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument(
        "--frozen",
        action="store_true",
        help="also score each FLAME run's frozen SASRec, as '<label> (frozen)'",
    )
    parser.add_argument(
        "--paired",
        nargs=2,
        action="append",
        default=[],
        metavar=("A", "B"),
        help="per-user paired comparison of two scored labels (repeatable)",
    )
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
            variants.append(
                (
                    f"{label} (frozen)",
                    model.scoring_with("frozen"),
                    result.get("stage1_test_result") or {},
                )
            )
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
        try:
            paired[f"{a} - {b}"] = p = paired_users(scored[a], scored[b], f"ndcg@{args.k}")
        except ValueError as exc:
            raise SystemExit(f"--paired: {exc}") from exc
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
