"""TiM4Rec and its SSD layer against independent references: a step-by-step recurrence, a
plain convolution loop, and properties any correct implementation has (chunk size, causality,
padding)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from recbole_flame.config import Config
from recbole_flame.model.dataset_stub import DatasetStub
from recbole_flame.model.layers.ssd import GatedRMSNorm, causal_conv1d, ssd, ssd_chunked
from recbole_flame.model.tim4rec import TiM4Rec
from recbole_flame.quick_start import run
from recbole_flame.utils.errors import ConfigError
from tests.conftest import TINY, one_line_error, run_cli, seq_config

N_ITEMS = 30


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: thread start-up would dominate (float64 depthwise convolutions run one
    call per channel), and this machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_MODEL = {"hidden_size": 16, "d_state": 8, "head_dim": 8, "chunk_size": 4, "n_layers": 2}


# --- references ---------------------------------------------------------------------------
def naive_ssd(x, dt, A, B, C, D=None, h0=None):
    """``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T``, ``y_t = h_t C_t + D x_t``, one step at a
    time, head by head (head i reads group i // (heads / groups) of B and C). Returns y
    (b, l, h, p) and the last state (b, h, p, n)."""
    b, length, heads, p = x.shape
    per_group = heads // B.size(2)
    state = x.new_zeros(b, heads, p, B.size(-1)) if h0 is None else h0
    ys = []
    for t in range(length):
        y_t, new_state = [], []
        for i in range(heads):
            Bt, Ct = B[:, t, i // per_group], C[:, t, i // per_group]  # (b, n)
            h_i = torch.exp(dt[:, t, i] * A[i])[:, None, None] * state[:, i]
            h_i = h_i + (dt[:, t, i, None] * x[:, t, i])[:, :, None] * Bt[:, None, :]
            new_state.append(h_i)
            y = torch.einsum("bpn,bn->bp", h_i, Ct)
            y_t.append(y if D is None else y + D[i] * x[:, t, i])
        state = torch.stack(new_state, dim=1)
        ys.append(torch.stack(y_t, dim=1))
    return torch.stack(ys, dim=1), state


def random_ssd_inputs(length, dtype, seed=0, b=2, heads=3, p=4, n=5, groups=1):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    x = rand(b, length, heads, p)
    dt = torch.nn.functional.softplus(rand(b, length, heads))  # > 0
    A = -torch.exp(rand(heads))  # < 0
    return x, dt, A, rand(b, length, groups, n), rand(b, length, groups, n), rand(heads)


# --- the SSD layer ------------------------------------------------------------------------
@pytest.mark.parametrize("length", [1, 7, 32, 33, 70])
@pytest.mark.parametrize("chunk", [16, 32])
def test_ssd_chunked_equals_recurrence(length, chunk):
    x, dt, A, B, C, D = random_ssd_inputs(length, torch.float64, seed=length)
    h0 = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    y, last = ssd_chunked(x, dt, A, B, C, chunk, D=D, initial_states=h0, return_final_states=True)
    y_ref, last_ref = naive_ssd(x, dt, A, B, C, D, h0)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=0, atol=1e-10)

    x, dt, A, B, C, D = (t.float() for t in (x, dt, A, B, C, D))
    y32 = ssd_chunked(x, dt, A, B, C, chunk, D=D)
    ref = naive_ssd(x.double(), dt.double(), A.double(), B.double(), C.double(), D.double())[0]
    assert ((y32.double() - ref).abs().max() / ref.abs().max()).item() < 1e-4


def test_ssd_chunked_groups_of_heads():
    x, dt, A, B, C, D = random_ssd_inputs(19, torch.float64, heads=6, groups=3)
    torch.testing.assert_close(
        ssd_chunked(x, dt, A, B, C, 8, D=D), naive_ssd(x, dt, A, B, C, D)[0], rtol=0, atol=1e-10
    )


def test_ssd_chunked_gradients_equal_recurrence():
    inputs = [t.requires_grad_() for t in random_ssd_inputs(45, torch.float64, seed=3)]
    weight = torch.randn(2, 45, 3, 4, dtype=torch.float64)
    (ssd_chunked(*inputs[:5], 16, D=inputs[5]) * weight).sum().backward()
    grads = [t.grad.clone() for t in inputs]
    for t in inputs:
        t.grad = None
    (naive_ssd(*inputs)[0] * weight).sum().backward()
    for name, got, t in zip("x dt A B C D".split(), grads, inputs, strict=True):
        torch.testing.assert_close(got, t.grad, rtol=0, atol=1e-10, msg=name)


def test_ssd_dispatch_torch_on_cpu_and_kernel_refused():
    x, dt, A, B, C, D = random_ssd_inputs(9, torch.float64)
    expected = ssd_chunked(x, dt, A, B, C, 4, D=D)
    for backend in ("auto", "torch"):
        torch.testing.assert_close(ssd(x, dt, A, B, C, 4, D=D, backend=backend), expected)
    with pytest.raises(ConfigError, match="mamba-ssm") as err:
        ssd(x, dt, A, B, C, 4, D=D, backend="kernel")
    assert "ssd_backend: torch" in str(err.value) and "\n" not in str(err.value)


def test_causal_conv_equals_loop():
    x, w, bias = torch.randn(2, 5, 11), torch.randn(5, 1, 4), torch.randn(5)
    ref = torch.zeros_like(x)
    for t in range(11):
        for k in range(4):  # weight[..., -1] multiplies the current step
            if t - 3 + k >= 0:
                ref[:, :, t] += w[:, 0, k] * x[:, :, t - 3 + k]
    torch.testing.assert_close(causal_conv1d(x, w, bias), ref + bias[:, None])


def test_gated_rmsnorm_formula():
    norm = GatedRMSNorm(6, eps=1e-6)
    norm.weight.data = torch.randn(6)
    y, z = torch.randn(3, 6), torch.randn(3, 6)
    v = y * z * torch.sigmoid(z)
    ref = v / torch.sqrt((v**2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(y, z), ref)


# --- the model, built without data --------------------------------------------------------
#: The fields TiM4Rec looks for in a dataset: its item and time lists.
FIELDS = ("item_id_list", "timestamp_list")


def make_model(seed=0, **overrides) -> TiM4Rec:
    """A float64 model in eval mode with every parameter drawn N(0, 0.5^2): at the real
    initialisation the time path's effect is ~1e-12, too small for the tests to see it."""
    settings = dict(TINY_MODEL, MAX_ITEM_LIST_LENGTH=10, gpu_id="", use_gpu=False)
    settings.update(overrides)
    config = Config("TiM4Rec", "ml-100k", config_dict=settings)
    torch.manual_seed(seed)
    model = TiM4Rec(config, DatasetStub(N_ITEMS, FIELDS)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def make_batch(lengths, width, seed=0):
    """Right-padded item ids and increasing timestamps (0 on padding, as RecBole pads)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    real = torch.arange(width) < lengths[:, None]
    items = torch.randint(1, N_ITEMS, (len(lengths), width), generator=g) * real
    gaps = torch.rand(len(lengths), width, generator=g, dtype=torch.float64) * 1e5
    times = (8.8e8 + gaps.cumsum(1)) * real
    return items, lengths, times


def test_model_outputs_do_not_depend_on_chunk_size():
    model = make_model(MAX_ITEM_LIST_LENGTH=21)
    items, lengths, times = make_batch([21, 13, 5, 1], 21)
    outs = []
    for chunk in (4, 8, 64):
        for layer in model.layers:
            layer.ssd.chunk_size = chunk
        with torch.no_grad():
            outs.append(model(items, lengths, times, all_steps=True))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-10)
    torch.testing.assert_close(outs[0], outs[2], rtol=0, atol=1e-10)


@pytest.mark.parametrize("change", ["item", "timestamp"])
def test_causality(change):
    model = make_model(time_causal=True)
    items, lengths, times = make_batch([10, 10], 10)
    t = 6
    items2, times2 = items.clone(), times.clone()
    if change == "item":
        items2[:, t] = items2[:, t] % (N_ITEMS - 1) + 1
    else:
        times2[:, t] += 3e4  # still between its neighbours' timestamps' range
    with torch.no_grad():
        before = model(items, lengths, times, all_steps=True)
        after = model(items2, lengths, times2, all_steps=True)
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-12)
    assert (after[:, t:] - before[:, t:]).abs().amax(dim=-1).min() > 1e-8  # the change is seen


def test_authors_dense_time_path_is_not_causal():
    """The control for ``test_causality``: ``time_causal: False`` lets later gaps reach earlier
    steps, and the test above would catch it."""
    model = make_model(time_causal=False)
    items, lengths, times = make_batch([10], 10)
    times2 = times.clone()
    times2[:, 6] += 3e4
    with torch.no_grad():
        before = model(items, lengths, times, all_steps=True)
        after = model(items, lengths, times2, all_steps=True)
    assert (after[:, :6] - before[:, :6]).abs().max() > 1e-8


def _grow(small: TiM4Rec, big: TiM4Rec) -> None:
    """Give ``big`` (a larger L) ``small``'s parameters; the rows and columns of positions
    beyond ``small``'s L get random values, which padding must never read."""
    big_params = dict(big.named_parameters())
    with torch.no_grad():
        for name, p in small.named_parameters():
            target = big_params[name]
            target.copy_(torch.randn_like(target))
            target[tuple(slice(0, s) for s in p.shape)] = p


@pytest.mark.parametrize("time_causal", [True, False])
@pytest.mark.parametrize("p2p_residual", [True, False])
@pytest.mark.parametrize("time_padding", ["authors", "masked"])
def test_extra_right_padding(time_causal, p2p_residual, time_padding):
    """The same histories, padded to L = 8, and to L = 13 by a model built for that L with the
    same parameters for the first 8 positions; also by the L = 13 model on width 8 inputs.
    Padded timestamps are garbage on purpose: padding must not be read at all. The exception
    is the authors' (non-causal) time path, whose statistics run over all L positions: there
    the prediction depends on L but not on the input's width or its padded timestamps."""
    kwargs = dict(time_causal=time_causal, p2p_residual=p2p_residual, time_padding=time_padding)
    small = make_model(MAX_ITEM_LIST_LENGTH=8, **kwargs)
    big = make_model(seed=1, MAX_ITEM_LIST_LENGTH=13, **kwargs)
    _grow(small, big)
    items, lengths, times = make_batch([8, 5, 3, 1], 8)
    pad = 13 - 8
    items_13 = torch.nn.functional.pad(items, (0, pad))
    times_13 = torch.cat([times, torch.rand(4, pad, dtype=torch.float64) * 1e9], dim=1)
    times_13[1, 5:8] = -7.0
    with torch.no_grad():
        expected = small(items, lengths, times)
        on_13 = big(items, lengths, times)
        torch.testing.assert_close(big(items_13, lengths, times_13), on_13, rtol=0, atol=1e-10)
        if time_padding == "authors" and not time_causal:
            assert (on_13 - expected).abs().max() > 1e-6  # L's padding is in the statistics
        else:
            torch.testing.assert_close(on_13, expected, rtol=0, atol=1e-10)
        # the control: the time path is live (other gaps change the prediction)
        other_times = make_batch([8, 5, 3, 1], 8, seed=9)[2]
        assert (small(items, lengths, other_times) - expected).abs().max() > 1e-8


def test_time_aware_false_is_the_plain_ssd_stack():
    model = make_model(time_aware=False)
    assert not [n for n, _ in model.named_parameters() if "time" in n]
    items, lengths, _ = make_batch([10, 4], 10)
    out = model(items, lengths)
    assert out.shape == (2, 16) and torch.isfinite(out).all()


def test_one_layer_drops_the_ssd_residual_as_the_authors():
    """The authors' TiSSDLayer adds ``x`` back only when there is more than one layer."""
    assert all(layer.residual for layer in make_model().layers)
    model = make_model(n_layers=1)
    layer = model.layers[0]
    assert not layer.residual
    items, lengths, times = make_batch([10, 4], 10)
    mask = torch.arange(10) < lengths[:, None]
    with torch.no_grad():
        x = model.emb_layer_norm(model.item_embedding(items))
        tau, time_mask = model.time_state(times, mask), model.time_mask(mask)
        got, _ = layer(x, tau, time_mask, next_time=False)
        expected = layer.ffn(layer.layer_norm(layer.ssd(x, tau, time_mask, False)[0]))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


# --- the authors' switches ----------------------------------------------------------------
def recbole_timestamps(lengths, times, width):
    """Timestamps as RecBole's data augmentation lays them out: a row of ``width`` zeros with
    the real timestamps written over its start (right padding, 0 on padded steps)."""
    rows = []
    for i, n in enumerate(lengths.tolist()):
        rows.append([float(times[i, j]) for j in range(n)] + [0.0] * (width - n))
    return torch.tensor(rows, dtype=torch.float64)


def loop_layer_norm(x, weight, bias, eps):
    """LayerNorm over the last axis, every position counted (padding included), one row at a
    time with Python sums: mean, biased variance, then the per-position affine."""
    out = torch.empty_like(x)
    for index in itertools.product(*(range(size) for size in x.shape[:-1])):
        row = x[index].tolist()
        n = len(row)
        mean = sum(row) / n
        var = sum((v - mean) ** 2 for v in row) / n
        normed = [(v - mean) / math.sqrt(var + eps) for v in row]
        out[index] = torch.tensor(
            [v * w + b for v, w, b in zip(normed, weight, bias, strict=True)], dtype=x.dtype
        )
    return out


def authors_gaps(stamps):
    """``gap[0] = 0``, ``gap[j] = t[j] - t[j-1]`` over the whole row, padding included."""
    gaps = torch.zeros_like(stamps)
    for i in range(stamps.size(0)):
        for j in range(1, stamps.size(1)):
            gaps[i, j] = stamps[i, j] - stamps[i, j - 1]
    return gaps


def authors_forward(model, items, lengths, times, act):
    """The authors' TiM4Rec forward in eval mode (their tim4rec.py and ssd.py, the nn.Conv1d
    path), written out with ``model``'s parameters, on RecBole's layout at width L: items and
    timestamps right-padded with 0. Nothing masked: every sequence-axis map and LayerNorm
    reads all L positions."""
    L, eps = model.max_seq_length, model.emb_layer_norm.eps
    items = torch.nn.functional.pad(items, (0, L - items.size(1)))
    stamps = recbole_timestamps(lengths, times, L)
    norm = model.time_layer_norm
    tau = loop_layer_norm(authors_gaps(stamps), norm.weight.tolist(), norm.bias.tolist(), eps)
    tau = tau.unsqueeze(1).expand(-1, model.n_heads, -1)

    def linear(x, lin):
        return x @ lin.weight.T + lin.bias

    def conv(x, c):  # nn.Conv1d(padding=k - 1), then the last k - 1 outputs cut
        k = c.weight.size(-1)
        return F.conv1d(x, c.weight, c.bias, padding=k - 1, groups=x.size(1))[..., : -(k - 1)]

    x = F.layer_norm(model.item_embedding(items), (model.hidden_size,), None, None, eps)
    x = x * model.emb_layer_norm.weight + model.emb_layer_norm.bias
    for layer in model.layers:
        s = layer.ssd
        b, heads, p = x.size(0), s.n_heads, s.head_dim
        z, xbc, dt = linear(x, s.in_proj).split(
            [s.d_inner, s.d_inner + 2 * s.d_state, heads], dim=-1
        )
        xbc = act(conv(xbc.transpose(1, 2), s.conv)).transpose(1, 2)
        xs, B, C = xbc.split([s.d_inner, s.d_state, s.d_state], dim=-1)
        scale = linear(F.silu(linear(tau, s.time_scale_in)), s.time_scale_out)
        time_dt = act(conv(act(conv(tau * scale, s.time_conv1)), s.time_conv2))
        dt = F.softplus(dt * time_dt.transpose(1, 2) + s.dt_bias)  # the kernel's dt_softplus
        y = naive_ssd(
            xs.reshape(b, L, heads, p), dt, -torch.exp(s.A_log), B[:, :, None], C[:, :, None], s.D
        )[0].reshape(b, L, s.d_inner)
        v = y * F.silu(z)  # mamba-ssm's RMSNormGated, norm_before_gate=False
        y = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) * s.norm.weight
        hidden = linear(y, s.out_proj)
        if model.n_layers > 1:
            hidden = hidden + x
        ln = layer.layer_norm
        hidden = F.layer_norm(hidden, (model.hidden_size,), ln.weight, ln.bias, eps)
        f = layer.ffn
        out = linear(F.hardswish(linear(hidden, f.fc1)), f.fc2) + hidden
        x = F.layer_norm(out, (model.hidden_size,), f.layer_norm.weight, f.layer_norm.bias, 1e-12)
        gate = torch.sigmoid(linear(tau, s.time_gate))  # (b, h, L), or (b, h, 1) broadcast
        tn = s.time_norm
        tau = loop_layer_norm(
            gate * tau + (1 - gate) * time_dt, tn.weight.tolist(), tn.bias.tolist(), eps
        )
    return x[torch.arange(x.size(0)), lengths - 1]


def test_defaults_are_the_authors():
    config = Config("TiM4Rec", "ml-100k", config_dict={"gpu_id": ""})
    assert config["time_padding"] == "authors"
    assert config["ffn_norm_eps"] == 1e-12
    assert config["conv_activation"] == "hardswish"
    model = make_model(norm_eps=1e-5)  # the authors' Amazon-Beauty norm_eps
    for layer in model.layers:
        assert layer.ffn.layer_norm.eps == 1e-12 and layer.layer_norm.eps == 1e-5
        assert isinstance(layer.ssd.act, torch.nn.Hardswish)
    assert model.full_width_time


def test_authors_time_state_equals_loop_reference():
    """The first time state on a padded batch given trimmed to its longest row (6 < L = 10):
    gaps over RecBole's zero-padded timestamps, the first padded one minus the last timestamp,
    normalised over all L positions."""
    model = make_model()
    lengths = torch.tensor([6, 3, 1])
    _, _, times = make_batch(lengths.tolist(), 6)
    mask = torch.arange(6) < lengths[:, None]
    times = times.masked_fill(~mask, 123.0)  # garbage on padding: RecBole's 0 is used instead
    stamps = recbole_timestamps(lengths, times, 10)
    gaps = authors_gaps(stamps)
    assert gaps[1, 3] == -times[1, 2] and gaps[1, 4] == 0 and gaps[2, 1] == -times[2, 0]
    norm = model.time_layer_norm
    expected = loop_layer_norm(gaps, norm.weight.tolist(), norm.bias.tolist(), 1e-12)
    with torch.no_grad():
        got = model.time_state(times, mask)
    assert got.shape == (3, model.n_heads, 10)
    for h in range(model.n_heads):
        torch.testing.assert_close(got[:, h], expected, rtol=0, atol=1e-10)
    # the control: masked statistics give other values at the real steps
    masked = make_model(time_padding="masked")
    with torch.no_grad():
        other = masked.time_state(times, mask)[:, 0]
    assert (other[mask] - expected[:, :6][mask]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"p2p_residual": True, "norm_eps": 1e-5},
        {"n_layers": 1},
        {"n_layers": 3, "conv_activation": "silu"},
    ],
)
def test_authors_padding_equals_the_authors_forward(settings):
    """The whole model under ``time_padding: authors`` against :func:`authors_forward`, on
    inputs at full width and trimmed to the longest row; ``norm_eps`` 1e-5 also pins the FFN's
    1e-12, ``conv_activation: silu`` the activation of the three convolutions."""
    model = make_model(**settings)
    act = F.silu if settings.get("conv_activation") == "silu" else F.hardswish
    items, lengths, times = make_batch([7, 4, 2, 1], 10)
    with torch.no_grad():
        expected = authors_forward(model, items, lengths, times, act)
        torch.testing.assert_close(model(items, lengths, times), expected, rtol=0, atol=1e-10)
        got = model(items[:, :7], lengths, times[:, :7])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_causal_time_path_is_the_same_with_either_padding():
    """Causal, the authors' all-L statistics equal the masked ones at every real step (padding
    comes after them), which is why that case runs the masked path: force the full-width path
    and compare."""
    model = make_model(time_causal=True)
    assert not model.full_width_time
    items, lengths, times = make_batch([10, 6, 3], 10)
    real = torch.arange(10) < lengths[:, None]
    with torch.no_grad():
        fast = model(items, lengths, times, all_steps=True)
        model.full_width_time = True
        full = model(items[:, :6], lengths, times[:, :6], all_steps=True)
        full_10 = model(items, lengths, times, all_steps=True)
    torch.testing.assert_close(full[real[:, :6]], fast[:, :6][real[:, :6]], rtol=0, atol=1e-10)
    torch.testing.assert_close(full_10[real], fast[real], rtol=0, atol=1e-10)


@pytest.mark.parametrize("time_padding", ["authors", "masked"])
def test_trim_leaves_loss_unchanged(time_padding, monkeypatch):
    """``calculate_loss`` trims the batch to its longest row (7 of L = 10); the loss is the
    untrimmed one with either padding (the authors' time path rebuilds its width L)."""
    from recbole.data.interaction import Interaction

    from recbole_flame.model import tim4rec as tim4rec_module

    model = make_model(time_padding=time_padding)
    items, lengths, times = make_batch([7, 5, 2, 1], 10)
    batch = Interaction(
        {
            "item_id_list": items,
            "item_length": lengths,
            "timestamp_list": times,
            "item_id": torch.tensor([3, 9, 1, 27]),
        }
    )
    seen = []
    forward = TiM4Rec.forward

    def recording(self, item_seq, *args, **kwargs):
        seen.append(item_seq.size(1))
        return forward(self, item_seq, *args, **kwargs)

    monkeypatch.setattr(TiM4Rec, "forward", recording)
    with torch.no_grad():
        trimmed = model.calculate_loss(batch)
        monkeypatch.setattr(tim4rec_module, "trim_batch", lambda inter, *_: inter)
        full = model.calculate_loss(batch)
    assert seen == [7, 10]
    torch.testing.assert_close(trimmed, full, rtol=0, atol=1e-12)


# --- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "settings",
    [
        {"load_col": {"inter": ["user_id", "item_id"]}},
        {"TIME_FIELD": None},
        {"unload_col": {"inter": ["timestamp"]}},
    ],
)
def test_missing_time_field_stops_in_check_config(settings):
    config = Config("TiM4Rec", "ml-100k", config_dict=dict(settings, gpu_id=""))
    with pytest.raises(ConfigError) as err:
        TiM4Rec.check_config(config)
    message = str(err.value)
    assert "timestamps" in message and "TIME_FIELD" in message and "load_col" in message
    assert "\n" not in message
    TiM4Rec.check_config(Config("TiM4Rec", "ml-100k", config_dict=dict(settings, time_aware=False)))


def test_dataset_without_timestamps_stops_at_build():
    """``load_col: ~`` passes check_config; a dataset file without the column is caught when
    the model sees the dataset's fields."""

    config = Config("TiM4Rec", "ml-100k", config_dict={**TINY_MODEL, "gpu_id": ""})
    with pytest.raises(ConfigError) as err:
        TiM4Rec(config, DatasetStub(N_ITEMS, ["item_id_list"]))
    message = str(err.value)
    assert "TiM4Rec needs timestamps" in message and "TIME_FIELD" in message
    assert "load_col" in message and "\n" not in message


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"ssd_backend": "kernel"}, "mamba-ssm"),
        ({"ssd_backend": "triton"}, "ssd_backend"),
        ({"head_dim": 48}, "head_dim"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"loss_type": "BPR"}, "loss_type"),
        ({"time_padding": "left"}, "time_padding must be one of authors, masked"),
        ({"conv_activation": "relu"}, "conv_activation must be one of hardswish, silu"),
        ({"ffn_norm_eps": 0}, "ffn_norm_eps must be a positive number"),
        ({"norm_eps": "tiny"}, "norm_eps must be a positive number"),
    ],
)
def test_bad_settings_stop_with_one_line(settings, words):
    # Typed keys (ssd_backend, chunk_size) stop in Config itself, the others in check_config.
    with pytest.raises(ConfigError, match=words) as err:
        TiM4Rec.check_config(Config("TiM4Rec", "ml-100k", config_dict=dict(settings, gpu_id="")))
    assert "\n" not in str(err.value)


def test_cli_without_time_field_prints_one_line(data_root, tmp_path):
    proc = run_cli(
        "--model=TiM4Rec",
        f"--dataset={TINY}",
        f"--data_path={data_root}",
        "--load_col={'inter': ['user_id','item_id']}",
        cwd=tmp_path,
    )
    line = one_line_error(proc)
    assert "TiM4Rec needs timestamps" in line and "TIME_FIELD" in line and "load_col" in line


def test_cli_kernel_backend_without_mamba_ssm_prints_one_line(data_root, tmp_path):
    proc = run_cli(
        "--model=TiM4Rec",
        f"--dataset={TINY}",
        f"--data_path={data_root}",
        "--ssd_backend=kernel",
        cwd=tmp_path,
    )
    line = one_line_error(proc)
    assert "ssd_backend: kernel needs mamba-ssm and a CUDA device" in line


# --- end to end ---------------------------------------------------------------------------
@pytest.mark.parametrize("time_padding", ["authors", "masked"])
def test_end_to_end_with_real_timestamps(data_root, workdir, monkeypatch, time_padding):
    seen = []
    time_state = TiM4Rec.time_state

    def recording(self, timestamps, mask):
        seen.append(timestamps.max().item())
        return time_state(self, timestamps, mask)

    monkeypatch.setattr(TiM4Rec, "time_state", recording)
    config = seq_config(
        data_root, **dict(TINY_MODEL, n_layers=1), train_batch_size=1024, time_padding=time_padding
    )
    result = run("TiM4Rec", TINY, config_dict=config, saved=False)
    assert math.isfinite(result["test_result"]["ndcg@10"])
    assert seen and min(seen) > 8e8  # ml-100k's unix seconds reached every forward pass
