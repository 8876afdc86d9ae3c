"""One full-sort scorer for evaluation and recommendation: user vectors against the item table
in item chunks, the top k merged across chunks.

RecBole's full-sort evaluation asks the model for a batch x catalogue score matrix, masks it,
then its collector takes ``topk`` and builds a second batch x catalogue matrix of positives.
For a model whose scores are an inner product (SASRec, FLAME, TiM4Rec) this module instead

* encodes the batch's sequences once, packed several to a row when the network packs
  (:mod:`recbole_flame.model.layers.packing`: an evaluation batch costs its real positions, not
  L per user) and cut to the longest sequence otherwise;
* scores ``eval_item_chunk`` items at a time, masks them (the padding item, the history, items
  outside the candidates) and merges each chunk into a running top k, so no more than
  batch x (chunk + k) scores exist at once, whatever the catalogue's size;
* hands the evaluator RecBole's own ``rec.topk`` rows (which of the top k are positives, and
  how many positives a row has) and ``rec.items``, from which RecBole's metrics are computed.

The metrics equal RecBole's evaluator's wherever the top k is unambiguous; items of exactly equal
score at the k-th place may come in another order (RecBole's own order there is torch.topk's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from recbole.data.interaction import Interaction

#: What metrics may need besides ``rec.topk`` and ``rec.items`` (which the chunked scorer
#: serves): every score of a row (GAUC's mean rank, the raw scores). Evaluation with any of these
#: takes RecBole's path.
OTHER_NEEDS = ("rec.meanrank", "rec.score")


class TopK:
    """The running top ``k`` (scores and item ids) of ``rows`` rows, merged chunk by chunk."""

    def __init__(self, rows: int, k: int, device: torch.device) -> None:
        self.k = k
        self.device = device
        self.scores = torch.empty((rows, 0), device=device)
        self.ids = torch.empty((rows, 0), dtype=torch.long, device=device)

    def add(self, scores: torch.Tensor, items: int | torch.Tensor) -> None:
        """Merge a chunk: ``scores`` (rows x c) of items ``items`` (c ids, or the first id of a
        run of c consecutive ones)."""
        rows, width = scores.shape
        # The chunk's own top k first: merging then concatenates k + k columns, not a copy of
        # the whole chunk (which would double the peak).
        own, where = torch.topk(scores.to(self.device), min(self.k, width), dim=1)
        if isinstance(items, int):
            own_ids = where + items
        else:
            own_ids = items.to(self.device)[where]
        both = torch.cat((self.scores, own), dim=1)
        both_ids = torch.cat((self.ids, own_ids), dim=1)
        top, where = torch.topk(both, min(self.k, both.size(1)), dim=1)
        self.scores, self.ids = top, both_ids.gather(1, where)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, ids), each rows x min(k, items seen), best first."""
        return self.scores, self.ids


@dataclass
class Ranked:
    """What the chunked scorer gives the evaluator for a batch, in place of its score matrix:
    the top-k item ids and the positives as RecBole's collector lays out ``rec.topk``."""

    ids: torch.Tensor
    hits: torch.Tensor

    def __len__(self) -> int:
        return self.ids.size(0)


def topk_hits(
    ids: torch.Tensor, positive_u: torch.Tensor, positive_i: torch.Tensor, n_items: int
) -> torch.Tensor:
    """RecBole's ``rec.topk`` rows from the top-k ids (B x k): 1 where the item at that rank is
    one of the row's positives, then the row's number of (distinct) positives."""
    rows, k = ids.shape
    positive_u = positive_u.to(ids.device).long()
    positive_i = positive_i.to(ids.device).long()
    # RecBole marks (user, item) pairs in a matrix: a pair given twice counts once
    pairs = torch.unique(positive_u * n_items + positive_i)
    positive_u, positive_i = pairs // n_items, pairs % n_items
    hits = torch.zeros((rows, k + 1), dtype=torch.long, device=ids.device)
    match = ids[positive_u] == positive_i.unsqueeze(1)  # P x k
    who, rank = match.nonzero(as_tuple=True)
    hits[positive_u[who], rank] = 1
    hits[:, k] = torch.bincount(positive_u, minlength=rows)
    return hits


class InnerProductScorer:
    """Scores as ``user vector . item vector`` for a network with an item table: its user
    vectors (packed or trimmed) and the chunked, masked top k."""

    def __init__(
        self,
        encode: Callable[[Interaction], torch.Tensor],
        table: Callable[[], torch.Tensor],
        chunk: int | None,
    ) -> None:
        self._encode = encode
        self._table = table
        self.chunk = chunk

    def user_vectors(self, interaction: Interaction) -> torch.Tensor:
        """The batch's user vectors (B x d)."""
        return self._encode(interaction)

    @property
    def table(self) -> torch.Tensor:
        return self._table()

    def top_k(
        self,
        vectors: torch.Tensor,
        k: int,
        pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
        sequences: torch.Tensor | None = None,
        allowed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The top ``k`` (scores, item ids) of each row of ``vectors``, item 0 (padding) and
        the masked items ranked out: ``pairs`` (row indices, item ids), every item of row r
        of ``sequences`` (B x l; 0 is padding), items where ``allowed`` (n_items) is False."""
        table = self.table
        n_items = table.size(0)
        chunk = self.chunk or n_items
        device = vectors.device
        top = TopK(vectors.size(0), k, device)
        if pairs is not None:
            pair_rows, pair_items = (p.to(device).long() for p in pairs)
        if sequences is not None:
            sequences = sequences.to(device)
            seq_rows = torch.arange(sequences.size(0), device=device).unsqueeze(1)
            seq_rows = seq_rows.expand_as(sequences)
        for start in range(0, n_items, chunk):
            stop = min(n_items, start + chunk)
            scores = vectors @ table[start:stop].T
            if start == 0:
                scores[:, 0] = float("-inf")
            if allowed is not None:
                scores[:, ~allowed[start:stop].to(device)] = float("-inf")
            if pairs is not None:
                inside = (pair_items >= start) & (pair_items < stop)
                scores[pair_rows[inside], pair_items[inside] - start] = float("-inf")
            if sequences is not None:
                inside = (sequences >= start) & (sequences < stop)
                scores[seq_rows[inside], sequences[inside] - start] = float("-inf")
            top.add(scores, start)
        return top.result()


def _sequence_encoder(net: Any) -> Callable[[Interaction], torch.Tensor]:
    """``net``'s output at each sequence's last item: packed several sequences a row when
    ``net`` packs (this package's SASRec), else cut to the batch's longest sequence when that
    is exact for it (``trim_safe``), else as the model pads it."""
    from recbole_flame.model.layers.sequence import trim_batch

    seq_field, len_field = net.ITEM_SEQ, net.ITEM_SEQ_LEN
    suffix = getattr(net, "list_suffix", None)

    if hasattr(net, "pack") and hasattr(net, "encode_packed"):

        def packed(interaction: Interaction) -> torch.Tensor:
            batch = net.pack(interaction[seq_field], interaction[len_field])
            return batch.gather(net.encode_packed(batch))

        return packed

    trim = bool(getattr(net, "trim_safe", False)) and suffix is not None
    encode = getattr(net, "_encode", None)  # TiM4Rec: items, lengths and timestamps

    def plain(interaction: Interaction) -> torch.Tensor:
        if trim:
            interaction = trim_batch(interaction, len_field, suffix)
        if encode is not None:
            return encode(interaction)
        return net.forward(interaction[seq_field], interaction[len_field])

    return plain


def inner_product_scorer(model: Any, chunk: int | None) -> InnerProductScorer | None:
    """The chunked scorer of ``model`` when its full-sort scores are its user vector times its
    item table (SASRec, RecBole's or this package's; FLAME, whichever network it scores with;
    TiM4Rec), else None: other models keep their own ``full_sort_predict``."""
    from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec

    from recbole_flame.model.flame import FLAME
    from recbole_flame.model.tim4rec import TiM4Rec

    if isinstance(model, FLAME):

        def network() -> Any:  # FLAME.scoring_with may switch it between batches
            return getattr(model, model._scorer)

        def encode(interaction: Interaction) -> torch.Tensor:
            return _sequence_encoder(network())(interaction)

        return InnerProductScorer(encode, lambda: network().item_embedding.weight, chunk)
    if isinstance(model, RecBoleSASRec | TiM4Rec):
        return InnerProductScorer(
            _sequence_encoder(model), lambda: model.item_embedding.weight, chunk
        )
    return None


class RankingCollector:
    """RecBole's evaluation collector, also taking a :class:`Ranked` batch in place of a score
    matrix (every other call goes to the collector it wraps)."""

    def __init__(self, collector: Any) -> None:
        self._collector = collector

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collector, name)

    def eval_batch_collect(self, scores, interaction, positive_u, positive_i) -> None:
        if not isinstance(scores, Ranked):
            self._collector.eval_batch_collect(scores, interaction, positive_u, positive_i)
            return
        register, struct = self._collector.register, self._collector.data_struct
        if register.need("rec.items"):
            struct.update_tensor("rec.items", scores.ids)
        if register.need("rec.topk"):
            struct.update_tensor("rec.topk", scores.hits)


class ChunkedRankingMixin:
    """Full-sort evaluation through :class:`InnerProductScorer` (``eval_item_chunk`` items a
    chunk) for the models it serves, RecBole's path for the others; put before a RecBole
    trainer class (and :class:`~recbole_flame.trainer.trainer.HistoryExclusionMixin`, whose
    ``eval_exclude_history`` it applies itself) in the bases."""

    def __init__(self, config, model) -> None:
        super().__init__(config, model)
        self.eval_collector = RankingCollector(self.eval_collector)

    def _ranking_scorer(self) -> InnerProductScorer | None:
        chunk = self.config["eval_item_chunk"] if "eval_item_chunk" in self.config else None
        if not chunk:
            return None
        register = self.eval_collector.register
        if any(register.need(key) for key in OTHER_NEEDS):
            return None
        return inner_product_scorer(self.model, int(chunk))

    def score_matrix_batch_eval(self, batched_data):
        """RecBole's full-sort scoring of a batch, whatever ``eval_item_chunk``: the masked
        batch x catalogue score matrix, for callers that need every score (per-user ranks)."""
        return super()._full_sort_batch_eval(batched_data)

    def _full_sort_batch_eval(self, batched_data):
        scorer = self._ranking_scorer()
        if scorer is None:
            return super()._full_sort_batch_eval(batched_data)
        interaction, history_index, positive_u, positive_i = batched_data
        interaction = interaction.to(self.device)
        sequences = None
        if self.config["eval_exclude_history"]:
            sequences = interaction[self.config["ITEM_ID_FIELD"] + self.config["LIST_SUFFIX"]]
        vectors = scorer.user_vectors(interaction)
        _, ids = scorer.top_k(vectors, max(self.config["topk"]), history_index, sequences)
        ranked = Ranked(ids, topk_hits(ids, positive_u, positive_i, scorer.table.size(0)))
        return interaction, ranked, positive_u, positive_i
