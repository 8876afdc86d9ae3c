"""Sequence packing (model/layers/packing.py) against the unpacked batch: layout by hand, losses
and gradients of SASRec and FLAME, dropout's kept fraction and scaling."""

from __future__ import annotations

import math

import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_flame.model.flame import FLAME
from recbole_flame.model.layers.packing import assign_rows, pack_sequences
from recbole_flame.model.sasrec import SASRec
from tests.conftest import prepare_in, seq_config

L = 12
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0}


@pytest.fixture(scope="module")
def setup(data_root, tmp_path_factory):
    config, _, _, (train_data, _, _) = prepare_in(
        tmp_path_factory.mktemp("packing"),
        "FLAME",
        seq_config(data_root, MAX_ITEM_LIST_LENGTH=L, n_layers=2, **NO_DROPOUT),
    )
    return config, train_data._dataset


def _batch(n_items: int, lengths: list[int], seed: int = 0) -> Interaction:
    """Right-padded sequences of random items with the given lengths, and random targets."""
    gen = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, n_items, (len(lengths), L), generator=gen)
    lens = torch.tensor(lengths)
    seq[torch.arange(L).unsqueeze(0) >= lens.unsqueeze(1)] = 0
    target = torch.randint(1, n_items, (len(lengths),), generator=gen)
    return Interaction({"item_id_list": seq, "item_length": lens, "item_id": target})


# Every length 1..L, some twice, in a shuffled order.
LENGTHS = [5, 1, 12, 3, 7, 2, 11, 4, 9, 6, 1, 10, 8, 12, 2, 3, 5]


def _with(config, cls, **settings):
    before = {k: config[k] for k in settings}
    config.final_config_dict.update(settings)
    try:
        torch.manual_seed(0)
        return cls(config, dataset_of(config))
    finally:
        config.final_config_dict.update(before)


_DATASETS: dict[int, object] = {}


def dataset_of(config):
    return _DATASETS[id(config)]


@pytest.fixture
def cfg(setup):
    config, dataset = setup
    _DATASETS[id(config)] = dataset
    return config


def test_rows_by_hand():
    rows, offsets, n_rows = assign_rows([3, 12, 5, 4, 9, 2], 12)
    # Decreasing order 12, 9, 5, 4, 3, 2: 12 alone; 9 + 3; 5 + 4 + 2.
    assert n_rows == 3
    assert rows == [1, 0, 2, 2, 1, 2]
    assert offsets == [9, 0, 0, 5, 0, 9]


@pytest.mark.parametrize("alignment", ["start", "end"])
def test_packed_layout_against_a_loop(alignment):
    batch = _batch(50, LENGTHS)
    seq, lens = batch["item_id_list"], batch["item_length"]
    packed = pack_sequences(seq, lens, L, alignment)
    assert packed.items.shape[0] == math.ceil(sum(LENGTHS) / L)  # the fewest rows, here
    for i, n in enumerate(LENGTHS):
        r, end = int(packed.rows[i]), int(packed.last[i])
        start = end - n + 1
        assert packed.items[r, start : end + 1].tolist() == seq[i, :n].tolist()
        want = list(range(n)) if alignment == "start" else list(range(L - n, L))
        assert packed.positions[r, start : end + 1].tolist() == want
        if n == L:  # a full-length sample has its row alone
            assert (packed.segments[r] == i).all()
    mask = packed.attention_mask()[:, 0]
    seg = packed.segments
    for r in range(seg.size(0)):
        for q in range(L):
            for k in range(L):
                kept = bool(seg[r, q] >= 0 and seg[r, q] == seg[r, k] and k <= q)
                assert float(mask[r, q, k]) == (0.0 if kept else -10000.0)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_step(unpacked, packed, batch):
    """Equal loss parts and every parameter's gradient (1e-5 of its scale)."""
    results = []
    for model in (unpacked, packed):
        model.train()
        model.zero_grad()
        loss = model.calculate_loss(batch)
        parts = loss if isinstance(loss, tuple) else (loss,)
        sum(parts).backward()
        results.append(([p.detach() for p in parts], _grads(model)))
    (loss_u, grad_u), (loss_p, grad_p) = results
    for a, b in zip(loss_p, loss_u, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a, b)
    assert grad_u.keys() == grad_p.keys() and grad_u
    overall = max(float(g.abs().max()) for g in grad_u.values())
    for name, g in grad_u.items():
        # A key bias's true gradient is 0 (the softmax ignores a shift shared by all keys): its
        # scale is rounding noise, so the floor is a thousandth of the largest gradient.
        scale = max(float(g.abs().max()), 1e-3 * overall)
        assert float((grad_p[name] - g).abs().max()) <= 1e-5 * scale, name


@pytest.mark.parametrize("alignment", ["start", "end"])
def test_sasrec_packed_step_equals_unpacked(cfg, alignment):
    unpacked = _with(cfg, SASRec, sequence_packing=False, position_alignment=alignment)
    packed = _with(cfg, SASRec, sequence_packing=True, position_alignment=alignment)
    packed.load_state_dict(unpacked.state_dict())
    assert packed.packing and not unpacked.packing
    _assert_same_step(unpacked, packed, _batch(dataset_of(cfg).item_num, LENGTHS))


@pytest.mark.parametrize("alignment", ["start", "end"])
@pytest.mark.parametrize("mixing", ["tiled", "independent"])
def test_flame_packed_step_equals_unpacked(cfg, mixing, alignment):
    settings = dict(path_mixing=mixing, position_alignment=alignment)
    unpacked = _with(cfg, FLAME, sequence_packing=False, **settings)
    torch.manual_seed(3)
    for p in unpacked.frozen.parameters():
        p.data.normal_(0, 0.05)  # a frozen network unlike the learnable one
    packed = _with(cfg, FLAME, sequence_packing=True, **settings)
    packed.load_state_dict(unpacked.state_dict())
    _assert_same_step(unpacked, packed, _batch(dataset_of(cfg).item_num, LENGTHS, seed=1))


def test_full_sort_scores_unchanged(cfg):
    unpacked = _with(cfg, SASRec, sequence_packing=False).eval()
    packed = _with(cfg, SASRec, sequence_packing=True).eval()
    packed.load_state_dict(unpacked.state_dict())
    batch = _batch(dataset_of(cfg).item_num, LENGTHS)
    with torch.no_grad():
        assert torch.allclose(
            packed.full_sort_predict(batch), unpacked.full_sort_predict(batch), atol=1e-5
        )


def _dropout_draws(model, batch) -> dict[str, list[torch.Tensor]]:
    """Inputs and outputs of every dropout module in one training forward."""
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout):

            def hook(mod, inputs, output, name=name):
                seen.setdefault(name, []).append((inputs[0].detach(), output.detach()))

            hooks.append(module.register_forward_hook(hook))
    model.train()
    with torch.no_grad():
        model.calculate_loss(batch)
    for h in hooks:
        h.remove()
    return seen


def test_dropout_keeps_the_same_fraction_with_the_same_scaling(cfg):
    """Hidden and attention dropout see the same real entries packed as unpacked (those of real
    query positions: an attention probability of an earlier key of the same sample, a hidden
    unit), keep each with probability 1 - p and scale the kept ones by 1 / (1 - p)."""
    p = 0.3
    lengths = LENGTHS * 12
    batch = _batch(dataset_of(cfg).item_num, lengths)
    seq, lens = batch["item_id_list"], batch["item_length"]
    stats = {}
    for packing in (False, True):
        if packing:
            real = pack_sequences(seq, lens, L, "start").segments >= 0
        else:
            real = torch.arange(L).unsqueeze(0) < lens.unsqueeze(1)
        model = _with(
            cfg, SASRec, sequence_packing=packing, hidden_dropout_prob=p, attn_dropout_prob=p
        )
        counts = {"attention": [0, 0], "hidden": [0, 0], "attention output": [0, 0]}
        for name, draws in _dropout_draws(model, batch).items():
            for x, y in draws:
                if "attn_dropout" in name:  # B x h x l x l: probabilities of real queries
                    kind, live = "attention", (x != 0) & real[:, None, :, None]
                else:  # B x l x d: units of real positions
                    # (an attention output is 0 where dropout took all of a query's keys)
                    kind = "attention output" if "out_dropout" in name else "hidden"
                    live = (x != 0) & real[:, :, None]
                ratio = y[live] / x[live]
                assert torch.allclose(ratio[ratio != 0], torch.tensor(1 / (1 - p)), rtol=1e-5)
                counts[kind][0] += int((ratio != 0).sum())
                counts[kind][1] += int(live.sum())
        stats[packing] = counts
    heads, layers, d = cfg["n_heads"], cfg["n_layers"], cfg["hidden_size"]
    pairs = sum(n * (n + 1) // 2 for n in lengths) * heads * layers
    units = sum(lengths) * d * (1 + layers)  # embedding, then each FFN output
    for counts in stats.values():
        assert counts["attention"][1] == pairs and counts["hidden"][1] == units
        for kept, live in counts.values():
            assert abs(kept / live - (1 - p)) < 0.01


def test_packing_is_refused_for_a_model_that_cannot_pack(data_root, workdir):
    from recbole_flame.config import Config
    from recbole_flame.utils import ConfigError

    with pytest.raises(ConfigError, match="sequence_packing: True is available for FLAME, SASRec"):
        Config(
            model="GRU4Rec",
            dataset="ml-tiny",
            config_dict=seq_config(data_root, sequence_packing=True),
        )
    assert Config(model="SASRec", dataset="ml-tiny", config_dict=seq_config(data_root))[
        "sequence_packing"
    ]
    assert not Config(model="GRU4Rec", dataset="ml-tiny", config_dict=seq_config(data_root))[
        "sequence_packing"
    ]


# --- the layout computed in the data loader ------------------------------------------------------
@pytest.mark.parametrize("model", ["SASRec", "FLAME"])
def test_a_packed_training_step_reads_nothing_back_from_the_device(model, data_root, tmp_path):
    """The loader computes the rows on the CPU; the step itself must not need a device value
    (on a GPU, each such read waits for the queue). The ``meta`` device has no data at all:
    any read of a value (``tolist``, ``item``, ``int``, a mask without a size) fails there."""
    import copy

    _, net, _, (train_data, _, _) = prepare_in(
        tmp_path, model, seq_config(data_root, MAX_ITEM_LIST_LENGTH=L, n_layers=2, **NO_DROPOUT)
    )
    assert net.packing
    batch = next(iter(train_data))
    if model == "FLAME":
        net.load_frozen(copy.deepcopy(net.learnable.state_dict()))
    net.train().to("meta")
    losses = net.calculate_loss(batch.to("meta"))
    loss = sum(losses) if isinstance(losses, tuple) else losses
    assert loss.device.type == "meta"
    loss.backward()


def test_the_loaders_layout_gives_the_same_loss_as_one_computed_in_the_step(data_root, tmp_path):
    from recbole.data.interaction import Interaction

    from recbole_flame.model.layers.packing import row_layout

    _, net, _, (train_data, _, _) = prepare_in(
        tmp_path, "SASRec", seq_config(data_root, MAX_ITEM_LIST_LENGTH=L, n_layers=2, **NO_DROPOUT)
    )
    batch = next(iter(train_data))
    expected = row_layout(batch["item_length"])
    assert batch.layout.n_rows == expected.n_rows and batch.layout.width == expected.width
    assert torch.equal(batch.layout.rows, expected.rows)
    assert batch.layout.total == int(batch["item_length"].sum())
    net.train()
    torch.manual_seed(0)
    with_layout = net.calculate_loss(batch)
    torch.manual_seed(0)
    without = net.calculate_loss(Interaction(dict(batch.interaction)))
    assert torch.equal(with_layout, without)
