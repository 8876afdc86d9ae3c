"""One training step of our FLAME against the authors' own FLAME class, on the same weights and
the same prefix batches: the recommendation loss, the weighted alignment, and the gradient of
every learnable parameter.

    FLAME_WEIGHTS=PATH/frozen_weights python benchmarks/probes/authors_step.py \
        benchmarks/experiments/flame_beauty_authors_prefix.yaml --seed 42 --authors PATH [--batches 4]

``PATH`` is a checkout of github.com/woo-joo/FLAME_SIGIR26: their ``models`` package is
imported from it (nothing of theirs is kept here) and their FLAME loads its frozen SASRec from
its ``frozen_weights/`` as their ``train.py`` does. Our FLAME is built as the spec's run
(packed prefix training, ``end`` positions) with the same released weights frozen; their
learnable network gets a copy of ours (names and item rows mapped as for the frozen weights),
both with dropout off and ``lambda_r`` of epoch 1. Each of the first ``--batches`` training
batches (RecBole's prefix rows, short and long mixed) is fed to ours as it is and to theirs
left-padded in their item ids. Writes ``benchmarks/results/<spec>/authors_step-seed<k>.json``
(command, commit, machine) and prints the largest relative gradient difference per batch.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from recbole_flame.experiment.output import provenance, write_json
from recbole_flame.experiment.probes import prepare_run, probe_parser, probe_setup
from recbole_flame.model.authors_sasrec import map_item_rows, rename_authors_state_dict


def authors_flame(authors: Path, dataset: str, config, n_their_items: int):
    """Their FLAME, built by their own constructor (which loads their frozen weights)."""
    sys.path.insert(0, str(authors))
    from models.flame import FLAME as TheirFLAME  # noqa: PLC0415  (their checkout, at run time)

    args = types.SimpleNamespace(
        dataset=dataset,
        max_len=config["MAX_ITEM_LIST_LENGTH"],
        tau=config["tau"],
        lambda_0=config["lambda_0"],
        lambda_R=config["lambda_R"],
        num_epoch=config["anneal_epochs"],
        std=config["initializer_range"],
        num_item=n_their_items,
        num_latent=config["hidden_size"],
        num_head=config["n_heads"],
        num_layer=config["n_layers"],
        dropout=config["hidden_dropout_prob"],
    )
    here = Path.cwd()
    os.chdir(authors)  # their load_frozen reads frozen_weights/<dataset>.pt from there
    try:
        return TheirFLAME(args)
    finally:
        os.chdir(here)


def main() -> int:
    parser = probe_parser(__doc__)
    parser.add_argument("--authors", type=Path, required=True, help="a FLAME_SIGIR26 checkout")
    parser.add_argument("--batches", type=int, default=4)
    args, spec, out_dir = probe_setup(parser)
    config, model, trainer, (train_data, _, _) = prepare_run(spec, "FLAME", args.seed, out_dir)
    dataset = train_data._dataset
    trainer.load_frozen(config["frozen_checkpoint"], dataset)
    tokens = list(dataset.field2id_token[dataset.iid_field])
    their_id = torch.tensor([0] + [int(t) for t in tokens[1:]])
    raw = torch.load(config["frozen_checkpoint"], weights_only=True)
    n_their = raw["item_emb.weight"].shape[0] - 1
    theirs = authors_flame(args.authors.resolve(), config["dataset"], config, n_their)

    # Their learnable network = ours: our item rows put back at their ids.
    ours_named = model.learnable.state_dict()
    their_state = {}
    template = rename_authors_state_dict(theirs.learnable.state_dict(), "their learnable")
    inverse = dict(zip(template, theirs.learnable.state_dict(), strict=True))
    for name, tensor in ours_named.items():
        if name == "item_embedding.weight":
            full = torch.zeros(n_their + 1, tensor.size(1))
            full[their_id] = tensor
            tensor = full
        their_state[inverse[name]] = tensor.clone()
    theirs.learnable.load_state_dict(their_state)

    model.anneal(1)
    theirs.anneal(1)
    model.eval()  # dropout off; the loss is computed as in training
    theirs.eval()
    length = config["MAX_ITEM_LIST_LENGTH"]
    rows = []
    for index, interaction in enumerate(train_data):
        if index == args.batches:
            break
        seq, lens = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
        left = torch.zeros(seq.size(0), length, dtype=torch.long)
        for i, n in enumerate(lens.tolist()):
            left[i, length - n :] = their_id[seq[i, :n]]
        target = their_id[interaction[model.POS_ITEM_ID]]

        model.zero_grad()
        rec, align = model.calculate_loss(interaction)
        (rec + align).backward()
        theirs.zero_grad()
        outputs = theirs(left)
        their_rec = F.cross_entropy(outputs[0] @ theirs.learnable.item_emb.weight[1:].T, target - 1)
        their_total = theirs.compute_loss(outputs, target)
        their_total.backward()

        grads = {n: p.grad for n, p in theirs.learnable.named_parameters()}
        grads = rename_authors_state_dict(grads, "their gradients")
        grads["item_embedding.weight"] = map_item_rows(
            grads["item_embedding.weight"], tokens, "their gradients"
        )
        ours = dict(model.learnable.named_parameters())
        largest = max(g.norm().item() for g in grads.values())
        relative = {}
        for name, grad in grads.items():
            mine = ours[name].grad
            if name == "item_embedding.weight":  # RecBole's [PAD] row enters our softmax only
                grad, mine = grad[1:], mine[1:]
            if grad.norm() > 1e-6 * largest:  # the key biases' gradients are rounding noise
                relative[name] = ((mine - grad).norm() / grad.norm()).item()
        row = {
            "batch": index,
            "rows": int(seq.size(0)),
            "mean_length": lens.float().mean().item(),
            "rec_loss": {"ours": rec.item(), "theirs": their_rec.item()},
            "weighted_alignment": {
                "ours": align.item(),
                "theirs": (their_total - their_rec).item(),
            },
            "max_relative_gradient_difference": max(relative.values()),
            "relative_gradient_difference": relative,
        }
        rows.append(row)
        print(
            f"batch {index} ({row['rows']} rows, mean length {row['mean_length']:.1f}): rec loss "
            f"{rec.item():.6f} / {their_rec.item():.6f}, weighted alignment {align.item():.6f} / "
            f"{row['weighted_alignment']['theirs']:.6f} (ours / theirs); largest relative "
            f"gradient difference {row['max_relative_gradient_difference']:.2e}"
        )
    path = out_dir / f"authors_step-seed{args.seed}.json"
    write_json(path, {**provenance(), "authors": str(args.authors), "batches": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
