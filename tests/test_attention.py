"""``attention_impl``: SDPA against RecBole's own attention code, at the layer (any RecBole-style
additive mask: causal, padded, fully masked rows, FLAME's tiled and stacked masks), in full
SASRec and FLAME models, in gradients, and in distribution with attention dropout on."""

from __future__ import annotations

import copy

import pytest
import torch
from recbole.data.interaction import Interaction
from recbole.model.layers import MultiHeadAttention, TransformerLayer
from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec

from recbole_flame.config import Config
from recbole_flame.model.dataset_stub import DatasetStub
from recbole_flame.model.flame import FLAME
from recbole_flame.model.layers.attention import (
    SDPAMultiHeadAttention,
    attention_impl,
    set_attention_impl,
)
from recbole_flame.model.sasrec import SASRec
from recbole_flame.utils.errors import ConfigError

N_ITEMS = 40
ATOL = 1e-5


def _config(model: str = "SASRec", **overrides) -> Config:
    settings = {
        "MAX_ITEM_LIST_LENGTH": 12,
        "hidden_size": 32,
        "inner_size": 64,
        "n_layers": 2,
        "n_heads": 2,
        "hidden_dropout_prob": 0.0,
        "attn_dropout_prob": 0.0,
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "gpu_id": "",
        "use_gpu": False,
    }
    settings.update(overrides)
    return Config(model, "ml-100k", config_dict=settings)


def _layer(attn_dropout: float = 0.0, d: int = 32, heads: int = 2, seed: int = 0):
    """A RecBole TransformerLayer and an SDPA copy of it (the same weights)."""
    torch.manual_seed(seed)
    ref = TransformerLayer(heads, d, 2 * d, 0.0, attn_dropout, "gelu", 1e-12)
    return ref, set_attention_impl(copy.deepcopy(ref), "sdpa")


def _sequences(batch: int, length: int, seed: int = 0, empty: bool = False) -> torch.Tensor:
    """Right-padded item ids: random lengths 1..L, one full row, and with ``empty`` an all-padding
    row first (RecBole never feeds one)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[1] = length
    if empty:
        lengths[0] = 0
    items = torch.randint(1, N_ITEMS, (batch, length), generator=g)
    return items.masked_fill(torch.arange(length) >= lengths[:, None], 0)


def _recbole_mask(item_seq: torch.Tensor, bidirectional: bool = False) -> torch.Tensor:
    """RecBole's own mask (``get_attention_mask`` reads nothing but ``item_seq``)."""
    return RecBoleSASRec.get_attention_mask(None, item_seq, bidirectional=bidirectional)


def _fully_masked_rows(mask: torch.Tensor) -> torch.Tensor:
    return (mask == 0).sum(-1).eq(0)


# Masks the models build: RecBole's causal mask of non-empty right-padded sequences, and FLAME's
# tiled (k streams side by side) and stacked (streams on the batch axis) copies of it.
def _model_masks(batch: int = 6, length: int = 12) -> dict[str, torch.Tensor]:
    causal = _recbole_mask(_sequences(batch, length))
    return {
        "causal": causal,
        "bidirectional": _recbole_mask(_sequences(batch, length), bidirectional=True),
        "tiled": causal.repeat(1, 1, 2, 2),
        "tiled3": causal.repeat(1, 1, 3, 3),
        "stacked": causal.repeat(2, 1, 1, 1),
    }


# Masks with query rows that see no key at all (every score carries -10000).
def _masks_with_blind_rows(batch: int = 6, length: int = 12) -> dict[str, torch.Tensor]:
    seq = _sequences(batch, length, empty=True)
    g = torch.Generator().manual_seed(1)
    keep = torch.rand(batch, 1, length, length, generator=g) < 0.3
    keep[:, :, :3] = False
    return {
        "empty_sequence": _recbole_mask(seq),
        "empty_tiled": _recbole_mask(seq).repeat(1, 1, 2, 2),
        "left_padded": _recbole_mask(seq.flip(1)),  # leading padding: the first rows see nothing
        "random": torch.where(keep, 0.0, -10000.0),
        "all_masked": torch.full((batch, 1, length, length), -10000.0),
    }


def _masks() -> dict[str, torch.Tensor]:
    return {**_model_masks(), **_masks_with_blind_rows()}


def test_model_masks_have_no_blind_rows():
    """Why blind rows never matter: a non-empty right-padded sequence has a real item at step 0,
    which every query sees, in RecBole's mask and in FLAME's tiled and stacked ones alike."""
    for name, mask in _model_masks().items():
        assert not _fully_masked_rows(mask).any(), name
    for name, mask in _masks_with_blind_rows().items():
        assert _fully_masked_rows(mask).any(), name


@pytest.mark.parametrize("name", list(_masks()))
def test_layer_equals_recbole_for_any_additive_mask(name):
    mask = _masks()[name]
    ref, fast = _layer()
    ref.eval(), fast.eval()
    x = torch.randn(mask.size(0), mask.size(-1), 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = fast(x, mask), ref(x, mask)
    # Every row, blind ones included: both add the same -10000 to every score there and so
    # softmax the raw scores.
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


@pytest.mark.parametrize("length", [50, 200])
def test_layer_equals_recbole_at_benchmark_lengths(length):
    ref, fast = _layer(d=64)
    ref.eval(), fast.eval()
    mask = _recbole_mask(_sequences(8, length, seed=length, empty=True))
    x = torch.randn(8, length, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(fast(x, mask), ref(x, mask), atol=ATOL, rtol=0)
        tiled = mask.repeat(1, 1, 2, 2)
        x2 = torch.cat((x, x.flip(0)), dim=1)
        torch.testing.assert_close(fast(x2, tiled), ref(x2, tiled), atol=ATOL, rtol=0)


def _layer_grads(
    layer: TransformerLayer, mask: torch.Tensor, dtype=torch.float32, rows=None
) -> list:
    """Gradients of a squared error (over the query ``rows``, B x l bool, or all) w.r.t. the
    input and every parameter, in train mode."""
    layer.train()  # dropout 0: training is deterministic
    g = torch.Generator().manual_seed(4)
    x = torch.randn(mask.size(0), mask.size(-1), 32, generator=g).to(dtype)
    target = torch.randn(x.shape, generator=g).to(dtype)
    x.requires_grad_(True)
    error = (layer(x, mask.to(dtype)) - target) ** 2
    (error if rows is None else error[rows]).sum().backward()
    return [x.grad] + [p.grad for p in layer.parameters()]


def _assert_grad_close(ours: torch.Tensor, theirs: torch.Tensor, name: str) -> None:
    """Equal to 1e-5 of the gradient's scale: a parameter's gradient sums over every step of
    the batch (entries in the hundreds here), where float32 itself rounds at ~1e-5."""
    scale = max(1.0, theirs.abs().max().item())
    assert (ours - theirs).abs().max().item() <= ATOL * scale, name


@pytest.mark.parametrize("name", list(_model_masks()))
def test_layer_gradients_equal_recbole(name):
    mask = _model_masks()[name]
    ref, fast = _layer()
    names = ["input"] + [n for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, _layer_grads(ref, mask), _layer_grads(fast, mask), strict=True):
        _assert_grad_close(b, a, name)


@pytest.mark.parametrize("name", list(_masks_with_blind_rows()))
def test_gradients_equal_recbole_when_blind_rows_are_discarded(name):
    """A blind row's output is discarded wherever one occurs (a padding step: its own key is
    masked for every query too), so no gradient flows back through it, and then the gradients
    equal RecBole's. (Through a blind row that is *used*, neither is exact: each score there
    is s - 10000, which float32 holds to 2^-10, and RecBole's gradients are ~1e-4 of their scale
    off float64's; SDPA's backward, which rebuilds the probabilities from a log-sum-exp of that
    size, is up to ~3 times further off. The forward outputs still agree to 1e-5, as tested.)"""
    mask = _masks_with_blind_rows()[name]
    seen = ~_fully_masked_rows(mask).squeeze(1)
    ref, fast = _layer()
    names = ["input"] + [n for n, _ in ref.named_parameters()]
    theirs, ours = _layer_grads(ref, mask, rows=seen), _layer_grads(fast, mask, rows=seen)
    for name, a, b in zip(names, theirs, ours, strict=True):
        _assert_grad_close(b, a, name)


def test_bool_mask_falls_back_to_recbole():
    # RecBole adds a mask to the scores; SDPA reads a bool mask as keep/drop. Only the former
    # is RecBole's meaning, so a bool mask runs RecBole's code.
    ref, fast = _layer()
    ref.eval(), fast.eval()
    mask = torch.rand(3, 1, 5, 5) < 0.5
    x = torch.randn(3, 5, 32)
    with torch.no_grad():
        assert torch.equal(fast(x, mask), ref(x, mask))


# --- whole models ---------------------------------------------------------------------------
def _pair(impl: str = "sdpa", **overrides) -> tuple[SASRec, RecBoleSASRec]:
    """This package's SASRec in ``impl`` and RecBole's SASRec with the same weights."""
    config = _config(attention_impl=impl, **overrides)
    torch.manual_seed(0)
    ours = SASRec(config, DatasetStub(N_ITEMS))
    theirs = RecBoleSASRec(config, DatasetStub(N_ITEMS))
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _interaction(batch: int = 16, length: int = 12) -> dict[str, torch.Tensor]:
    seq = _sequences(batch, length)
    return {
        "item_id_list": seq,
        "item_length": (seq != 0).sum(1),
        "item_id": torch.randint(1, N_ITEMS, (seq.size(0),)),
    }


def test_state_dict_names_unchanged_and_parameters_kept():
    ours, theirs = _pair()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (name, a), (_, b) in zip(
        ours.state_dict().items(), theirs.state_dict().items(), strict=True
    ):
        assert a.shape == b.shape and torch.equal(a, b), name
    # Switching in place keeps the very parameter tensors (an optimiser may hold them).
    before = [id(p) for p in theirs.parameters()]
    set_attention_impl(theirs, "sdpa")
    assert [id(p) for p in theirs.parameters()] == before
    assert list(theirs.state_dict()) == list(ours.state_dict())
    # FLAME keeps its names too.
    flames = {
        impl: FLAME(_config("FLAME", attention_impl=impl), DatasetStub(N_ITEMS))
        for impl in ("sdpa", "recbole")
    }
    assert list(flames["sdpa"].state_dict()) == list(flames["recbole"].state_dict())
    assert attention_impl(flames["sdpa"].frozen) == "sdpa"
    assert attention_impl(flames["recbole"].learnable) == "recbole"


def test_config_default_is_auto_and_bad_values_stop():
    config = _config()
    assert config["attention_impl"] == "auto"
    model = SASRec(config, DatasetStub(N_ITEMS))
    layers = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    assert layers and all(type(m) is SDPAMultiHeadAttention for m in layers)
    assert attention_impl(model) == "auto"
    recbole = SASRec(_config(attention_impl="recbole"), DatasetStub(N_ITEMS))
    assert all(
        type(m) is MultiHeadAttention
        for m in recbole.modules()
        if isinstance(m, MultiHeadAttention)
    )
    with pytest.raises(ConfigError, match="attention_impl must be one of auto, sdpa, recbole"):
        SASRec(_config(attention_impl="flash"), DatasetStub(N_ITEMS))


@pytest.mark.parametrize("impl", ["sdpa", "auto"])
def test_sasrec_forward_and_scores_equal_recbole(impl):
    ours, theirs = _pair(impl)
    ours.eval(), theirs.eval()
    data = _interaction()
    with torch.no_grad():
        seq, lens = data["item_id_list"], data["item_length"]
        torch.testing.assert_close(ours(seq, lens), theirs(seq, lens), atol=ATOL, rtol=0)
        # Every step, padded ones included (dense training reads them all).
        slow, _ = _pair("recbole")
        slow.eval()
        all_steps = slow.encode_all(seq, lens)
        torch.testing.assert_close(ours.encode_all(seq, lens), all_steps, atol=ATOL, rtol=0)
        ours_scores = ours.full_sort_predict(data)
        torch.testing.assert_close(ours_scores, theirs.full_sort_predict(data), atol=ATOL, rtol=0)


@pytest.mark.parametrize("train_mode", ["prefix", "dense"])
def test_sasrec_loss_gradients_equal_recbole(train_mode):
    # The reference is this package's SASRec on RecBole's attention code (the dense loss is
    # this package's), built from the same seed: the same weights.
    fast, _ = _pair("sdpa", train_mode=train_mode)
    slow, _ = _pair("recbole", train_mode=train_mode)
    data = Interaction(_interaction())
    grads = []
    for model in (slow, fast):
        model.train()
        loss = model.calculate_loss(data)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=ATOL, rtol=0)
    for name, g in grads[0][1].items():
        _assert_grad_close(grads[1][1][name], g, name)


@pytest.mark.parametrize("path_mixing", ["tiled", "independent"])
def test_flame_paths_equal_recbole_attention(path_mixing):
    models = {}
    for impl in ("recbole", "sdpa"):
        torch.manual_seed(0)
        models[impl] = FLAME(
            _config("FLAME", attention_impl=impl, path_mixing=path_mixing), DatasetStub(N_ITEMS)
        ).eval()
    data = _interaction()
    seq, lens = data["item_id_list"], data["item_length"]
    with torch.no_grad():
        ref = models["recbole"].path_outputs(seq, lens, all_steps=True)
        out = models["sdpa"].path_outputs(seq, lens, all_steps=True)
    assert set(out) == {"ll", "lf", "fl", "ff"}
    for path, value in ref.items():
        torch.testing.assert_close(out[path], value, atol=ATOL, rtol=0, msg=path)


# --- attention dropout --------------------------------------------------------------------------
def _dropped_probabilities(layer: TransformerLayer, draws: int, p: float) -> tuple:
    """The attention probabilities after dropout, read off the context vectors.

    One sequence of l = d_h tokens whose inputs are unit vectors and whose value projection is
    the identity: value j is the unit vector e_j, so head 0's context at query i is row i of its
    (dropped) probability matrix. Returns (the eval-mode probabilities l x l, ``draws`` dropped
    copies draws x l x l)."""
    mha = layer.multi_head_attention
    head_size = mha.attention_head_size
    d = mha.all_head_size
    with torch.no_grad():
        mha.value.weight.copy_(torch.eye(d))
        mha.value.bias.zero_()
    x = torch.eye(head_size, d).expand(draws, -1, -1)
    mask = _recbole_mask(torch.ones(1, head_size, dtype=torch.long))
    contexts = []
    hook = mha.dense.register_forward_hook(lambda m, inp, out: contexts.append(inp[0]))
    try:
        with torch.no_grad():
            layer.eval()
            layer(x[:1], mask)
            layer.train()
            layer(x, mask)
    finally:
        hook.remove()
    probs = contexts[0][0, :, :head_size]
    return probs, contexts[1][:, :, :head_size]


def _count_sdpa_calls(monkeypatch) -> list:
    """Patch SDPA to record the ``dropout_p`` of every call; returns the record."""
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(kwargs.get("dropout_p"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    return calls


@pytest.mark.parametrize("impl", ["recbole", "sdpa"])
def test_attention_dropout_is_recbole_distribution(impl, monkeypatch):
    """Each attention probability is kept with probability 1 - p and then scaled by 1 / (1 - p),
    independently: RecBole's ``nn.Dropout`` on the probabilities. ``recbole`` is the control."""
    p, draws = 0.5, 4000
    torch.manual_seed(0)
    layer = TransformerLayer(2, 32, 64, 0.0, p, "gelu", 1e-12)
    set_attention_impl(layer, impl)
    calls = _count_sdpa_calls(monkeypatch)
    probs, dropped = _dropped_probabilities(layer, draws, p)
    assert calls == ([0.0, p] if impl == "sdpa" else [])  # eval, then train with dropout
    live = probs > 0  # causal: the upper triangle is exactly 0 in both
    assert torch.equal(live, torch.ones_like(live).tril().bool())
    kept = dropped != 0
    # Every kept entry is the probability rescaled, every other one is 0.
    scaled = (probs / (1 - p)).expand_as(dropped)
    torch.testing.assert_close(dropped[kept], scaled[kept], atol=1e-6, rtol=1e-5)
    assert not kept[:, ~live].any()
    # The keep rate of every entry is 1 - p (4.5 standard errors), and entries are independent:
    # the keep rate of a pair is (1 - p)^2.
    se = (p * (1 - p) / draws) ** 0.5
    rate = kept[:, live].float().mean(0)
    assert (rate - (1 - p)).abs().max() < 4.5 * se, rate
    pair = (kept[:, 3, 0] & kept[:, 3, 1]).float().mean()
    assert abs(pair - (1 - p) ** 2) < 4.5 * ((1 - p) ** 2 * (1 - (1 - p) ** 2) / draws) ** 0.5
    # So the expected context is the no-dropout one: an entry P is P / (1 - p) or 0, whose
    # standard deviation is P * sqrt(p / (1 - p)).
    spread = probs * (p / (1 - p)) ** 0.5 / draws**0.5
    assert ((dropped.mean(0) - probs).abs() <= 4.5 * spread).all()


def test_layer_output_mean_under_dropout_equals_recbole():
    """End to end: with attention dropout on, the mean and spread of the whole layer's output
    over many draws agree between SDPA and RecBole (within 5 standard errors)."""
    ref, fast = _layer(attn_dropout=0.5)
    ref.train(), fast.train()
    mask = _model_masks()["tiled"][2:3]  # a padded sequence, twice side by side as in FLAME
    draws = 3000
    x = torch.randn(1, mask.size(-1), 32, generator=torch.Generator().manual_seed(5))
    xs, masks = x.expand(draws, -1, -1), mask.expand(draws, -1, -1, -1)
    torch.manual_seed(1)
    with torch.no_grad():
        a, b = ref(xs, masks), fast(xs, masks)
    assert not torch.allclose(b[0], b[1])  # dropout really acts
    se = ((a.var(0) + b.var(0)) / draws).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() / se).max() < 5
    torch.testing.assert_close(b.std(0), a.std(0), atol=0.1 * a.std(0).max().item(), rtol=0.1)


def test_auto_keeps_recbole_draws_under_dropout_and_sdpa_without(monkeypatch):
    ref, fast = _layer(attn_dropout=0.5)
    set_attention_impl(fast, "auto")
    mask = _model_masks()["causal"]
    x = torch.randn(mask.size(0), mask.size(-1), 32)
    ref.train(), fast.train()
    with torch.no_grad():
        torch.manual_seed(3)
        theirs = ref(x, mask)
        torch.manual_seed(3)
        ours = fast(x, mask)
    assert torch.equal(ours, theirs)  # RecBole's code and random draws: seeded runs unchanged
    ref.eval(), fast.eval()
    calls = _count_sdpa_calls(monkeypatch)
    with torch.no_grad():
        torch.testing.assert_close(fast(x, mask), ref(x, mask), atol=ATOL, rtol=0)
    assert calls == [0.0]  # eval: SDPA, no dropout
