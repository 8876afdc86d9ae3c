"""CANet against independent references: RecBole's transformer, per-user loops, hand counts."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from recbole.model.layers import TransformerEncoder

from recbole_flame.model.canet import route_flops
from recbole_flame.quick_start import prepare, run
from recbole_flame.utils import ConfigError
from tests.conftest import TINY, prepare_in, seq_config
from tests.test_cli import SCRIPT, _one_line_error

SMALL = dict(
    hidden_size_list=[8, 16],
    n_layers_list=[1, 2],
    embedding_size_list=[8, 16],
    n_heads=2,
    router_hidden_size=8,
    router_n_heads=2,
    router_inner_size=16,
)


def _config(data_root, **overrides) -> dict:
    return seq_config(data_root, **{**SMALL, **overrides})


@pytest.fixture(scope="module")
def canet(data_root, tmp_path_factory):
    config, model, _, (_, _, test_data) = prepare_in(
        tmp_path_factory.mktemp("canet"), "CANet", _config(data_root, dropout_prob=0.0)
    )
    torch.manual_seed(3)
    with torch.no_grad():  # weights unlike the init, residual scales unlike ~0
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return config, model.eval(), test_data


def _recbole_encoder(block, width: int, rows: list[int], eps: float) -> TransformerEncoder:
    enc = TransformerEncoder(
        n_layers=1,
        n_heads=2,
        hidden_size=width,
        inner_size=4 * width,
        hidden_dropout_prob=0.0,
        attn_dropout_prob=0.0,
        hidden_act="gelu",
        layer_norm_eps=eps,
    )
    layer = enc.layer[0]
    att, ff = layer.multi_head_attention, layer.feed_forward
    with torch.no_grad():
        # RecBole's layer has no residual scale: fold it into the branch's output Linear.
        for ours, theirs in (
            (block.query, att.query),
            (block.key, att.key),
            (block.value, att.value),
        ):
            theirs.weight.copy_(ours.weight[rows][:, :width])
            theirs.bias.copy_(ours.bias[rows])
        s = block.scale_attn
        att.dense.weight.copy_(s * block.out.weight[:width][:, rows])
        att.dense.bias.copy_(s * block.out.bias[:width])
        att.LayerNorm.weight.copy_(block.norm_attn.weight[:width])
        att.LayerNorm.bias.copy_(block.norm_attn.bias[:width])
        ff.dense_1.weight.copy_(block.ffn_in.weight[: 4 * width, :width])
        ff.dense_1.bias.copy_(block.ffn_in.bias[: 4 * width])
        s = block.scale_ffn
        ff.dense_2.weight.copy_(s * block.ffn_out.weight[:width, : 4 * width])
        ff.dense_2.bias.copy_(s * block.ffn_out.bias[:width])
        ff.LayerNorm.weight.copy_(block.norm_ffn.weight[:width])
        ff.LayerNorm.bias.copy_(block.norm_ffn.bias[:width])
    return enc.eval()


@pytest.mark.parametrize("route", [(8, 2, 8), (8, 1, 16), (16, 2, 8), (16, 2, 16)])
def test_route_equals_standalone_transformer_of_its_size(canet, route):
    config, model, _ = canet
    hidden, layers, emb = route
    # Full head width 8, two heads: a width-8 route uses dims 0-3 of each head.
    rows = [0, 1, 2, 3, 8, 9, 10, 11] if hidden == 8 else list(range(16))
    seq = torch.tensor([[4, 9, 2, 7, 0, 0, 0, 0, 0, 0], [3, 1, 5, 8, 6, 2, 9, 4, 7, 1]])
    lengths = torch.tensor([4, 10])
    with torch.no_grad():
        x = model.item_embedding.weight[seq][..., :emb] + model.position_embedding.weight[:10, :emb]
        x = (
            x @ model.input_projection.weight[:hidden, :emb].T
            + model.input_projection.bias[:hidden]
        )
        mask = model.get_attention_mask(seq)
        for block in model.blocks[:layers]:
            x = _recbole_encoder(block, hidden, rows, config["layer_norm_eps"])(x, mask)[-1]
        expected = x[torch.arange(2), lengths - 1]
        got = model.route_output(seq, lengths, route)
    assert got.shape == (2, hidden)
    assert torch.allclose(got, expected, atol=1e-5)


def test_evaluation_routes_deterministically_and_grouping_equals_per_user(canet):
    _, model, test_data = canet
    batch = next(iter(test_data))[0]
    seq, lengths = batch["item_id_list"], batch["item_length"]
    with torch.no_grad():
        logits = model.router_logits(seq, lengths)
        first = model.full_sort_predict(batch)
        second = model.full_sort_predict(batch)
        per_user = torch.cat(
            [
                model.route_scores(seq[i : i + 1], lengths[i : i + 1], model.routes[int(r)])
                for i, r in enumerate(logits.argmax(-1))
            ]
        )
    assert torch.equal(first, second)
    assert len(set(logits.argmax(-1).tolist())) > 1  # several routes in one batch
    assert torch.allclose(first, per_user, atol=1e-5)


def test_extra_right_padding_leaves_scores_unchanged(canet):
    _, model, test_data = canet
    batch = next(iter(test_data))[0]
    seq, lengths = batch["item_id_list"], batch["item_length"]
    short = seq[lengths <= 6][:, :6], lengths[lengths <= 6]
    with torch.no_grad():
        wide = model.forward(torch.nn.functional.pad(short[0], (0, 4)), short[1])
        narrow = model.forward(*short)
    assert torch.allclose(wide, narrow, atol=1e-5)


def test_flops_by_hand():
    # route h=8, l=2, e=4 over L=5 steps and N=10 items:
    # position add 5*4 = 20; input projection 2*5*4*8 = 320;
    # per block: Q, K, V, O 4 * 2*5*8*8 = 2560; scores + weighted sum 2 * 2*5*5*8 = 800;
    #   FFN 8 -> 32 -> 8: 2 * 2*5*8*32 = 5120; block = 8480;
    # output over all items 2*8*10 = 160; total 20 + 320 + 2*8480 + 160 = 17460.
    assert route_flops((8, 2, 4), 5, 10) == 17460


def test_flops_ratio_counts_the_router(canet):
    config, model, _ = canet
    from collections import Counter

    full = route_flops(model.full_route, 10, model.n_items)
    small = route_flops(model.smallest_route, 10, model.n_items)
    # router: width 8, FFN 16, one block, 2*2*2 = 8 routes: 8*10*64 + 4*100*8 + 4*10*8*16 + 2*8*8
    router = 5120 + 3200 + 5120 + 128
    assert model.router_cost == router
    counts = Counter({model.full_route: 1, model.smallest_route: 3})
    expected = (full + 3 * small + 4 * router) / 4 / full
    assert model.flops_ratio(counts) == pytest.approx(expected)


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"hidden_size_list": [8, 15]}, "hidden_size_list"),
        ({"n_layers_list": []}, "n_layers_list"),
        ({"n_layers_list": [0, 2]}, "n_layers_list"),
        ({"embedding_size_list": [8, -4]}, "embedding_size_list"),
        ({"balance_loss": "kl"}, "balance_loss"),
        ({"n_heads": 0}, "n_heads"),
        ({"gumbel_tau": 0.0}, "gumbel_tau"),
        ({"guide_topk": 0}, "guide_topk"),
    ],
)
def test_bad_routing_space_stops_at_config_time(data_root, workdir, overrides, key):
    with pytest.raises(ConfigError, match=key):
        prepare("CANet", "no-such-dataset", config_dict=_config(data_root, **overrides))


def test_dense_training_is_refused_with_the_reason(data_root, workdir):
    with pytest.raises(ConfigError, match="router reads the whole sequence"):
        prepare("CANet", TINY, config_dict=_config(data_root, train_mode="dense"))


def test_cli_bad_width_is_one_line(data_root, workdir):
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--model=CANet",
            f"--data_path={data_root}",
            f"--dataset={TINY}",
            "--hidden_size_list=[64,90]",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    line = _one_line_error(proc)
    assert "hidden_size_list" in line and "n_heads" in line


@pytest.mark.parametrize("balance", ["uniform", "batch"])
def test_end_to_end_reports_flops_ratio(data_root, workdir, balance):
    result = run("CANet", TINY, config_dict=_config(data_root, balance_loss=balance))
    test = result["test_result"]
    # flops_ratio rides along in the result; selection still reads valid_metric alone.
    assert result["best_valid_score"] == result["best_valid_result"]["ndcg@10"]
    assert {"recall@10", "ndcg@10", "flops_ratio"} <= set(test)
    assert 0 < test["flops_ratio"] <= 1.5  # the router can cost more than it saves on tiny nets
    assert "flops_ratio" in result["best_valid_result"]
    assert sum(result["route_counts"].values()) == 60  # every test user routed once


def test_router_gets_gradient_through_the_straight_through_sample(data_root, workdir):
    config, model, _, (train_data, _, _) = prepare("CANet", TINY, config_dict=_config(data_root))
    model.train()
    rec, guide, balance = model.calculate_loss(next(iter(train_data)))
    rec.backward()
    assert (
        model.router_head.weight.grad is not None and model.router_head.weight.grad.abs().sum() > 0
    )


def test_full_route_baseline_is_the_largest_route(data_root, workdir):
    result = run("CANet", TINY, config_dict=_config(data_root, fixed_route="full"))
    assert result["test_result"]["flops_ratio"] == 1.0
    assert list(result["route_counts"]) == ["h16-l2-e16"]
