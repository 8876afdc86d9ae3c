"""Why FLAME's stage 2 learns as it does: the two losses' gradients on the learnable network.

    python benchmarks/probes/flame_probe.py benchmarks/experiments/flame_ml100k.yaml --seed 1 \
        --states init benchmarks/results/flame_ml100k/ckpt/FLAME-seed1/<run>.pth --batches 4

For a FLAME run of an experiment spec (the same config as ``run_recbole_flame.py --spec`` builds),
against its frozen network (the spec's ``frozen_checkpoint``, or the one in a stage-2
checkpoint), and for each state of its learnable network (``init``: the weights stage 2 starts
from; or a stage-2 checkpoint), on the first ``--batches`` training batches in training mode: the
recommendation loss and the unweighted alignment ``sum_p w_p InfoNCE_p``, the L2 norms of their
gradients on the learnable parameters, the cosine between the two gradients, and the share of
the step that the alignment makes at that state's ``lambda_r`` (``lambda_r |g_align| /
|g_rec|``). Also each pair's weight and InfoNCE (the model's own alignment statistics).

With ``--layout_batches N``, also what dense training does to the positions under
``position_alignment: end``: the frozen network (eval mode) scores every trained step of N dense
training batches twice, once as dense training feeds it (the whole window in one pass, so step t
of an n-item window sees its items at positions L-n .. L-n+t) and once as RecBole's prefix
sample of that target (the window's items up to t alone, the last one at position L-1, as at
test time; RecBole's own prefix sample where the window starts at the user's first item):
CE and HR@10 of the target (all items ranked), for the windows' last steps (the two agree there)
and for the earlier steps. Writes ``benchmarks/results/<spec>/probe-seed<k>.json`` with command,
commit and machine.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from recbole_flame.experiment.output import markdown_table, provenance, write_json
from recbole_flame.experiment.probes import prepare_run, probe_parser, probe_setup


def _flat(grads, params) -> torch.Tensor:
    """One vector of all gradients (zeros for parameters a loss does not reach)."""
    pairs = zip(grads, params, strict=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in pairs])


def gradient_probe(model, batches: list, epoch: int) -> dict[str, Any]:
    """Gradient statistics of the two losses at ``lambda_r`` of ``epoch`` (counted from 1)."""
    params = [p for p in model.learnable.parameters() if p.requires_grad]
    lam = model.anneal(epoch)
    model.train()
    model.pop_alignment_stats()
    rows = []
    for batch in batches:
        rec, weighted = model.calculate_loss(batch)
        align = weighted / lam
        g_rec = torch.autograd.grad(rec, params, retain_graph=True, allow_unused=True)
        g_align = torch.autograd.grad(align, params, allow_unused=True)
        flat_rec, flat_align = _flat(g_rec, params), _flat(g_align, params)
        n_rec, n_align = flat_rec.norm().item(), flat_align.norm().item()
        rows.append(
            {
                "rec_loss": rec.item(),
                "align_loss": align.item(),
                "grad_norm_rec": n_rec,
                "grad_norm_align": n_align,
                "cosine": torch.nn.functional.cosine_similarity(flat_rec, flat_align, dim=0).item(),
                "align_share": lam * n_align / n_rec,
            }
        )
    summary = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
    return {"epoch": epoch, "lambda_r": lam, **summary, "alignment": model.pop_alignment_stats()}


@torch.no_grad()
def layout_probe(sasrec, batches: list) -> dict[str, Any]:
    """CE and HR@10 of each trained step's target for ``sasrec`` (eval mode) as dense training
    reads it against its exact prefix sample; per group of steps (a window's last, earlier)."""
    from recbole_flame.model.layers.sequence import dense_targets, first_trained_step

    sasrec.eval()
    weight = sasrec.item_embedding.weight
    parts: dict[str, list[torch.Tensor]] = {"last": [], "dense_ce": [], "prefix_ce": []}
    parts.update({"dense_hit": [], "prefix_hit": []})
    for batch in batches:
        seq, lengths = batch[sasrec.ITEM_SEQ], batch[sasrec.ITEM_SEQ_LEN]
        targets, real = dense_targets(
            seq, lengths, batch[sasrec.POS_ITEM_ID], first_trained_step(batch)
        )
        rows, steps = real.nonzero(as_tuple=True)
        target = targets[rows, steps]
        dense = (sasrec.encode_all(seq, lengths)[rows, steps]) @ weight.T
        keep = torch.arange(seq.size(1), device=seq.device) <= steps[:, None]
        prefix = sasrec.forward(seq[rows] * keep, steps + 1) @ weight.T
        parts["last"].append(steps == lengths[rows] - 1)
        for name, logits in (("dense", dense), ("prefix", prefix)):
            parts[f"{name}_ce"].append(F.cross_entropy(logits, target, reduction="none"))
            above = (logits > logits.gather(1, target[:, None])).sum(dim=1)
            parts[f"{name}_hit"].append((above < 10).float())
    cat = {k: torch.cat(v) for k, v in parts.items()}
    last = cat.pop("last")
    groups = {"all steps": torch.ones_like(last), "last step of a window": last}
    groups["earlier steps"] = ~last
    return {
        group: {"steps": int(mask.sum()), **{k: v[mask].mean().item() for k, v in cat.items()}}
        for group, mask in groups.items()
        if mask.any()
    }


def main() -> None:
    parser = probe_parser(__doc__)
    parser.add_argument("--label", default="FLAME")
    parser.add_argument("--states", nargs="+", default=["init"], help="init or checkpoint paths")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument(
        "--layout_batches", type=int, default=0, help="dense batches for the position probe"
    )
    start = time.perf_counter()
    args, spec, out_dir = probe_setup(parser)

    from recbole_flame.utils.checkpoint import load_checkpoint

    config, model, trainer, (train_data, _, _) = prepare_run(spec, args.label, args.seed, out_dir)
    init = {k: v.clone() for k, v in model.learnable.state_dict().items()}
    batches = []
    for batch in train_data:
        batches.append(batch.to(trainer.device))
        if len(batches) == max(args.batches, args.layout_batches):
            break
    # Every state runs against the frozen network stage 2 trains with: the spec's
    # frozen_checkpoint (e.g. the authors' weights), or the one a stage-2 checkpoint holds.
    checkpoints = [s for s in args.states if s != "init"]
    if config["frozen_checkpoint"]:
        trainer.load_frozen(config["frozen_checkpoint"], train_data._dataset)
    elif checkpoints:
        model.load_state_dict(load_checkpoint(checkpoints[0])["state_dict"])
    else:
        raise SystemExit("no frozen network: give a stage-2 checkpoint among --states")
    probes = []
    for state in args.states:
        if state == "init":
            model.learnable.load_state_dict(init)
            epoch = 1
        else:
            checkpoint = load_checkpoint(state)
            model.load_state_dict(checkpoint["state_dict"])
            epoch = int(checkpoint["epoch"]) + 1
        probes.append({"state": state, **gradient_probe(model, batches[: args.batches], epoch)})
    keys = ["rec_loss", "align_loss", "grad_norm_rec", "grad_norm_align", "cosine", "align_share"]
    rows = []
    for p in probes:
        weights, inner = p["alignment"]["weight"], p["alignment"]["inner"]
        top = max(weights, key=weights.get)
        rows.append(
            [
                Path(p["state"]).name,
                p["epoch"],
                p["lambda_r"],
                *[p[k] for k in keys],
                f"{top} {weights[top]:.3f}",
                f"{min(inner.values()):.1f} .. {max(inner.values()):.1f}",
            ]
        )
    headers = ["state", "epoch", "lambda_r", *keys, "top pair weight", "mean inner products"]
    table = markdown_table(headers, rows)
    print(table)
    layout = None
    if args.layout_batches:
        layout = layout_probe(model.frozen, batches[: args.layout_batches])
        keys = ["steps", "dense_ce", "prefix_ce", "dense_hit", "prefix_hit"]
        layout_rows = [[group, *[v[k] for k in keys]] for group, v in layout.items()]
        print(markdown_table(["frozen network, trained targets", *keys], layout_rows))
    write_json(
        out_dir / f"probe-seed{args.seed}.json",
        {
            **provenance(),
            "spec": spec["name"],
            "seed": args.seed,
            "batches": args.batches,
            "probes": probes,
            "table": table,
            "layout_batches": args.layout_batches,
            "layout": layout,
            "wall_seconds": time.perf_counter() - start,
        },
    )


if __name__ == "__main__":
    main()
