"""SASRec with dense (all-position) training and padding trim.

RecBole's :class:`~recbole.model.sequential_recommender.sasrec.SASRec`, unchanged in its weights
and its inference. Training differs in two ways, both exact for a causal model:

* every batch is cut to its longest real sequence before the encoder runs (RecBole pads to L);
* with ``train_mode: dense`` a row is a whole user window (see :mod:`recbole_flame.data.dense`)
  and the CE loss is averaged over every real step, each step predicting the next item.

With ``train_mode: prefix`` (the default) the loss is RecBole's, on the same samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec

from recbole_flame.model.layers.sequence import dense_targets, trim_batch


class SASRec(RecBoleSASRec):
    """RecBole's SASRec, trainable with ``train_mode: prefix | dense``."""

    supports_dense_training = True
    trim_safe = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.dense = config["train_mode"] == "dense"
        self.list_suffix = config["LIST_SUFFIX"]

    @classmethod
    def dense_training_error(cls, config) -> str | None:
        """Why ``config`` cannot train densely (one line), or None."""
        if config["loss_type"] != "CE":
            return (
                "train_mode: dense needs loss_type: CE (RecBole samples one negative per row, "
                "not per step); set loss_type: CE or train_mode: prefix"
            )
        return None

    def encode_all(self, item_seq: torch.Tensor) -> torch.Tensor:
        """The last layer's output at every step (B x l x d)."""
        positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
        emb = self.item_embedding(item_seq) + self.position_embedding(positions)
        hidden = self.dropout(self.LayerNorm(emb))
        mask = self.get_attention_mask(item_seq)
        return self.trm_encoder(hidden, mask, output_all_encoded_layers=True)[-1]

    def dense_loss(self, interaction) -> torch.Tensor:
        """Mean CE of the next item over every real step of every window."""
        item_seq = interaction[self.ITEM_SEQ]
        targets, real = dense_targets(
            item_seq, interaction[self.ITEM_SEQ_LEN], interaction[self.POS_ITEM_ID]
        )
        output = self.encode_all(item_seq)[real]
        return F.cross_entropy(output @ self.item_embedding.weight.T, targets[real])

    def calculate_loss(self, interaction) -> torch.Tensor:
        interaction = trim_batch(interaction, self.ITEM_SEQ_LEN, self.list_suffix)
        if self.dense:
            return self.dense_loss(interaction)
        return super().calculate_loss(interaction)
