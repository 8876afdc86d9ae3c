"""What CANet's routing costs: each test user on its routed sub-model against the same weights
on other routes, and against the separately trained full supernet.

    python benchmarks/probes/canet_route_probe.py benchmarks/experiments/canet_beauty_cpu.yaml --seed 1 \
        --label CANet --full "full supernet" --k 10

Reads the best-validation checkpoint of a finished CANet run of the spec and scores the test
split by the run's own trainer (RecBole's full ranking): once routed (each user's argmax route,
as the run's test result; checked equal), then with every user forced onto each route the router
used on the test split, and onto the full route. Users are grouped by the route the router gave
them. Per group, NDCG@k and HR@k of each scoring, and the *oracle*: each user on whichever of
those routes ranks the held-out item best (what a perfect router over the same weights would get).
If ``--full`` names a finished run of the spec (``fixed_route: full``), its checkpoint is scored
on the same users too. So a gap to the full supernet splits into what the router's choices cost
(routed vs the same weights' full route, and vs the oracle) and what training through the router
did to the shared weights (the same weights' full route vs the full supernet trained alone).
Writes ``benchmarks/results/<spec>/canet_routes-seed<k>.json`` with command, commit and machine.
"""

from __future__ import annotations

import math
import time

import torch

from recbole_flame.experiment.output import markdown_table, provenance, write_json
from recbole_flame.experiment.per_user import held_out_ranks
from recbole_flame.experiment.probes import (
    group_metrics,
    load_finished,
    probe_parser,
    probe_setup,
)
from recbole_flame.experiment.spec import result_file
from recbole_flame.model.canet import route_name


def routed_index(model, test_data) -> torch.Tensor:
    """The router's argmax route of each test row, in :func:`held_out_ranks`' order."""
    seq, seq_len = model.ITEM_SEQ, model.ITEM_SEQ_LEN
    out = []
    model.eval()
    with torch.no_grad():
        for interaction, _, positive_u, _ in test_data:
            lengths = interaction[seq_len]
            items = interaction[seq][:, : int(lengths.max())]  # as forward() cuts them
            out.append(model.router_logits(items, lengths).argmax(dim=-1)[positive_u].cpu())
    return torch.cat(out)


def main() -> None:
    parser = probe_parser(__doc__)
    parser.add_argument("--label", default="CANet", help="the routed run")
    parser.add_argument("--full", default=None, help="the full-supernet run, if finished")
    parser.add_argument("--k", type=int, default=10)
    start = time.perf_counter()
    args, spec, out_dir = probe_setup(parser)

    _, model, trainer, test_data, record = load_finished(spec, args.label, args.seed, out_dir)
    index = routed_index(model, test_data)
    model.fixed_route = None
    ranks = {"routed": held_out_ranks(trainer, test_data)[0]}
    reported = record["result"]["test_result"][f"ndcg@{args.k}"]
    got = group_metrics(ranks["routed"], args.k)[f"ndcg@{args.k}"]
    assert math.isclose(got, reported, abs_tol=6e-5), (got, reported)

    used = [model.routes[i] for i in index.unique().tolist()]
    tried = used + ([model.full_route] if model.full_route not in used else [])
    for route in tried:
        model.fixed_route = route
        ranks[f"all on {route_name(route)}"] = held_out_ranks(trainer, test_data)[0]
    model.fixed_route = None
    forced = torch.stack([ranks[f"all on {route_name(r)}"] for r in tried])
    ranks["oracle over those routes"] = forced.min(dim=0).values
    if args.full and result_file(out_dir, args.full, args.seed).is_file():
        _, _, full_trainer, full_test, _ = load_finished(spec, args.full, args.seed, out_dir)
        ranks[f"{args.full} (trained alone)"] = held_out_ranks(full_trainer, full_test)[0]

    groups = {"all users": torch.ones_like(index, dtype=torch.bool)}
    for i in index.unique().tolist():
        groups[f"routed to {route_name(model.routes[i])}"] = index == i
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    rows = []
    for group, mask in groups.items():
        metrics[group] = {name: group_metrics(r[mask], args.k) for name, r in ranks.items()}
        for name, m in metrics[group].items():
            rows.append([group, name, m["users"], m[f"hit@{args.k}"], m[f"ndcg@{args.k}"]])
    table = markdown_table(["users", "scored by", "n", f"HR@{args.k}", f"NDCG@{args.k}"], rows)
    print(table)
    write_json(
        out_dir / f"canet_routes-seed{args.seed}.json",
        {
            **provenance(),
            "spec": spec["name"],
            "seed": args.seed,
            "k": args.k,
            "routes_tried": [route_name(r) for r in tried],
            "flops_ratio_of_route": {
                route_name(r): model.flops_of(r) / model.full_flops for r in tried
            },
            "groups": metrics,
            "table": table,
            "wall_seconds": time.perf_counter() - start,
        },
    )


if __name__ == "__main__":
    main()
