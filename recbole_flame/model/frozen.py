"""FLAME's frozen network from a file: a stage-1 SASRec checkpoint of this package or the FLAME
authors' released weights (:mod:`~recbole_flame.model.authors_sasrec`), loaded and checked
against the SASRec shape a FLAME config asks for, before any data loads (``FLAME.check_config``)
and again with the dataset's item ids (the trainer's stage 2)."""

from __future__ import annotations

import os

from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec

from recbole_flame.model.authors_sasrec import (
    is_authors_state_dict,
    map_item_rows,
    rename_authors_state_dict,
)
from recbole_flame.model.dataset_stub import DatasetStub
from recbole_flame.utils.checkpoint import first_mismatch, load_checkpoint, read_torch_file
from recbole_flame.utils.errors import CheckpointError


def check_frozen_checkpoint(config, path: str, n_items: int | None = None, id_tokens=None) -> dict:
    """Load a stage-1 checkpoint and check it fits a SASRec of ``config``'s shape; returns the
    checkpoint. Without ``n_items`` (no dataset yet) the item count is taken from the file.

    Also accepts the FLAME authors' released SASRec weights (a plain state dict in their
    naming): their names are mapped onto RecBole's, and with ``id_tokens`` (the dataset's item
    tokens by internal id) their item rows are put in the dataset's order."""
    if not os.path.isfile(path):
        raise CheckpointError(
            f"frozen_checkpoint '{path}' does not exist; give a SASRec checkpoint of this "
            "package or the FLAME authors' released .pt, or ~ to train one in stage 1"
        )
    raw = read_torch_file(path)
    if is_authors_state_dict(raw):
        if config["position_alignment"] != "end":
            raise CheckpointError(
                f"frozen_checkpoint '{path}' holds the FLAME authors' SASRec, trained with the "
                "last item at position L-1: set position_alignment: end"
            )
        state_dict = rename_authors_state_dict(raw, path)
        if id_tokens is not None:
            state_dict["item_embedding.weight"] = map_item_rows(
                state_dict["item_embedding.weight"], id_tokens, path
            )
        checkpoint = {"state_dict": state_dict, "format": "authors"}
    else:
        checkpoint = load_checkpoint(path)
        state_dict = checkpoint["state_dict"]
    if n_items is None:
        emb = state_dict.get("item_embedding.weight")
        n_items = emb.shape[0] if emb is not None and emb.dim() == 2 else 1
    shaped = RecBoleSASRec(config, DatasetStub(n_items))
    problem = first_mismatch(shaped, state_dict)
    if problem is not None:
        raise CheckpointError(
            f"frozen_checkpoint '{path}' does not fit the FLAME config: {problem}"
        )
    return checkpoint
