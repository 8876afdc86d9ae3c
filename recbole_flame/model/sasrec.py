"""SASRec with dense (all-position) training and padding trim.

RecBole's :class:`~recbole.model.sequential_recommender.sasrec.SASRec`, unchanged in its weights
and its inference. Training differs in two ways, both exact for a causal model:

* every batch is cut to its longest real sequence before the encoder runs (RecBole pads to L);
* with ``train_mode: dense`` a row is a whole user window (see :mod:`recbole_flame.data.dense`)
  and the CE loss is averaged over every real step, each step predicting the next item.

With ``train_mode: prefix`` (the default) the loss is RecBole's, on the same samples. Dropout
draws its masks with :class:`~recbole_flame.model.layers.fast.FastDropout` on CPU (the same
distribution as RecBole's, another random stream), and the FFN's GELU is PyTorch's fused one
(the same function).

``position_alignment: start`` (default) is RecBole's position embedding: step t has position t.
``end`` is the layout of the SASRec and FLAME authors' code, which left-pads: the last real item
sits at position L - 1, so a position means "distance from the end". Batches stay right-padded;
only the position ids change (the outputs at real steps equal the authors' left-padded ones).
Under ``end``, dense training is not exact at every step: step t of a window of n items sees its
items at positions L - n .. L - n + t (the same spacing as the prefix sample, shifted), and only
the window's last step sits where inference puts it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec

from recbole_flame.model.capabilities import ModelCapabilities
from recbole_flame.model.layers.attention import set_attention_impl
from recbole_flame.model.layers.fast import use_fast_dropout, use_fused_activation
from recbole_flame.model.layers.packing import PackedBatch, RowLayout, layout_of, pack_sequences
from recbole_flame.model.layers.sequence import (
    dense_targets,
    first_trained_step,
    position_ids,
    trim_batch,
)


class SASRec(ModelCapabilities, RecBoleSASRec):
    """RecBole's SASRec, trainable with ``train_mode: prefix | dense``."""

    supports_dense_training = True
    supports_packing = True
    trim_safe = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.dense = config["train_mode"] == "dense"
        self.list_suffix = config["LIST_SUFFIX"]
        self.position_alignment = config["position_alignment"] or "start"
        # Prefix training packs several samples a row (layers/packing.py): the same loss.
        self.packing = bool(config["sequence_packing"]) and not self.dense
        self._batch_layout: RowLayout | None = None
        use_fast_dropout(self)  # same distribution, cheaper masks on CPU
        use_fused_activation(self.trm_encoder, config["hidden_act"])  # same function, one kernel
        # Same weights and names; SDPA where it is exact and faster (see layers/attention.py).
        set_attention_impl(self.trm_encoder, config["attention_impl"] or "auto")

    @classmethod
    def dense_training_error(cls, config) -> str | None:
        """Why ``config`` cannot train densely (one line), or None."""
        if config["loss_type"] != "CE":
            return (
                "train_mode: dense needs loss_type: CE (RecBole samples one negative per row, "
                "not per step); set loss_type: CE or train_mode: prefix"
            )
        return None

    def embed(
        self,
        item_seq: torch.Tensor,
        item_seq_len: torch.Tensor,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Item + position embedding, LayerNorm, dropout (B x l x d); ``positions`` (B x l)
        default to those of ``position_alignment``."""
        if positions is None:
            positions = position_ids(
                item_seq_len, item_seq.size(1), self.max_seq_length, self.position_alignment
            )
        emb = self.item_embedding(item_seq) + self.position_embedding(positions)
        return self.dropout(self.LayerNorm(emb))

    def pack(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, layout: RowLayout | None = None
    ) -> PackedBatch:
        """``item_seq`` packed several samples a row, with this model's position ids
        (``layout``: the rows the data loader computed, else computed here)."""
        return pack_sequences(
            item_seq, item_seq_len, self.max_seq_length, self.position_alignment, layout=layout
        )

    def encode_packed(self, packed: PackedBatch) -> torch.Tensor:
        """The last layer's output at every packed position (R x W x d)."""
        hidden = self.embed(packed.items, None, packed.positions)
        mask = packed.attention_mask()
        return self.trm_encoder(hidden, mask, output_all_encoded_layers=True)[-1]

    def encode_all(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """The last layer's output at every step (B x l x d)."""
        hidden = self.embed(item_seq, item_seq_len)
        mask = self.get_attention_mask(item_seq)
        return self.trm_encoder(hidden, mask, output_all_encoded_layers=True)[-1]

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """The output at each sequence's last real step (B x d), as RecBole's SASRec; packed in
        prefix training."""
        if self.packing and self.training:
            packed = self.pack(item_seq, item_seq_len, self._batch_layout)
            return packed.gather(self.encode_packed(packed))
        return self.gather_indexes(self.encode_all(item_seq, item_seq_len), item_seq_len - 1)

    def dense_loss(self, interaction) -> torch.Tensor:
        """Mean CE of the next item over every real step of every window."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        targets, real = dense_targets(
            item_seq, item_seq_len, interaction[self.POS_ITEM_ID], first_trained_step(interaction)
        )
        output = self.encode_all(item_seq, item_seq_len)[real]
        return F.cross_entropy(output @ self.item_embedding.weight.T, targets[real])

    def calculate_loss(self, interaction) -> torch.Tensor:
        interaction = trim_batch(interaction, self.ITEM_SEQ_LEN, self.list_suffix)
        if self.dense:
            return self.dense_loss(interaction)
        # RecBole's calculate_loss calls forward(item_seq, item_seq_len): the batch's packing
        # layout reaches it through the model for that one call.
        self._batch_layout = layout_of(interaction)
        try:
            return super().calculate_loss(interaction)
        finally:
            self._batch_layout = None
