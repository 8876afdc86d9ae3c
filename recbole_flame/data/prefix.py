"""Prefix samples built as each batch is built: ``prefix_loader: onthefly``.

RecBole's sequential data augmentation (``SequentialDataset.data_augmentation``, run by
``build()`` inside ``data_preparation``) writes every prefix sample out as a row: its target's
columns, its length, and a list of up to L items (and of every other interaction column, e.g.
TiM4Rec's timestamps), padded to L. That is O(interactions x L) memory before a step runs (at
100 million interactions about 40 GB for the item ids alone), and evaluation holds the same
layout for every user.

Here the data stays as RecBole loads it, one row per interaction sorted by user then time
(RecBole's own sort, so ties keep RecBole's order), with each user's first row (O(users)). A
split is an index of target rows: for each user in RecBole's order, the range of that user's
targets in the split (:class:`PrefixSamples`, O(users)). A sample is its target row t; its
items are the up to L rows before t of the same user, sliced out when a batch is built
(:class:`UserSequences`). The rows a batch gets are RecBole's rows, column for column.

The order is RecBole's too. RecBole sorts the augmented rows by the target's time (stable) and
splits leave-one-out per user in the order users first appear there; within a user the rows
keep time order. A user first appears at its first target, the user's second interaction, and
among users whose second interactions share a time the smaller id comes first (the augmented
rows were in user order before the stable sort). So the split lists users by (time of their
second interaction, id), each with its targets in time order, and the last one or two targets
of a user go to validation and test as RecBole's ``_split_index_by_leave_one_out`` sends them.

The loaders (:class:`PrefixTrainDataLoader`, :class:`PrefixFullSortEvalDataLoader`) are
RecBole's with one change: RecBole hands torch's DataLoader ``list(range(n))`` as its dataset
and lets a ``RandomSampler`` (or ``DistributedSampler``) turn a permutation into a list of
Python ints every epoch, about 36 bytes a sample each (3.6 GB at 100 million). Here a sampler
yields each batch's sample ids as a slice of one int64 permutation, drawn from the loader's
generator exactly as ``RandomSampler`` draws it (:class:`EpochBatches`), or each rank's share
as ``DistributedSampler`` deals it (:class:`ShardBatches`). Same seed, same batches.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from logging import getLogger
from typing import Any

import numpy as np
import torch
from recbole.data.dataloader import FullSortEvalDataLoader, TrainDataLoader
from recbole.data.dataset import Dataset
from recbole.data.interaction import Interaction
from recbole.data.transform import construct_transform
from recbole.data.utils import create_samplers, get_dataloader
from recbole.utils import FeatureType, ModelType, set_color

from recbole_flame.utils.errors import ConfigError

#: ``prefix_loader`` values; ``~`` (the default) is onthefly where it applies, else recbole.
PREFIX_LOADERS = ("onthefly", "recbole")
# leave-one-out mode -> how many of a user's last targets leave training
LEAVE_ONE_OUT = {"valid_and_test": 2, "valid_only": 1, "test_only": 1}


# --- which loader a run gets ------------------------------------------------------------------
def onthefly_problem(config: Any) -> str | None:
    """Why ``prefix_loader: onthefly`` cannot serve this run, or None when it can (a sequential
    model, leave-one-out by time, none of RecBole's pre-split or saved data)."""
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        return f"{config['model']} is not a sequential model"
    eval_args = config["eval_args"] or {}
    split = eval_args.get("split") or {}
    if list(split) != ["LS"] or split["LS"] not in LEAVE_ONE_OUT:
        return f"it splits leave-one-out only (eval_args split LS), not {split}"
    if eval_args.get("order") != "TO":
        return f"it needs eval_args order TO, not {eval_args.get('order')}"
    if config["benchmark_filename"] is not None:
        return "it does not read pre-split files (benchmark_filename)"
    unused = config["unused_col"] or {}
    if "inter" in unused:
        return "it cannot drop interaction columns (unused_col inter)"
    if config["save_dataloaders"] or config["dataloaders_save_path"]:
        return "it does not save or load RecBole's split dataloaders (save_dataloaders)"
    saved = os.path.join(
        config["checkpoint_dir"], f"{config['dataset']}-for-{config['model']}-dataloader.pth"
    )
    if os.path.exists(saved):  # RecBole's data_preparation would load this file
        return f"RecBole's saved dataloaders {saved} exist"
    return None


def uses_onthefly(config: Any) -> bool:
    """Whether this run's prefix samples are built on the fly. ``prefix_loader: ~`` (default):
    wherever it applies; ``onthefly`` where it does not stops with one line."""
    asked = config["prefix_loader"]
    if asked == "recbole" or (asked is None and config["MODEL_TYPE"] != ModelType.SEQUENTIAL):
        return False
    problem = onthefly_problem(config)
    if problem is not None and asked == "onthefly":
        raise ConfigError(
            f"prefix_loader: onthefly cannot serve this run: {problem}; set prefix_loader: "
            "recbole (RecBole's materialised prefix rows)"
        )
    return problem is None


# --- the data: every interaction by user and time --------------------------------------------
class UserSequences:
    """Every interaction, sorted by user then time, and where each user's rows start.

    ``rows(targets)`` builds the prefix samples ending at rows ``targets``: the target row's
    columns, ``item_length`` and each column's list of up to L earlier rows of the same user,
    right-padded with zeros, as RecBole's augmentation writes them."""

    def __init__(self, dataset: Dataset) -> None:
        inter = dataset.inter_feat
        self.inter = inter
        self.uid_field = dataset.uid_field
        self.max_len = dataset.max_item_list_len
        self.length_field = dataset.item_list_length_field
        uids = inter[self.uid_field].numpy()
        #: rows of user u: bounds[u] .. bounds[u + 1]
        self.bounds = torch.from_numpy(
            np.searchsorted(uids, np.arange(dataset.user_num + 1), side="left")
        )
        self.list_fields: dict[str, tuple[str, tuple[int, ...]]] = {}
        for field in inter:
            if field == self.uid_field:
                continue
            list_field = getattr(dataset, f"{field}_list_field")
            list_len = dataset.field2seqlen[list_field]
            shape = (list_len,) if isinstance(list_len, int) else tuple(list_len)
            # RecBole's numerical features carry a (value, index) pair per entry
            if (
                dataset.field2type[field] in (FeatureType.FLOAT, FeatureType.FLOAT_SEQ)
                and field in dataset.config["numerical_features"]
            ):
                shape += (2,)
            self.list_fields[field] = (list_field, shape)

    def __len__(self) -> int:
        return len(self.inter)

    def column(self, field: str, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Column ``field`` of every interaction, or of the samples ending at ``targets``."""
        if targets is None:
            return self.inter[field]
        if field in self.inter:
            return self.inter[field][targets]
        if field == self.length_field:
            starts = self.bounds[self.inter[self.uid_field][targets]]
            return targets - torch.maximum(starts, targets - self.max_len)
        return self.rows(targets)[field]

    def rows(self, targets: torch.Tensor) -> Interaction:
        """The prefix samples whose targets are rows ``targets`` (int64), in that order."""
        uid = self.inter[self.uid_field][targets]
        begin = torch.maximum(self.bounds[uid], targets - self.max_len)
        length = targets - begin
        steps = torch.arange(self.max_len)
        real = steps < length.unsqueeze(1)  # B x L
        # padded steps read the target row (any valid row), then are zeroed
        where = torch.where(real, begin.unsqueeze(1) + steps, targets.unsqueeze(1))
        out = {field: value[targets] for field, value in self.inter.interaction.items()}
        out[self.length_field] = length
        n = len(targets)
        for field, (list_field, shape) in self.list_fields.items():
            value = self.inter[field]
            picked = value[where]  # B x L x (the column's own dims)
            keep = real.view(n, self.max_len, *([1] * (picked.dim() - 2)))
            picked = torch.where(keep, picked, torch.zeros((), dtype=picked.dtype))
            if tuple(picked.shape[1:]) != shape:  # a shorter sequence column: pad as RecBole
                full = torch.zeros((n, *shape), dtype=picked.dtype)
                full[tuple(slice(0, s) for s in picked.shape)] = picked
                picked = full
            out[list_field] = picked
        return Interaction(out)


# --- a split: which targets, in which order ---------------------------------------------------
class PrefixSamples:
    """The target rows of a split in order, as ranges (``first[j]``, ``count[j]``): O(slots)
    memory, one slot per user for a RecBole split. ``explicit`` holds one slot per sample
    (after a re-sort)."""

    def __init__(self, first: np.ndarray, count: np.ndarray) -> None:
        keep = count > 0
        self.first = np.ascontiguousarray(first[keep], dtype=np.int64)
        self.count = np.ascontiguousarray(count[keep], dtype=np.int64)
        self.cum = np.concatenate([[0], np.cumsum(self.count)]).astype(np.int64)
        self._explicit: np.ndarray | None = None

    @classmethod
    def explicit(cls, targets: np.ndarray) -> PrefixSamples:
        samples = cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        samples._explicit = np.ascontiguousarray(targets, dtype=np.int64)
        return samples

    def __len__(self) -> int:
        return len(self._explicit) if self._explicit is not None else int(self.cum[-1])

    def targets(self, ids: np.ndarray) -> np.ndarray:
        """The target rows of samples ``ids`` (int64)."""
        if self._explicit is not None:
            return self._explicit[ids]
        slot = np.searchsorted(self.cum, ids, side="right") - 1
        return self.first[slot] + (ids - self.cum[slot])

    def all_targets(self) -> np.ndarray:
        if self._explicit is not None:
            return self._explicit
        return np.repeat(self.first - self.cum[:-1], self.count) + np.arange(len(self))


def _sample_ids(index: Any, n: int) -> np.ndarray:
    """``index`` (an int, slice, list, bool mask or array of ints) as int64 sample ids."""
    if isinstance(index, slice):
        return np.arange(n, dtype=np.int64)[index]
    ids = index.numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
    if ids.dtype == np.bool_:
        return np.flatnonzero(ids).astype(np.int64)
    ids = ids.astype(np.int64, copy=False).reshape(-1)
    if ids.size and (ids.min() < -n or ids.max() >= n):
        raise IndexError(f"sample index out of range for {n} samples")
    return np.where(ids < 0, ids + n, ids)


class PrefixView:
    """A split's ``inter_feat``: RecBole's augmented rows of that split, built when read.

    Indexing with ids (int, slice, array, bool mask) gives those rows as an
    :class:`~recbole.data.interaction.Interaction` (what a loader's collate reads); indexing
    with a column name gives that column for every sample (what a negative sampler or the
    dense loader reads: O(samples), built on request). ``samples`` may be a function, called
    on first use (the whole dataset's view, which only a popularity sampler reads)."""

    def __init__(
        self,
        sequences: UserSequences,
        samples: PrefixSamples | Callable[[], PrefixSamples],
        length: int | None = None,
    ) -> None:
        self.sequences = sequences
        self._samples = samples
        self._length = length

    @property
    def samples(self) -> PrefixSamples:
        if callable(self._samples):
            self._samples = self._samples()
        return self._samples

    @property
    def length(self) -> int:
        if self._length is not None and callable(self._samples):
            return self._length
        return len(self.samples)

    def __len__(self) -> int:
        return self.length

    @property
    def columns(self) -> list[str]:
        seq = self.sequences
        lists = [name for name, _ in seq.list_fields.values()]
        return [*seq.inter.columns, seq.length_field, *lists]

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns)

    def __contains__(self, field: str) -> bool:
        return field in self.columns

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, str):
            if index not in self:
                raise KeyError(index)
            return self.sequences.column(index, torch.from_numpy(self.samples.all_targets()))
        if isinstance(index, (int, np.integer)):
            row = self.sequences.rows(torch.from_numpy(self._targets([int(index)])))
            return Interaction({k: v[0] for k, v in row.interaction.items()})
        return self.sequences.rows(torch.from_numpy(self._targets(index)))

    def _targets(self, index: Any) -> np.ndarray:
        return self.samples.targets(_sample_ids(index, len(self)))

    def sort(self, by: str | list[str], ascending: bool | list[bool] = True) -> None:
        """Reorder the samples as :meth:`Interaction.sort` would (stable, last key first; a
        list column by its first entry), e.g. for RecBole's sampled evaluation loader."""
        by = [by] if isinstance(by, str) else list(by)
        ascending = [ascending] * len(by) if isinstance(ascending, bool) else list(ascending)
        targets = self.samples.all_targets()
        for field, up in zip(by[::-1], ascending[::-1], strict=True):
            key = self.sequences.column(field, torch.from_numpy(targets))
            key = key if key.dim() == 1 else key[..., 0]
            order = np.argsort(key.numpy(), kind="stable")
            targets = targets[order[::-1] if not up else order]
        self._samples = PrefixSamples.explicit(targets)

    def shuffle(self) -> None:
        """Reorder the samples at random, as :meth:`Interaction.shuffle` does."""
        order = torch.randperm(len(self)).numpy()
        self._samples = PrefixSamples.explicit(self.samples.all_targets()[order])

    def __str__(self) -> str:
        return f"prefix samples built on the fly ({len(self)} samples; columns {self.columns})"

    __repr__ = __str__


# --- RecBole's build(), without materialising ------------------------------------------------
def build_prefix_splits(dataset: Dataset) -> list[Dataset]:
    """RecBole's ``dataset.build()`` for a sequential dataset split leave-one-out by time: the
    train, validation and test datasets, each of whose ``inter_feat`` is a :class:`PrefixView`
    (the same rows in the same order as RecBole's, built when read). ``dataset`` itself ends
    as RecBole leaves it: its ``inter_feat`` every sample, ordered by target time."""
    config = dataset.config
    # RecBole's _change_feat_format, without the augmentation the sequential class adds
    Dataset._change_feat_format(dataset)
    dataset._aug_presets()  # the list fields' types and lengths, as augmentation sets them
    dataset._check_field("uid_field", "time_field")
    dataset.sort(by=[dataset.uid_field, dataset.time_field], ascending=True)
    sequences = UserSequences(dataset)

    bounds = sequences.bounds.numpy()
    per_user = np.diff(bounds)
    users = np.flatnonzero(per_user >= 2)  # a user's first interaction is no target
    start = bounds[users]
    count = per_user[users] - 1  # the user's samples
    first_time = sequences.column(dataset.time_field).numpy()[start + 1]
    order = np.lexsort((users, first_time))  # (time of the first target, user id)
    start, count = start[order], count[order]

    mode = config["eval_args"]["split"]["LS"]
    legal = np.minimum(LEAVE_ONE_OUT[mode], count - 1)
    last = start + count  # the user's last row: its last target
    train = PrefixSamples(start + 1, count - legal)
    if mode == "valid_and_test":
        # legal 2: the second-last target validates and the last tests; legal 1: the last
        # tests (RecBole fills the split lists from the end)
        valid = PrefixSamples(last - 1, (legal == 2).astype(np.int64))
        test = PrefixSamples(last, (legal >= 1).astype(np.int64))
    else:
        one = PrefixSamples(last, (legal == 1).astype(np.int64))
        none = PrefixSamples(last[:0], last[:0])
        valid, test = (one, none) if mode == "valid_only" else (none, one)

    def every_sample_by_time() -> PrefixSamples:
        firsts = np.zeros(len(sequences), dtype=bool)
        firsts[bounds[:-1][per_user > 0]] = True
        targets = np.flatnonzero(~firsts)
        times = sequences.column(dataset.time_field).numpy()[targets]
        return PrefixSamples.explicit(targets[np.argsort(times, kind="stable")])

    dataset.inter_feat = PrefixView(sequences, every_sample_by_time, int(count.sum()))
    dataset._drop_unused_col()  # user and item columns only (inter columns: onthefly_problem)
    return [dataset.copy(PrefixView(sequences, s)) for s in (train, valid, test)]


# --- the loaders --------------------------------------------------------------------------------
class SampleIds(torch.utils.data.Dataset):
    """torch's dataset of a loader whose sampler yields whole batches of ids: hands each batch
    to the collate function as it is (RecBole's is ``list(range(n))``)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, ids: torch.Tensor) -> torch.Tensor:
        return ids


class EpochBatches(torch.utils.data.Sampler):
    """The batches of sample ids that RecBole's loader gets from torch's ``RandomSampler``
    (``generator`` given: shuffled) or ``SequentialSampler`` and a ``BatchSampler`` that keeps
    the last short batch, as slices of one int64 tensor."""

    def __init__(self, n: int, batch: int, generator: torch.Generator | None) -> None:
        self.n, self.batch, self.generator = n, batch, generator

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch)

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.generator is None:
            for begin in range(0, self.n, self.batch):
                yield torch.arange(begin, min(begin + self.batch, self.n))
            return
        order = torch.randperm(self.n, generator=self.generator)
        whole = self.n - self.n % self.batch
        for begin in range(0, whole, self.batch):
            yield order[begin : begin + self.batch]
        # RandomSampler draws (and drops) a second permutation when its first runs out, before
        # the short last batch is cut: drawn here too, so every later draw is RecBole's.
        torch.randperm(self.n, generator=self.generator)
        if whole < self.n:
            yield order[whole:]


class ShardBatches(torch.utils.data.Sampler):
    """This rank's batches of sample ids as torch's ``DistributedSampler`` (seed 0, the last
    samples padded with the first, ``set_epoch`` reshuffles) and a ``BatchSampler`` deal them
    in a distributed RecBole loader. ``num_samples`` and ``dataset`` as the sampler's, which
    distributed evaluation reads."""

    def __init__(
        self,
        n: int,
        batch: int,
        shuffle: bool,
        rank: int | None = None,
        num_replicas: int | None = None,
        seed: int = 0,
    ) -> None:
        import torch.distributed as dist

        self.num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
        self.rank = dist.get_rank() if rank is None else rank
        self.n, self.batch, self.shuffle, self.seed, self.epoch = n, batch, shuffle, seed, 0
        self.dataset = range(n)
        self.num_samples = math.ceil(n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch)

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            ids = torch.randperm(self.n, generator=g)
        else:
            ids = torch.arange(self.n)
        pad = self.total_size - self.n
        if pad:
            ids = torch.cat([ids, ids.repeat(math.ceil(pad / self.n))[:pad]])
        mine = ids[self.rank : self.total_size : self.num_replicas]
        for begin in range(0, len(mine), self.batch):
            yield mine[begin : begin + self.batch]


def start_loader(loader: Any, config: Any, dataset: Dataset, sampler: Any, shuffle: bool) -> None:
    """What RecBole's ``AbstractDataLoader.__init__`` does (the same attributes, step, generator
    and transform), with torch's DataLoader over :class:`SampleIds` and a batch sampler in
    place of ``list(range(n))`` and a per-sample sampler."""
    loader.shuffle = shuffle
    loader.config = config
    loader._dataset = dataset
    loader._sampler = sampler
    loader._batch_size = loader.step = loader.model = None
    loader._init_batch_size_and_step()
    loader.generator = torch.Generator()
    loader.generator.manual_seed(config["seed"])
    loader.transform = construct_transform(config)
    loader.is_sequential = config["MODEL_TYPE"] == ModelType.SEQUENTIAL
    if config["single_spec"]:
        batches = EpochBatches(
            loader.sample_size, loader.step, loader.generator if shuffle else None
        )
    else:  # each rank trains on its share of the global batch, as in RecBole
        loader.step = max(1, loader.step // config["world_size"])
        batches = ShardBatches(loader.sample_size, loader.step, shuffle)
    torch.utils.data.DataLoader.__init__(
        loader,
        dataset=SampleIds(loader.sample_size),
        batch_size=None,  # the sampler yields whole batches
        sampler=batches,
        collate_fn=loader.collate_fn,
        num_workers=config["worker"],
        generator=loader.generator,  # each epoch's iterator draws its base seed from it
    )


class PrefixTrainDataLoader(TrainDataLoader):
    """RecBole's ``TrainDataLoader`` (negative sampling, transform, collate) over sample ids
    dealt in batches (:func:`start_loader`)."""

    def __init__(self, config: Any, dataset: Dataset, sampler: Any, shuffle: bool = False):
        self.logger = getLogger()
        self._set_neg_sample_args(
            config, dataset, config["MODEL_INPUT_TYPE"], config["train_neg_sample_args"]
        )
        self.sample_size = len(dataset)
        start_loader(self, config, dataset, sampler, shuffle)


class PrefixFullSortEvalDataLoader(FullSortEvalDataLoader):
    """RecBole's ``FullSortEvalDataLoader`` for a sequential model (one row per user: its last
    L items and target) over sample ids dealt in batches (:func:`start_loader`)."""

    def __init__(self, config: Any, dataset: Dataset, sampler: Any, shuffle: bool = False):
        self.logger = getLogger()
        self.uid_field = dataset.uid_field
        self.iid_field = dataset.iid_field
        self.is_sequential = True
        self.sample_size = len(dataset)
        if shuffle:
            self.logger.warning("FullSortEvalDataLoader can't shuffle")
        start_loader(self, config, dataset, sampler, False)


def prefix_data_preparation(config: Any, dataset: Dataset) -> tuple[Any, Any, Any]:
    """RecBole's ``data_preparation`` for a sequential model with prefix samples built on the
    fly: the same train, validation and test loaders, batches and order."""
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        raise ConfigError(
            f"prefix_loader: onthefly is for sequential models, not {config['model']}"
        )
    built = build_prefix_splits(dataset)
    train_sampler, valid_sampler, test_sampler = create_samplers(config, dataset, built)
    train_class = get_dataloader(config, "train")
    if train_class is TrainDataLoader:
        train_class = PrefixTrainDataLoader
    train_data = train_class(config, built[0], train_sampler, shuffle=config["shuffle"])
    loaders = []
    for phase, split, sampler in (
        ("valid", built[1], valid_sampler),
        ("test", built[2], test_sampler),
    ):
        cls = get_dataloader(config, phase)
        if cls is FullSortEvalDataLoader:
            cls = PrefixFullSortEvalDataLoader
        loaders.append(cls(config, split, sampler, shuffle=False))
    logger = getLogger()
    logger.info(
        set_color("[Training]: ", "pink")
        + f"train_batch_size = [{config['train_batch_size']}] train_neg_sample_args: "
        + f"[{config['train_neg_sample_args']}]; prefix samples built on the fly"
    )
    logger.info(
        set_color("[Evaluation]: ", "pink")
        + f"eval_batch_size = [{config['eval_batch_size']}] eval_args: [{config['eval_args']}]"
    )
    return train_data, loaders[0], loaders[1]
