"""``prefix_loader: onthefly`` (recbole_flame/data/prefix.py) against RecBole's own prefix
loader (``prefix_loader: recbole``: ``data_preparation`` and its materialised augmentation): the
same batches in the same order for the same seed, epoch after epoch, in training, validation and
test; the same losses and metrics for SASRec, FLAME (packed and unpacked) and TiM4Rec; the same
per-rank batches over 2 processes; and memory that does not grow with samples x L."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from recbole.data.dataloader import FullSortEvalDataLoader, TrainDataLoader

from recbole_flame.data.prefix import (
    EpochBatches,
    PrefixFullSortEvalDataLoader,
    PrefixTrainDataLoader,
    PrefixView,
    ShardBatches,
)
from recbole_flame.utils import distributed
from recbole_flame.utils.errors import ConfigError
from tests.conftest import TINY, seq_config

TIES = "ties"


def _write_ties(root: Path) -> Path:
    """300 users of 1..29 interactions with times drawn from 6 values (ties within and across
    users everywhere), a float column beside the time, rows in random order, users of 1 and 2
    interactions kept (no filter)."""
    rng = np.random.default_rng(0)
    folder = root / TIES
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        (f"u{u}", f"i{rng.integers(0, 60)}", float(rng.integers(0, 6)), float(rng.random()))
        for u in rng.permutation(300)
        for _ in range(int(rng.integers(1, 30)))
    ]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    with open(folder / f"{TIES}.inter", "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\tscore:float\n")
        f.writelines("\t".join(map(str, r)) + "\n" for r in rows)
    return root


@pytest.fixture(scope="module")
def ties_root(tmp_path_factory) -> Path:
    return _write_ties(tmp_path_factory.mktemp("ties"))


def _prepare(folder: Path, model: str, dataset: str, loader: str | None, config: dict):
    """``prepare`` with ``prefix_loader: loader`` and checkpoints of its own (FLAME's stage-1
    cache is not shared between the two loaders). RecBole logs to the current directory: the
    tests run in a temporary one (``workdir``)."""
    from recbole_flame.quick_start import prepare

    saved = folder / str(loader) / "saved"
    config = {**config, "prefix_loader": loader, "checkpoint_dir": str(saved)}
    return prepare(model, dataset, config_dict=config)


def _assert_same_batch(ours, theirs) -> None:
    if isinstance(theirs, tuple):  # an evaluation batch: (interaction, history, users, items)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            _assert_same_batch(a, b)
    elif theirs is None or isinstance(theirs, torch.Tensor):
        assert (ours is None) if theirs is None else torch.equal(ours, theirs)
    else:
        assert list(ours.interaction) == list(theirs.interaction)  # same columns, same order
        for key, value in theirs.interaction.items():
            assert ours[key].dtype == value.dtype, key
            assert torch.equal(ours[key], value), key


def _assert_same_loaders(ours, theirs, epochs: int = 2) -> int:
    """Every batch of ``epochs`` epochs of each of the three loaders equal; the batches seen."""
    seen = 0
    for mine, reference in zip(ours, theirs, strict=True):
        assert len(mine) == len(reference)
        assert len(mine._dataset) == len(reference._dataset)
        for _ in range(epochs):  # the second epoch: the generator goes on as RecBole's does
            for a, b in zip(mine, reference, strict=True):
                _assert_same_batch(a, b)
                seen += 1
    return seen


CASES = {
    "ml-tiny": (TINY, {}),
    "ties": (TIES, {"load_col": None}),
    "ties, history_limit": (TIES, {"load_col": None, "history_limit": 7}),
    "ties, batch 7": (TIES, {"load_col": None, "train_batch_size": 7, "eval_batch_size": 5}),
    "ties, valid only": (
        TIES,
        {
            "load_col": None,
            "eval_args": {"split": {"LS": "valid_only"}, "order": "TO", "mode": "full"},
        },
    ),
    "ties, test only": (
        TIES,
        {
            "load_col": None,
            "eval_args": {"split": {"LS": "test_only"}, "order": "TO", "mode": "full"},
        },
    ),
    "ml-tiny, L 3": (TINY, {"MAX_ITEM_LIST_LENGTH": 3}),
    "ml-tiny, no shuffle": (TINY, {"shuffle": False}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_batches_are_recboles(case, data_root, ties_root, workdir):
    dataset, extra = CASES[case]
    root = data_root if dataset == TINY else ties_root
    config = seq_config(root, **extra)
    *_, ours = _prepare(workdir, "SASRec", dataset, "onthefly", config)
    *_, theirs = _prepare(workdir, "SASRec", dataset, "recbole", config)
    assert isinstance(ours[0], PrefixTrainDataLoader)
    assert isinstance(ours[1], PrefixFullSortEvalDataLoader)
    assert type(theirs[0]) is TrainDataLoader and type(theirs[1]) is FullSortEvalDataLoader
    assert _assert_same_loaders(ours, theirs) > 10


def test_timestamps_and_other_columns_are_sliced_as_recbole_slices_them(ties_root, workdir):
    config = seq_config(ties_root, load_col=None)
    *_, (train, _, _) = _prepare(workdir, "TiM4Rec", TIES, "onthefly", config)
    batch = next(iter(train))
    # every interaction column has its list (RecBole's augmentation): TiM4Rec reads timestamps
    assert {"item_id_list", "timestamp_list", "score_list"} <= set(batch.interaction)
    *_, reference = _prepare(workdir, "TiM4Rec", TIES, "recbole", config)
    _assert_same_batch(batch, next(iter(reference[0])))


def _fit(folder: Path, model: str, loader: str, config: dict) -> dict:
    from recbole_flame.quick_start import train_and_test

    config_obj, _, trainer, data = _prepare(folder, model, TINY, loader, config)
    result = train_and_test(config_obj, trainer, data, saved=False)
    return {
        "losses": [h["train_loss"] for h in result["valid_history"]],
        "valid": [h["valid_result"] for h in result["valid_history"]],
        "test": dict(result["test_result"]),
    }


FIT_CASES = {
    "SASRec packed": ("SASRec", {"sequence_packing": True}),
    "SASRec unpacked": ("SASRec", {"sequence_packing": False}),
    "FLAME packed": ("FLAME", {"sequence_packing": True, "stage1_epochs": 1}),
    "FLAME unpacked": ("FLAME", {"sequence_packing": False, "stage1_epochs": 1}),
    "TiM4Rec": ("TiM4Rec", {"hidden_size": 16, "d_state": 8, "head_dim": 8, "chunk_size": 4}),
}


@pytest.mark.parametrize("case", sorted(FIT_CASES))
def test_training_losses_and_metrics_are_recboles(case, data_root, workdir):
    """Two epochs from the same seed (dropout on): every epoch's loss, every validation and the
    test are equal, not close."""
    model, extra = FIT_CASES[case]
    config = seq_config(data_root, epochs=2, train_batch_size=128, **extra)
    ours = _fit(workdir, model, "onthefly", config)
    theirs = _fit(workdir, model, "recbole", config)
    assert ours == theirs
    assert theirs["test"]["ndcg@10"] > 0  # the metrics tell runs apart


def test_the_epoch_batches_are_torchs_random_sampler_batches():
    """The same ids, batch for batch, and the generator left as torch's leaves it (so the next
    epoch, and the base seed each epoch draws, are RecBole's)."""
    for n, batch in [(10, 3), (12, 4), (1, 5), (257, 256), (1000, 7)]:
        mine, theirs = torch.Generator(), torch.Generator()
        mine.manual_seed(5)
        theirs.manual_seed(5)
        ours = EpochBatches(n, batch, mine)
        reference = torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(range(n), generator=theirs), batch, drop_last=False
        )
        assert len(ours) == len(reference)
        for _ in range(3):
            got = [b.tolist() for b in ours]
            assert got == list(reference)
            assert torch.equal(mine.get_state(), theirs.get_state())
        in_order = [b.tolist() for b in EpochBatches(n, batch, None)]
        assert in_order == [list(range(n))[i : i + batch] for i in range(0, n, batch)]


@pytest.mark.parametrize("shuffle", [True, False])
def test_a_ranks_batches_are_the_distributed_samplers(shuffle):
    for n, world, batch in [(10, 2, 3), (11, 2, 4), (7, 3, 2), (2, 3, 1), (100, 4, 8)]:
        for rank in range(world):
            ours = ShardBatches(n, batch, shuffle, rank=rank, num_replicas=world)
            sampler = torch.utils.data.distributed.DistributedSampler(
                list(range(n)), num_replicas=world, rank=rank, shuffle=shuffle
            )
            reference = torch.utils.data.BatchSampler(sampler, batch, drop_last=False)
            assert ours.num_samples == sampler.num_samples and len(ours.dataset) == n
            assert len(ours) == len(reference)
            for epoch in range(3):
                ours.set_epoch(epoch)
                sampler.set_epoch(epoch)
                assert [b.tolist() for b in ours] == list(reference)


WORLD = 2


def _rank_batches(local_rank: int, root: str, port: int, out: str) -> None:
    torch.set_num_threads(1)
    ddp = {"world_size": WORLD, "nproc": WORLD, "ip": "127.0.0.1", "port": port, "offset": 0}
    config = seq_config(Path(root), train_batch_size=64, **ddp, local_rank=local_rank)
    folder = Path(out) / f"rank{local_rank}"
    folder.mkdir()
    os.chdir(folder)  # RecBole logs to the current directory
    result = {}
    for loader in ("onthefly", "recbole"):
        _, _, trainer, loaders = _prepare(folder, "SASRec", TINY, loader, config)
        batches = []
        for epoch in range(2):
            loaders[0].sampler.set_epoch(epoch)  # as the trainer does each epoch
            batches += [b["item_id_list"].clone() for b in loaders[0]]
        batches += [b[0]["item_id_list"].clone() for b in loaders[2]]
        kinds = (type(loaders[0].sampler).__name__, type(loaders[2].sampler).__name__)
        metrics = dict(trainer.evaluate(loaders[2], load_best_model=False))
        result[loader] = (batches, metrics, kinds)
    torch.save(result, f"{out}/rank{local_rank}.pt")


def test_two_processes_get_recboles_batches_and_metrics(data_root, workdir):
    port = distributed.free_port()
    mp.spawn(_rank_batches, args=(str(data_root), port, str(workdir)), nprocs=WORLD, join=True)
    shares = []
    for rank in range(WORLD):
        result = torch.load(workdir / f"rank{rank}.pt", weights_only=False)
        (ours, our_metrics, kinds), (theirs, their_metrics, _) = (
            result["onthefly"],
            result["recbole"],
        )
        assert kinds == ("ShardBatches", "ShardBatches")
        assert len(ours) == len(theirs) > 4
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
        assert our_metrics == their_metrics
        shares.append(ours[0])
    assert not torch.equal(shares[0], shares[1])  # each rank its own share


def test_memory_grows_with_interactions_not_with_samples_times_l(data_root, workdir):
    """What the on-the-fly splits hold: the interactions once (RecBole's own columns) and
    per-user ranges; no tensor of samples x L. RecBole's holds lists of L per sample."""
    config = seq_config(data_root, MAX_ITEM_LIST_LENGTH=50)
    _, _, _, ours = _prepare(workdir, "SASRec", TINY, "onthefly", config)
    view = ours[0]._dataset.inter_feat
    assert isinstance(view, PrefixView)
    sequences = view.sequences
    interactions = len(sequences)
    held = sum(v.numel() for v in sequences.inter.interaction.values())
    assert held == interactions * len(sequences.inter.columns)  # one value per column and row
    users = len(sequences.bounds)
    for split in ours:
        samples = split._dataset.inter_feat.samples
        assert len(samples.first) <= users and len(samples.cum) <= users + 1
    _, _, _, theirs = _prepare(workdir, "SASRec", TINY, "recbole", config)
    lists = theirs[0]._dataset.inter_feat["item_id_list"]
    assert lists.shape == (len(ours[0]._dataset), 50)
    # RecBole's augmentation materialises L ids a sample for the item list alone
    assert lists.numel() > 10 * held


def test_the_default_takes_onthefly_where_it_applies_and_recbole_elsewhere(data_root, workdir):
    *_, (train, valid, _) = _prepare(workdir, "SASRec", TINY, None, seq_config(data_root))
    assert isinstance(train, PrefixTrainDataLoader) and isinstance(valid, FullSortEvalDataLoader)
    ratio = {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "group_by": "user", "mode": "full"}
    config = seq_config(data_root, eval_args=ratio)
    *_, (train, _, _) = _prepare(workdir, "SASRec", TINY, None, config)
    assert type(train) is TrainDataLoader


def test_onthefly_where_it_cannot_serve_is_one_line(data_root, workdir):
    ratio = {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "group_by": "user", "mode": "full"}
    with pytest.raises(ConfigError) as error:
        _prepare(workdir, "SASRec", TINY, "onthefly", seq_config(data_root, eval_args=ratio))
    message = str(error.value)
    assert (
        "\n" not in message and "leave-one-out" in message and "prefix_loader: recbole" in message
    )


def test_a_column_read_whole_is_recboles_column(data_root, workdir):
    """What a negative sampler or the dense loader reads: a whole column of the split."""
    config = seq_config(data_root)
    *_, ours = _prepare(workdir, "SASRec", TINY, "onthefly", config)
    *_, theirs = _prepare(workdir, "SASRec", TINY, "recbole", config)
    for mine, reference in zip(ours, theirs, strict=True):
        for field in ("user_id", "item_id", "item_length", "item_id_list"):
            assert torch.equal(
                mine._dataset.inter_feat[field], reference._dataset.inter_feat[field]
            ), field
        head = reference._dataset.inter_feat[:20]
        _assert_same_batch(mine._dataset.inter_feat[:20], head)
