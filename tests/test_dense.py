"""Dense (all-position) training and padding trim, against RecBole's prefix samples."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction
from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec

from recbole_flame.data import (
    DENSE_FIRST_STEP,
    dense_train_dataloader,
    dense_window_rows,
    dense_windows,
)
from recbole_flame.model import flame as flame_module
from recbole_flame.model.flame import FLAME
from recbole_flame.model.sasrec import SASRec
from recbole_flame.quick_start import prepare, run
from recbole_flame.utils import ConfigError
from tests.conftest import TINY, prepare_in, seq_config

L = 30  # the slice's users have 20 to ~700 items: some fit in L, most do not


def _rows(interaction: Interaction) -> list[tuple[int, tuple[int, ...], int]]:
    """(user, context items, target) of each prefix row."""
    seqs = interaction["item_id_list"].tolist()
    lengths = interaction["item_length"].tolist()
    return [
        (u, tuple(s[:n]), t)
        for u, s, n, t in zip(
            interaction["user_id"].tolist(),
            seqs,
            lengths,
            interaction["item_id"].tolist(),
            strict=True,
        )
    ]


def _window_steps(
    interaction: Interaction, first: list[int] | None = None
) -> list[tuple[int, tuple[int, ...], int]]:
    """(user, context, target) of every trained step of every dense window: step t's context
    is the window up to t, its target the next item (the row's own target after the last);
    a window's steps before ``first[row]`` are not trained."""
    out = []
    for row, (u, ctx, target) in enumerate(_rows(interaction)):
        seq = list(ctx) + [target]
        start = first[row] if first else 0
        out += [(u, tuple(seq[: t + 1]), seq[t + 1]) for t in range(start, len(ctx))]
    return out


def _prepared(model: str, data_root, folder) -> tuple:
    config, _, _, (train_data, _, _) = prepare_in(
        folder, model, seq_config(data_root, MAX_ITEM_LIST_LENGTH=L)
    )
    return config, train_data


@pytest.fixture(scope="module")
def prefix_setup(data_root, tmp_path_factory):
    return _prepared("SASRec", data_root, tmp_path_factory.mktemp("dense"))


@pytest.fixture(scope="module")
def flame_setup(data_root, tmp_path_factory):
    return _prepared("FLAME", data_root, tmp_path_factory.mktemp("dense_flame"))


def test_window_rows_by_hand():
    # user 7: 6 rows (targets 2..7), L = 2 -> keep rows 6, 4, 2 (1-based); user 3: 2 rows -> row 2.
    users = np.array([7, 7, 7, 7, 7, 7, 3, 3])
    lengths = np.array([1, 2, 2, 2, 2, 2, 1, 2])
    assert dense_window_rows(users, lengths, 2).tolist() == [1, 3, 5, 7]
    # L = 4: rows 6 (covers 3..6) and 2 (covers 1..2)
    lengths4 = np.array([1, 2, 3, 4, 4, 4, 1, 2])
    assert dense_window_rows(users, lengths4, 4).tolist() == [1, 5, 7]
    # last_only (dense_windows: last): each user's last row, whatever L
    assert dense_window_rows(users, lengths, 2, last_only=True).tolist() == [5, 7]
    assert dense_window_rows(users, lengths4, 4, last_only=True).tolist() == [5, 7]
    with pytest.raises(ValueError, match="time order"):
        dense_window_rows(users, lengths4[::-1].copy(), 4)


def test_min_context_windows_by_hand():
    # one user, 9 training rows, L = 4 (contexts 1, 2, 3, 4, 4, ...)
    users = np.zeros(9, dtype=np.int64)
    lengths = np.minimum(np.arange(1, 10), 4)
    # C = 1: the covering, rows 9 (targets 6..9), 5 (2..5), 1 (1)
    rows, first = dense_windows(users, lengths, 4)
    assert rows.tolist() == [0, 4, 8] and first.tolist() == [0, 0, 0]
    # C = 3: row 9 trains its steps with >= 3 items before them (targets 8, 9), row 7 targets
    # 6, 7, row 5 targets 4, 5, row 3 starts at the first item: targets 1..3, all its steps.
    rows, first = dense_windows(users, lengths, 4, min_context=3)
    assert rows.tolist() == [2, 4, 6, 8] and first.tolist() == [0, 2, 2, 2]
    # C = L: one window per target beyond the first L, each step at prefix's full context
    rows, first = dense_windows(users, lengths, 4, min_context=4)
    assert rows.tolist() == [3, 4, 5, 6, 7, 8] and first.tolist() == [0, 3, 3, 3, 3, 3]
    # last_only ignores it: the authors' one window per user, every step trained
    rows, first = dense_windows(users, lengths, 4, last_only=True, min_context=3)
    assert rows.tolist() == [8] and first.tolist() == [0]
    with pytest.raises(ValueError, match="min_context"):
        dense_windows(users, lengths, 4, min_context=5)


def _dense_with(config, train_data, **settings):
    before = {k: config[k] for k in settings}
    config.final_config_dict.update(settings)
    try:
        return dense_train_dataloader(config, train_data)
    finally:
        config.final_config_dict.update(before)


@pytest.mark.parametrize("min_context", [2, 17, L])
def test_min_context_covers_every_target_once_with_enough_context(prefix_setup, min_context):
    config, train_data = prefix_setup
    prefix = _rows(train_data._dataset.inter_feat)
    covering = dense_train_dataloader(config, train_data)
    windows = _dense_with(config, train_data, dense_min_context=min_context)._dataset.inter_feat
    trained = _window_steps(windows, windows[DENSE_FIRST_STEP].tolist())
    assert Counter((u, t) for u, _, t in trained) == Counter((u, t) for u, _, t in prefix)
    prefix_context = {(u, t): c for u, c, t in prefix}
    for u, ctx, t in trained:
        full = prefix_context[(u, t)]
        assert full[len(full) - len(ctx) :] == ctx and len(ctx) >= min(min_context, len(full))
    assert len(windows) > len(covering._dataset)  # overlapping windows: more rows
    if min_context == L:  # every target at exactly prefix's context
        assert all(ctx == prefix_context[(u, t)] for u, ctx, t in trained)


def _long_user_batches(config, train_data, n_users: int = 2):
    """Prefix rows and ``dense_min_context: L`` windows of the first users longer than 2L."""
    dense = _dense_with(config, train_data, dense_min_context=L)
    return _user_batches(train_data, dense, lambda n: 2 * L < n < 4 * L, n_users)


def _user_batches(train_data, dense_loader, keep, n_users: int):
    """Prefix rows and dense windows of the first ``n_users`` users whose count of training
    rows passes ``keep``."""
    prefix = train_data._dataset.inter_feat
    dense = dense_loader._dataset.inter_feat
    counts = Counter(prefix["user_id"].tolist())
    users = torch.tensor([u for u, n in counts.items() if keep(n)][:n_users])
    return prefix[torch.isin(prefix["user_id"], users).numpy()], dense[
        torch.isin(dense["user_id"], users).numpy()
    ]


def _sasrec_pair(config, train_data) -> tuple:
    """RecBole's SASRec (prefix) and this package's dense SASRec holding the same weights."""
    torch.manual_seed(0)
    reference = RecBoleSASRec(config, train_data._dataset).eval()
    config["train_mode"] = "dense"
    try:
        model = SASRec(config, train_data._dataset).eval()
    finally:
        config["train_mode"] = "prefix"
    model.load_state_dict(reference.state_dict())
    return reference, model


def test_min_context_l_dense_loss_is_mean_of_all_prefix_losses(prefix_setup):
    """With ``dense_min_context: L`` every trained step sees prefix's own context, so for users
    much longer than L the dense loss is RecBole's prefix loss over all their rows."""
    config, train_data = prefix_setup
    prefix, dense = _long_user_batches(config, train_data)
    reference, model = _sasrec_pair(config, train_data)
    assert len(prefix) > 4 * L and len(dense) < len(prefix)
    with torch.no_grad():
        expected = reference.calculate_loss(prefix)
        got = model.calculate_loss(dense)
        del dense.interaction[DENSE_FIRST_STEP]  # without the mask: duplicated targets count
        assert not torch.allclose(model.calculate_loss(dense), expected, atol=1e-4)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_dense_epoch_covers_every_prefix_target_once(prefix_setup):
    config, train_data = prefix_setup
    prefix = _rows(train_data._dataset.inter_feat)
    dense_loader = dense_train_dataloader(config, train_data)
    dense = _window_steps(dense_loader._dataset.inter_feat)
    assert len(dense_loader._dataset) < len(prefix) / 5

    # A user rates an item once in ml-100k, so (user, target) names a position of the sequence.
    assert Counter((u, t) for u, _, t in dense) == Counter((u, t) for u, _, t in prefix)
    prefix_context = {(u, t): c for u, c, t in prefix}
    rows_per_user = Counter(u for u, _, _ in prefix)
    fitting = {u for u, n in rows_per_user.items() if n <= L}
    assert fitting and len(fitting) < len(rows_per_user)  # both kinds are exercised
    for u, ctx, t in dense:
        full = prefix_context[(u, t)]
        assert 1 <= len(ctx) <= L and full[len(full) - len(ctx) :] == ctx
        if u in fitting:
            assert ctx == full


def _fitting_batches(config, train_data, n_users: int = 3):
    """Prefix rows and dense windows of the first users whose sequence fits in L."""
    dense = dense_train_dataloader(config, train_data)
    return _user_batches(train_data, dense, lambda n: n <= L, n_users)


def test_dense_loss_is_mean_of_prefix_losses(prefix_setup):
    config, train_data = prefix_setup
    prefix, dense = _fitting_batches(config, train_data)
    reference, model = _sasrec_pair(config, train_data)
    assert len(dense) == 3 and len(prefix) > 3 * 5
    with torch.no_grad():
        expected = reference.calculate_loss(prefix)  # mean CE over the prefix rows
        got = model.calculate_loss(dense)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_trim_leaves_sasrec_loss_unchanged(prefix_setup):
    config, train_data = prefix_setup
    batch = train_data._dataset.inter_feat[:20]  # short prefixes: most columns are padding
    assert int(batch["item_length"].max()) < L
    torch.manual_seed(0)
    reference = RecBoleSASRec(config, train_data._dataset).eval()
    model = SASRec(config, train_data._dataset).eval()
    model.load_state_dict(reference.state_dict())
    with torch.no_grad():
        assert torch.allclose(
            model.calculate_loss(batch), reference.calculate_loss(batch), atol=1e-6
        )


@pytest.mark.parametrize("mixing", ["tiled", "independent"])
def test_trim_leaves_flame_losses_unchanged(flame_setup, monkeypatch, mixing):
    config, train_data = flame_setup
    batch = train_data._dataset.inter_feat[:20]
    config["path_mixing"] = mixing
    try:
        model = FLAME(config, train_data._dataset).eval()
    finally:
        config["path_mixing"] = "tiled"
    with torch.no_grad():
        trimmed = model.calculate_loss(batch)
        monkeypatch.setattr(flame_module, "trim_batch", lambda inter, *_: inter)
        full = model.calculate_loss(batch)
    for a, b in zip(trimmed, full, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def _flame_with(config, dataset, **settings) -> FLAME:
    before = {k: config[k] for k in settings}
    config.final_config_dict.update(settings)
    try:
        return FLAME(config, dataset).eval()
    finally:
        config.final_config_dict.update(before)


def test_flame_min_context_l_losses_equal_prefix_losses(flame_setup):
    """FLAME's alignment reads the steps the recommendation loss trains: with
    ``dense_min_context: L`` and one InfoNCE group, both dense losses equal prefix FLAME's on
    the same users' prefix rows (RecBole's positions, where dense steps are exact)."""
    config, train_data = flame_setup
    prefix, dense = _long_user_batches(config, train_data)
    common = dict(position_alignment="start", train_batch_size=len(prefix))
    reference = _flame_with(config, train_data._dataset, **common)
    model = _flame_with(config, train_data._dataset, train_mode="dense", **common)
    torch.manual_seed(1)
    for p in reference.frozen.parameters():
        p.data.normal_(0, 0.05)  # a frozen network unlike the learnable one
    model.load_state_dict(reference.state_dict())
    with torch.no_grad():
        expected = reference.calculate_loss(prefix)
        got = model.calculate_loss(dense)
    assert expected[1] > 0
    for a, b in zip(got, expected, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mixing", ["tiled", "independent"])
def test_flame_step_outputs_equal_prefix_outputs(flame_setup, mixing):
    """Dense training reads every step of every path: with RecBole's positions (``start``)
    step t must equal the last-step output of the prefix ending at t, in both mixing modes (the
    tiled mask has to be causal)."""
    config, train_data = flame_setup
    model = _flame_with(config, train_data._dataset, path_mixing=mixing, position_alignment="start")
    torch.manual_seed(1)
    for p in model.frozen.parameters():
        p.data.normal_(0, 0.05)  # a frozen network unlike the learnable one
    seq = torch.tensor([[5, 9, 2, 7, 3, 0, 0]])
    paths = model.sample_paths()
    with torch.no_grad():
        every = model.path_outputs(seq, torch.tensor([5]), paths, all_steps=True)
        for t in range(5):
            prefix = seq.clone()
            prefix[0, t + 1 :] = 0
            last = model.path_outputs(prefix, torch.tensor([t + 1]), paths)
            for p in paths:
                assert torch.allclose(every[p][0, t], last[p][0], atol=1e-5), (p, t)


def test_flame_end_alignment_dense_is_exact_only_at_the_last_step(flame_setup):
    """Under ``end`` positions a window's step t sits at L - n + t, not at L - 1 as in the
    prefix sample: only the window's last step equals the prefix output (documented)."""
    config, train_data = flame_setup
    model = _flame_with(config, train_data._dataset, position_alignment="end")
    seq = torch.tensor([[5, 9, 2, 7, 3, 0, 0]])
    paths = model.sample_paths()
    with torch.no_grad():
        every = model.path_outputs(seq, torch.tensor([5]), paths, all_steps=True)
        for t in range(5):
            prefix = seq.clone()
            prefix[0, t + 1 :] = 0
            last = model.path_outputs(prefix, torch.tensor([t + 1]), paths)
            same = all(torch.allclose(every[p][0, t], last[p][0], atol=1e-5) for p in paths)
            assert same == (t == 4), t


def _grouped_info_nce(a, b, tau, normalize, groups):
    """Reference: :func:`info_nce` per group, weighted by the group's size."""
    total = sum(flame_module.info_nce(a[g], b[g], tau, normalize) * len(g) for g in groups)
    return total / a.size(0)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("sizes", [[10], [4, 4, 2], [3, 3, 3, 1]])
def test_all_pairs_info_nce_equals_info_nce_per_pair_and_group(normalize, sizes):
    torch.manual_seed(0)
    n = sum(sizes)
    views = [(3 * torch.randn(n, 8)).requires_grad_() for _ in range(4)]
    groups = list(torch.randperm(n).split(sizes))
    got = flame_module.all_pairs_info_nce(views, 0.7, normalize, groups)
    expected = torch.stack(
        [
            _grouped_info_nce(a, b, 0.7, normalize, groups)
            for a, b in itertools.combinations(views, 2)
        ]
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    weights = torch.rand(6)
    grads = torch.autograd.grad((weights * got).sum(), views)
    expected_grads = torch.autograd.grad((weights * expected).sum(), views)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_gram_block_logsumexp_against_a_loop_and_finite_differences():
    torch.manual_seed(0)
    n_views, m, tau = 3, 4, 0.7
    zg = torch.randn(2, n_views * m, 5, dtype=torch.float64, requires_grad=True)
    got = flame_module.GramBlockLogSumExp.apply(zg, n_views, tau)
    expected = torch.empty_like(got)
    for g, p, i, q in itertools.product(range(2), range(n_views), range(m), range(n_views)):
        scores = [zg[g, p * m + i] @ zg[g, q * m + j] / tau for j in range(m) if (p, i) != (q, j)]
        expected[g, p, i, q] = torch.logsumexp(torch.stack(scores), dim=0)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda z: flame_module.GramBlockLogSumExp.apply(z, n_views, tau), (zg,)
    )


def test_all_pairs_info_nce_one_group_is_plain_info_nce():
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    got = flame_module.all_pairs_info_nce([a, b], 1.0, False, [torch.arange(6)])
    torch.testing.assert_close(got[0], flame_module.info_nce(a, b, 1.0, False))


@pytest.mark.parametrize(
    "model, overrides, message",
    [
        ("SASRec", {"train_mode": "all"}, "train_mode must be one of prefix, dense"),
        ("GRU4Rec", {"train_mode": "dense"}, "not available for GRU4Rec"),
        (
            "SASRec",
            {
                "train_mode": "dense",
                "loss_type": "BPR",
                "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1},
            },
            "needs loss_type: CE",
        ),
        ("SASRec", {"dense_min_context": 0}, "dense_min_context"),
        ("SASRec", {"dense_min_context": 10_000}, "exceeds MAX_ITEM_LIST_LENGTH"),
    ],
)
def test_bad_train_mode_stops_before_data(data_root, workdir, model, overrides, message):
    with pytest.raises(ConfigError, match=message):
        prepare(model, "no-such-dataset", config_dict=seq_config(data_root, **overrides))


@pytest.mark.parametrize("model", ["SASRec", "FLAME"])
def test_dense_end_to_end(data_root, workdir, model):
    settings = seq_config(data_root, train_mode="dense", epochs=2, stage1_epochs=1)
    result = run(model, TINY, config_dict=settings, saved=False)
    assert set(result["test_result"]) == {"recall@10", "ndcg@10"}
    assert len(result["epoch_train_seconds"]) == 2


@pytest.fixture(scope="module")
def tim4rec_setup(data_root, tmp_path_factory):
    settings = seq_config(
        data_root,
        MAX_ITEM_LIST_LENGTH=L,
        time_causal=True,
        hidden_size=16,
        d_state=8,
        head_dim=8,
        train_batch_size=64,
    )
    config, model, _, (train_data, _, _) = prepare_in(
        tmp_path_factory.mktemp("dense_tim4rec"), "TiM4Rec", settings
    )
    torch.manual_seed(0)
    with torch.no_grad():  # at its init the time path barely changes anything
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return config, model.eval(), train_data


def test_tim4rec_causal_dense_loss_is_mean_of_prefix_losses(tim4rec_setup):
    config, model, train_data = tim4rec_setup
    prefix, dense = _fitting_batches(config, train_data)
    with torch.no_grad():
        model.dense = False
        expected = model.calculate_loss(prefix)
        model.dense = True
        got = model.calculate_loss(dense)
        model.dense = False
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_tim4rec_min_context_l_dense_loss_is_mean_of_all_prefix_losses(tim4rec_setup):
    config, model, train_data = tim4rec_setup
    prefix, dense = _long_user_batches(config, train_data)
    with torch.no_grad():
        model.dense = False
        expected = model.calculate_loss(prefix)
        model.dense = True
        got = model.calculate_loss(dense)
        model.dense = False
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_trim_leaves_tim4rec_loss_unchanged(tim4rec_setup, monkeypatch):
    from recbole_flame.model import tim4rec as tim4rec_module

    _, model, train_data = tim4rec_setup
    batch = train_data._dataset.inter_feat[:20]
    with torch.no_grad():
        trimmed = model.calculate_loss(batch)
        monkeypatch.setattr(tim4rec_module, "trim_batch", lambda inter, *_: inter)
        full = model.calculate_loss(batch)
    assert torch.allclose(trimmed, full, atol=1e-6)


def test_tim4rec_dense_needs_the_causal_time_path(data_root, workdir):
    with pytest.raises(ConfigError, match="needs time_causal: True"):
        prepare("TiM4Rec", TINY, config_dict=seq_config(data_root, train_mode="dense"))
