"""The FLAME authors' released SASRec weights (``frozen_weights/<dataset>.pt`` in
github.com/woo-joo/FLAME_SIGIR26) as a RecBole SASRec state dict.

Their file is a plain ``state_dict`` of their own SASRec module: the same network as RecBole's
(post-LN blocks, GELU FFN of 4d, LayerNorm eps 1e-12, learned positions), under other names, with
two differences in layout that a loader must respect:

* items: their row k is the item whose id in their data file is k (row 0 is padding); ours are
  RecBole's remapped ids, so rows are picked through the dataset's token map (token ``"k"``).
* positions: they left-pad, so the last item always sits at position L - 1. The weights only
  mean the same thing under ``position_alignment: end``.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from recbole_flame.utils.errors import CheckpointError

# Their parameter names -> RecBole SASRec's; {i} is the block index.
_BLOCK_NAMES = {
    "seq_encoder.mhas.{i}.w_Q": "trm_encoder.layer.{i}.multi_head_attention.query",
    "seq_encoder.mhas.{i}.w_K": "trm_encoder.layer.{i}.multi_head_attention.key",
    "seq_encoder.mhas.{i}.w_V": "trm_encoder.layer.{i}.multi_head_attention.value",
    "seq_encoder.mhas.{i}.w": "trm_encoder.layer.{i}.multi_head_attention.dense",
    "seq_encoder.mhas.{i}.layernorm": "trm_encoder.layer.{i}.multi_head_attention.LayerNorm",
    "seq_encoder.ffns.{i}.w1": "trm_encoder.layer.{i}.feed_forward.dense_1",
    "seq_encoder.ffns.{i}.w2": "trm_encoder.layer.{i}.feed_forward.dense_2",
    "seq_encoder.ffns.{i}.layernorm": "trm_encoder.layer.{i}.feed_forward.LayerNorm",
}
_TOP_NAMES = {
    "item_emb": "item_embedding",
    "pos_emb": "position_embedding",
    "layernorm": "LayerNorm",
}
_BLOCK_RE = re.compile(r"^seq_encoder\.(mhas|ffns)\.(\d+)\.(\w+)\.(weight|bias)$")


def is_authors_state_dict(obj: Any) -> bool:
    """True for a plain dict of tensors in the authors' naming (``item_emb.weight``, ...)."""
    return (
        isinstance(obj, dict)
        and "item_emb.weight" in obj
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def rename_authors_state_dict(state: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    """Their names -> RecBole SASRec's. The item table keeps the authors' row order; map it with
    :func:`map_item_rows` once the dataset is known."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, _, kind = key.rpartition(".")
        if module in _TOP_NAMES:
            out[f"{_TOP_NAMES[module]}.{kind}"] = tensor
            continue
        match = _BLOCK_RE.match(key)
        if match is None:
            raise CheckpointError(
                f"frozen_checkpoint '{path}' looks like the FLAME authors' SASRec but has an "
                f"unknown parameter '{key}'"
            )
        group, index, name, kind = match.groups()
        template = _BLOCK_NAMES.get(f"seq_encoder.{group}.{{i}}.{name}")
        if template is None:
            raise CheckpointError(
                f"frozen_checkpoint '{path}' has an unknown parameter '{key}' for the authors' SASRec"
            )
        out[f"{template.format(i=index)}.{kind}"] = tensor
    return out


def map_item_rows(table: torch.Tensor, id_tokens, path: str) -> torch.Tensor:
    """Rows of the authors' item table in the dataset's id order: row i of the result is their
    row ``int(id_tokens[i])``; row 0 (RecBole's ``[PAD]``) is their padding row 0."""
    rows = [0]
    for token in list(id_tokens)[1:]:
        try:
            row = int(token)
        except ValueError:
            row = -1
        if not 1 <= row < table.size(0):
            raise CheckpointError(
                f"frozen_checkpoint '{path}': item '{token}' of the dataset has no row in the "
                f"authors' item table (ids 1..{table.size(0) - 1}); their weights fit only "
                "their own item ids (e.g. the bundled amazon-beauty)"
            )
        rows.append(row)
    return table[torch.tensor(rows)]
