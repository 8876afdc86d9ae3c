"""Top-k recommendations from a trained model, for known users or for new item sequences.

* Sequential models read the user's whole known history (training, validation and test
  interactions: "what next, given everything we know"), its last ``MAX_ITEM_LIST_LENGTH`` items,
  laid out as RecBole lays out a test sample; a new sequence of known items is scored the same
  way, with no retraining.
* General models (BPR, ...) score a known user by its id.
* Context-aware (CTR) models score (user, item) pairs with the user's and item's features, every
  item or the given candidates, in chunks; interaction-level features (a timestamp, ...) take the
  value of the user's latest interaction, "as of now".

The items of the user's history (of the given sequence) are ranked out unless ``keep_history``;
the padding item never is ranked. Rows: user, rank, item (external ids), score.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from recbole.data.interaction import Interaction
from recbole.utils import ModelType

from recbole_flame.inference.load import LoadedModel, load_model
from recbole_flame.inference.scoring import InnerProductScorer, TopK, inner_product_scorer
from recbole_flame.utils.errors import UserError

#: Scores held at once: users in a batch x items (a float32 budget of 64 MiB).
SCORE_BUDGET = 1 << 24
#: (user, item) rows a CTR model scores in one call.
CTR_CHUNK = 4096
#: The ``user`` value of the rows of new sequence ``i`` (counted from 1).
SEQUENCE_LABEL = "sequence-{}"


class RecommendError(UserError, ValueError):
    """Input ``recommend`` cannot score: unknown ids, a new user for a model that needs its id."""


def _examples(tokens: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(map(str, tokens[:n]))
    return f"{shown}, ..., {tokens[-1]}" if len(tokens) > n + 1 else ", ".join(map(str, tokens))


def to_ids(
    loaded: LoadedModel,
    field: str,
    tokens: Iterable[Any],
    what: str,
    where: str,
    hint: str = "",
) -> list[int]:
    """Internal ids of external ``tokens`` of ``field``; one line naming every unknown one and
    what the dataset knows (then ``hint``)."""
    table = loaded.dataset.field2token_id[field]
    ids, unknown = [], []
    for token in tokens:
        key = str(token).strip()
        found = table.get(key)
        if found is None or found == 0:  # 0 is RecBole's padding token, never a real id
            unknown.append(key)
        else:
            ids.append(int(found))
    if unknown:
        known = loaded.dataset.field2id_token[field][1:]
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise RecommendError(
            f"unknown {what}{where}: {', '.join(unknown[:10])}{more}; dataset "
            f"'{loaded.dataset.dataset_name}' has {len(known)} {what} ({_examples(list(known))}), "
            f"by the ids of its atomic files{hint}"
        )
    return ids


def read_id_file(path: str | os.PathLike, what: str) -> list[str]:
    """One external id a line (blank lines skipped); one line if the file cannot be read."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise RecommendError(f"{what} file '{file}' does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RecommendError(f"{what} file '{file}' cannot be read as text ({exc})") from exc
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    if not ids:
        raise RecommendError(f"{what} file '{file}' holds no ids (one id a line)")
    return ids


# --- inputs ---------------------------------------------------------------------------------
def _list_fields(loaded: LoadedModel) -> list[str]:
    """The interaction fields a sequential sample carries as lists (all but the user's)."""
    return [f for f in loaded.history.inter.columns if f != loaded.uid_field]


def user_sequences(loaded: LoadedModel, users: Sequence[int]) -> Interaction:
    """Each user's last ``MAX_ITEM_LIST_LENGTH`` known interactions as a right-padded RecBole
    sequential batch (``item_id_list``, ``item_length``, and every other field's list)."""
    config, inter = loaded.config, loaded.history.inter
    max_len, suffix = config["MAX_ITEM_LIST_LENGTH"], config["LIST_SUFFIX"]
    lengths, starts = [], []
    for u in users:
        rows = loaded.history.rows(u)
        n = min(rows.stop - rows.start, max_len)
        lengths.append(n)
        starts.append(rows.stop - n)
    batch: dict[str, torch.Tensor] = {
        loaded.uid_field: torch.tensor(list(users), dtype=torch.long),
        config["ITEM_LIST_LENGTH_FIELD"]: torch.tensor(lengths, dtype=torch.long),
    }
    for name in _list_fields(loaded):
        value = inter[name]
        out = value.new_zeros((len(users), max_len, *value.shape[1:]))
        for i, (start, n) in enumerate(zip(starts, lengths, strict=True)):
            out[i, :n] = value[start : start + n]
        batch[name + suffix] = out
    return Interaction(batch)


def new_sequences(
    loaded: LoadedModel,
    sequences: Sequence[Sequence[int]],
    timestamps: Sequence[Sequence[float]] | None,
) -> Interaction:
    """Sequences of internal item ids (their last ``MAX_ITEM_LIST_LENGTH``) as a sequential
    batch of the padding user; ``timestamps`` fill the time field's list (other fields 0)."""
    config = loaded.config
    max_len, suffix = config["MAX_ITEM_LIST_LENGTH"], config["LIST_SUFFIX"]
    time_field = config["TIME_FIELD"]
    batch: dict[str, torch.Tensor] = {
        loaded.uid_field: torch.zeros(len(sequences), dtype=torch.long),
        config["ITEM_LIST_LENGTH_FIELD"]: torch.tensor(
            [min(len(s), max_len) for s in sequences], dtype=torch.long
        ),
    }
    for name in _list_fields(loaded):
        value = loaded.history.inter[name]
        out = value.new_zeros((len(sequences), max_len, *value.shape[1:]))
        source = sequences if name == loaded.iid_field else None
        if name == time_field and timestamps is not None:
            source = timestamps
        if source is not None:
            for i, seq in enumerate(source):
                tail = list(seq)[-max_len:]
                out[i, : len(tail)] = torch.tensor(tail, dtype=out.dtype)
        batch[name + suffix] = out
    return Interaction(batch)


def _needs_time(loaded: LoadedModel) -> bool:
    return getattr(loaded.model, "TIME_SEQ", None) is not None


# --- scoring ----------------------------------------------------------------------------------
def _full_scores(loaded: LoadedModel, batch: Interaction) -> torch.Tensor:
    """Every item's score (B x n_items) from the model's own full-sort scorer."""
    with torch.no_grad():
        scores = loaded.model.full_sort_predict(batch.to(loaded.device))
    return scores.view(len(batch), -1).float()


def _pair_scores(loaded: LoadedModel, user_rows: Interaction, items: torch.Tensor) -> torch.Tensor:
    """Scores of one user (``user_rows``: its fields, one row) with each of ``items``, from the
    model's pairwise scorer, with the user's and items' features joined as RecBole does."""
    n = len(items)
    fields = {
        name: value.repeat(n, *([1] * (value.dim() - 1)))
        for name, value in user_rows.interaction.items()
    }
    fields[loaded.iid_field] = items
    pairs = loaded.dataset.join(Interaction(fields))
    with torch.no_grad():
        return loaded.model.predict(pairs.to(loaded.device)).view(-1).float()


def _latest_rows(loaded: LoadedModel, users: Sequence[int]) -> list[Interaction]:
    """Each user's latest interaction's fields, less the item and the label: the context a
    CTR model scores every candidate item in."""
    inter = loaded.history.inter
    drop = {loaded.iid_field, loaded.config["LABEL_FIELD"]}
    rows = []
    for u in users:
        span = loaded.history.rows(u)
        if span.stop > span.start:
            row = inter[span.stop - 1 : span.stop]
            fields = {k: v for k, v in row.interaction.items() if k not in drop}
        else:
            fields = {loaded.uid_field: torch.tensor([u])}
        rows.append(Interaction(fields))
    return rows


def _history_items(loaded: LoadedModel, user: int) -> torch.Tensor:
    return loaded.history.inter[loaded.iid_field][loaded.history.rows(user)]


def recommend(
    model: LoadedModel | str | os.PathLike,
    users: Sequence[str] | None = None,
    sequences: Sequence[Sequence[str]] | None = None,
    k: int = 10,
    candidates: Sequence[str] | None = None,
    keep_history: bool = False,
    timestamps: Sequence[Sequence[float]] | None = None,
    device: str | torch.device | None = "cpu",
    data_path: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """The top ``k`` items for each of ``users`` (external ids), or for each new sequence of
    ``sequences`` (external item ids, oldest first; sequential models), as a DataFrame with
    one row per (user, rank): ``user``, ``rank`` (from 1), ``item`` (external id), ``score``.
    A new sequence's rows have ``user`` ``sequence-1``, ``sequence-2``, ...

    ``model``: a :class:`~recbole_flame.inference.load.LoadedModel` or a checkpoint path
    (loaded on ``device``, with the dataset under ``data_path``). ``candidates``: rank only
    these items. ``keep_history``: do not rank out the items the user (the sequence) already
    has. ``timestamps``: one list per sequence, for a time-aware model (TiM4Rec).
    Fewer than ``k`` rows come back only when fewer items are left to rank."""
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device, data_path)
    if (users is None) == (sequences is None):
        raise RecommendError("give either users (known user ids) or sequences (item ids), not both")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise RecommendError(f"k must be a positive integer, not {k!r}")
    kind = loaded.model_type
    name = loaded.model_name
    allowed = None
    if candidates is not None:
        candidate_ids = to_ids(
            loaded, loaded.iid_field, candidates, "items", " among the candidates"
        )
        allowed = torch.zeros(loaded.n_items, dtype=torch.bool)
        allowed[candidate_ids] = True

    if sequences is not None:
        if kind != ModelType.SEQUENTIAL:
            why = (
                "a general model scores the users it was trained on by their id"
                if kind == ModelType.GENERAL
                else "a context-aware (CTR) model scores known users by their id and features"
            )
            raise RecommendError(
                f"{name} cannot score a new sequence: {why}, and a new user has no id it "
                "learned; give --users, or use a sequential model (SASRec, FLAME, ...)"
            )
        seq_ids = [
            to_ids(loaded, loaded.iid_field, s, "items", " in the sequence") for s in sequences
        ]
        if any(len(s) == 0 for s in seq_ids):
            raise RecommendError("a sequence needs at least one item id")
        if _needs_time(loaded):
            if timestamps is None:
                raise RecommendError(
                    f"{name} is time-aware: give the sequence's timestamps too (--timestamps="
                    "t1,t2,... in the dataset's time unit, one per item)"
                )
            if len(timestamps) != len(seq_ids) or any(
                len(t) != len(s) for t, s in zip(timestamps, seq_ids, strict=False)
            ):
                raise RecommendError("give one timestamp per item of each sequence")
        labels = [SEQUENCE_LABEL.format(i + 1) for i in range(len(seq_ids))]
        batch = new_sequences(loaded, seq_ids, timestamps if _needs_time(loaded) else None)
        exclude = [torch.tensor(s) for s in seq_ids]
        return _rank_batches(loaded, labels, batch, exclude, k, allowed, keep_history)

    if kind == ModelType.SEQUENTIAL:
        hint = "; for a new user, give the items they have as a sequence (--sequence=ITEM,ITEM)"
    else:
        hint = (
            f"; {name} scores only the users it was trained on: a new user has no learned "
            "representation (a sequential model scores a new user's items)"
        )
    user_ids = to_ids(loaded, loaded.uid_field, users, "users", "", hint)
    labels = [str(loaded.dataset.field2id_token[loaded.uid_field][u]) for u in user_ids]
    empty = [lab for u, lab in zip(user_ids, labels, strict=True) if loaded.history.count(u) == 0]
    if empty and kind == ModelType.SEQUENTIAL:
        raise RecommendError(
            f"users {', '.join(empty)} have no interactions in the dataset: a sequential model "
            "has nothing to read; give a sequence of their items instead"
        )
    exclude = [_history_items(loaded, u) for u in user_ids]
    if kind == ModelType.CONTEXT:
        return _rank_pairs(loaded, labels, user_ids, exclude, k, allowed, keep_history)
    if kind == ModelType.SEQUENTIAL:
        batch = user_sequences(loaded, user_ids)
    else:
        batch = Interaction({loaded.uid_field: torch.tensor(user_ids, dtype=torch.long)})
    return _rank_batches(loaded, labels, batch, exclude, k, allowed, keep_history)


def _mask(scores: torch.Tensor, exclude: list[torch.Tensor], allowed, keep_history: bool) -> None:
    """Rank out, in place: the padding item, items outside the candidates, the history."""
    scores[:, 0] = float("-inf")
    if allowed is not None:
        scores[:, ~allowed.to(scores.device)] = float("-inf")
    if not keep_history:
        for row, items in enumerate(exclude):
            scores[row, items.to(scores.device)] = float("-inf")


def _rank_batches(
    loaded: LoadedModel,
    labels: list[str],
    batch: Interaction,
    exclude: list[torch.Tensor],
    k: int,
    allowed,
    keep_history: bool,
) -> pd.DataFrame:
    """Full-sort scoring: the chunked scorer of evaluation where it serves the model
    (``eval_item_chunk`` items at a time, ``eval_batch_size`` users), else the model's own
    ``full_sort_predict``, users in batches whose scores stay in SCORE_BUDGET."""
    chunk = loaded.config["eval_item_chunk"]
    scorer = inner_product_scorer(loaded.model, chunk) if chunk else None
    if scorer is not None and loaded.model_type == ModelType.SEQUENTIAL:
        return _rank_chunked(loaded, scorer, labels, batch, exclude, k, allowed, keep_history)
    step = max(1, SCORE_BUDGET // max(loaded.n_items, 1))
    frames = []
    for start in range(0, len(labels), step):
        part = batch[start : start + step]
        try:
            scores = _full_scores(loaded, part)
        except NotImplementedError:  # a model with a pairwise scorer only
            scores = _pairwise_full(loaded, part)
        _mask(scores, exclude[start : start + step], allowed, keep_history)
        top = TopK(len(part), k, scores.device)
        top.add(scores, 0)
        frames.append(_rows(loaded, labels[start : start + step], *top.result()))
    return pd.concat(frames, ignore_index=True)


def _rank_chunked(
    loaded: LoadedModel,
    scorer: InnerProductScorer,
    labels: list[str],
    batch: Interaction,
    exclude: list[torch.Tensor],
    k: int,
    allowed,
    keep_history: bool,
) -> pd.DataFrame:
    step = int(loaded.config["eval_batch_size"])
    frames = []
    for start in range(0, len(labels), step):
        part = batch[start : start + step].to(loaded.device)
        pairs = None
        if not keep_history:
            held = exclude[start : start + step]
            rows = torch.cat([torch.full((len(e),), i) for i, e in enumerate(held)])
            pairs = (rows, torch.cat(held))
        with torch.no_grad():
            vectors = scorer.user_vectors(part)
            scores, ids = scorer.top_k(vectors, k, pairs=pairs, allowed=allowed)
        frames.append(_rows(loaded, labels[start : start + step], scores.float(), ids))
    return pd.concat(frames, ignore_index=True)


def _pairwise_full(loaded: LoadedModel, part: Interaction) -> torch.Tensor:
    items = torch.arange(loaded.n_items)
    rows = []
    for i in range(len(part)):
        row = part[i : i + 1]
        rows.append(torch.cat([_pair_scores(loaded, row, c) for c in items.split(CTR_CHUNK)]))
    return torch.stack(rows)


def _rank_pairs(
    loaded: LoadedModel,
    labels: list[str],
    users: list[int],
    exclude: list[torch.Tensor],
    k: int,
    allowed,
    keep_history: bool,
) -> pd.DataFrame:
    """CTR scoring: each user with every item (or the candidates), CTR_CHUNK pairs a call, the
    top ``k`` merged across chunks."""
    items = torch.arange(1, loaded.n_items) if allowed is None else allowed.nonzero().view(-1)
    frames = []
    for label, user_rows, seen in zip(labels, _latest_rows(loaded, users), exclude, strict=True):
        banned = torch.zeros(loaded.n_items, dtype=torch.bool)
        if not keep_history:
            banned[seen] = True
        top = TopK(1, k, torch.device("cpu"))
        for chunk in items.split(CTR_CHUNK):
            chunk = chunk[~banned[chunk]]
            if len(chunk):
                top.add(_pair_scores(loaded, user_rows, chunk).cpu().view(1, -1), chunk)
        frames.append(_rows(loaded, [label], *top.result()))
    return pd.concat(frames, ignore_index=True)


def _rows(
    loaded: LoadedModel, labels: list[str], scores: torch.Tensor, ids: torch.Tensor
) -> pd.DataFrame:
    """One row per (user, rank) with a finite score (ranked-out items never appear)."""
    scores, ids = scores.cpu().numpy(), ids.cpu().numpy()
    tokens = loaded.dataset.field2id_token[loaded.iid_field]
    out = {"user": [], "rank": [], "item": [], "score": []}
    for label, row_scores, row_ids in zip(labels, scores, ids, strict=True):
        keep = np.isfinite(row_scores)
        n = int(keep.sum())
        out["user"] += [label] * n
        out["rank"] += list(range(1, n + 1))
        out["item"] += [str(t) for t in tokens[row_ids[keep]]]
        out["score"] += [float(s) for s in row_scores[keep]]
    return pd.DataFrame(out)
