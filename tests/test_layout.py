"""The authors' data layout: end-aligned positions, history_limit, their released weights, and
ranking the history out at evaluation."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from recbole.data import create_dataset
from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec

from recbole_flame.config import Config
from recbole_flame.data import apply_history_limit
from recbole_flame.model.dataset_stub import DatasetStub
from recbole_flame.model.frozen import check_frozen_checkpoint
from recbole_flame.model.sasrec import SASRec
from recbole_flame.quick_start import prepare, run
from recbole_flame.utils import CheckpointError, ConfigError
from tests.conftest import TINY, seq_config

L = 8


def _config(data_root, **overrides) -> Config:
    return Config(
        "SASRec", TINY, config_dict=seq_config(data_root, MAX_ITEM_LIST_LENGTH=L, **overrides)
    )


def _left_pad(seq: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """The authors' layout: the same items, pushed to the end of L slots."""
    out = torch.zeros(len(seq), L, dtype=seq.dtype)
    for row, n in enumerate(lens.tolist()):
        out[row, L - n :] = seq[row, :n]
    return out


@pytest.mark.parametrize("width", [L, 5])  # full width, and a batch trimmed to its longest
def test_end_positions_equal_a_left_padded_sasrec(data_root, width):
    """``end`` on right-padded input == RecBole's SASRec (positions 0..L-1) on the same items
    left-padded, read at the last slot: the authors' layout."""
    config = _config(data_root, position_alignment="end")
    torch.manual_seed(0)
    ours = SASRec(config, DatasetStub(40)).eval()
    reference = RecBoleSASRec(config, DatasetStub(40)).eval()
    reference.load_state_dict(ours.state_dict())
    lens = torch.tensor([1, 3, 5, 2])
    seq = torch.zeros(4, width, dtype=torch.long)
    for row, n in enumerate(lens.tolist()):
        seq[row, :n] = torch.randint(1, 40, (n,))
    with torch.no_grad():
        got = ours(seq, lens)
        expected = reference(_left_pad(seq, lens), torch.full_like(lens, L))
        start = RecBoleSASRec(config, DatasetStub(40)).eval()
        start.load_state_dict(ours.state_dict())
        right_padded_recbole = start(seq, lens)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(got, right_padded_recbole, atol=1e-3)  # positions really moved


def test_start_positions_are_recbole(data_root):
    config = _config(data_root)  # position_alignment defaults to start for SASRec
    assert config["position_alignment"] == "start"
    torch.manual_seed(0)
    ours = SASRec(config, DatasetStub(40)).eval()
    reference = RecBoleSASRec(config, DatasetStub(40)).eval()
    reference.load_state_dict(ours.state_dict())
    seq = torch.tensor([[3, 4, 5, 0, 0, 0, 0, 0], [7, 1, 2, 9, 11, 12, 6, 8]])
    lens = torch.tensor([3, 8])
    with torch.no_grad():
        torch.testing.assert_close(ours(seq, lens), reference(seq, lens), rtol=0, atol=1e-6)


def test_flame_defaults_to_end_positions(data_root):
    config = Config("FLAME", TINY, config_dict=seq_config(data_root))
    assert config["position_alignment"] == "end"


def test_history_limit_keeps_each_users_last_items(data_root):
    config = _config(data_root)
    dataset = create_dataset(config)
    dropped = apply_history_limit(dataset, 7)
    raw = pd.read_csv(data_root / TINY / f"{TINY}.inter", sep="\t")
    raw.columns = [c.split(":")[0] for c in raw.columns]
    raw = raw.sort_values(["user_id", "timestamp"], kind="stable")
    expected = set()
    for user, rows in raw.groupby("user_id"):
        expected |= {(str(user), str(item)) for item in rows["item_id"].tolist()[-7:]}
    inter = dataset.inter_feat
    got = {
        (dataset.id2token("user_id", u), dataset.id2token("item_id", i))
        for u, i in zip(inter["user_id"], inter["item_id"], strict=True)
    }
    assert got == expected
    assert dropped == len(raw) - len(expected)


def test_history_limit_reaches_the_splits(data_root, workdir):
    _, _, _, (train, valid, test) = prepare(
        "SASRec", TINY, config_dict=seq_config(data_root, history_limit=6)
    )
    # 6 items per user: 3 training targets (items 2..4), then one validation and one test row.
    users = train._dataset.inter_feat["user_id"]
    assert set(torch.bincount(users)[1:].tolist()) == {3}
    assert len(test._dataset) == len(valid._dataset) == len(torch.unique(users))


@pytest.mark.parametrize("value", [0, -3, 2.5, "many"])
def test_bad_history_limit_is_one_line(data_root, workdir, value):
    with pytest.raises(ConfigError, match="history_limit"):
        prepare("SASRec", TINY, config_dict=seq_config(data_root, history_limit=value))


def test_bad_position_alignment_is_one_line(data_root, workdir):
    with pytest.raises(ConfigError, match="position_alignment"):
        prepare("SASRec", TINY, config_dict=seq_config(data_root, position_alignment="left"))


# --- the authors' released weights ---------------------------------------------------------
# Their SASRec's parameter names, written out by hand from their models/sasrec.py and
# models/modules.py, against RecBole's.
_THEIR_NAMES = {
    "pos_emb.weight": "position_embedding.weight",
    "layernorm.weight": "LayerNorm.weight",
    "layernorm.bias": "LayerNorm.bias",
    "seq_encoder.mhas.0.w_Q.weight": "trm_encoder.layer.0.multi_head_attention.query.weight",
    "seq_encoder.mhas.0.w_Q.bias": "trm_encoder.layer.0.multi_head_attention.query.bias",
    "seq_encoder.mhas.0.w_K.weight": "trm_encoder.layer.0.multi_head_attention.key.weight",
    "seq_encoder.mhas.0.w_K.bias": "trm_encoder.layer.0.multi_head_attention.key.bias",
    "seq_encoder.mhas.0.w_V.weight": "trm_encoder.layer.0.multi_head_attention.value.weight",
    "seq_encoder.mhas.0.w_V.bias": "trm_encoder.layer.0.multi_head_attention.value.bias",
    "seq_encoder.mhas.0.w.weight": "trm_encoder.layer.0.multi_head_attention.dense.weight",
    "seq_encoder.mhas.0.w.bias": "trm_encoder.layer.0.multi_head_attention.dense.bias",
    "seq_encoder.mhas.0.layernorm.weight": "trm_encoder.layer.0.multi_head_attention.LayerNorm.weight",
    "seq_encoder.mhas.0.layernorm.bias": "trm_encoder.layer.0.multi_head_attention.LayerNorm.bias",
    "seq_encoder.ffns.0.w1.weight": "trm_encoder.layer.0.feed_forward.dense_1.weight",
    "seq_encoder.ffns.0.w1.bias": "trm_encoder.layer.0.feed_forward.dense_1.bias",
    "seq_encoder.ffns.0.w2.weight": "trm_encoder.layer.0.feed_forward.dense_2.weight",
    "seq_encoder.ffns.0.w2.bias": "trm_encoder.layer.0.feed_forward.dense_2.bias",
    "seq_encoder.ffns.0.layernorm.weight": "trm_encoder.layer.0.feed_forward.LayerNorm.weight",
    "seq_encoder.ffns.0.layernorm.bias": "trm_encoder.layer.0.feed_forward.LayerNorm.bias",
}


@pytest.fixture
def authors_file(data_root, tmp_path):
    """A file in the authors' format holding a known SASRec: their item row k is the item whose
    token is "k", with one spare row beyond the dataset's items."""
    config = Config("FLAME", TINY, config_dict=seq_config(data_root))
    dataset = create_dataset(config)
    tokens = dataset.field2id_token["item_id"]
    torch.manual_seed(3)
    model = SASRec(config, dataset)
    ours = model.state_dict()
    theirs = {name: ours[key].clone() for name, key in _THEIR_NAMES.items()}
    table = torch.randn(max(int(t) for t in tokens[1:]) + 2, ours["item_embedding.weight"].size(1))
    for internal, token in enumerate(tokens):
        table[0 if internal == 0 else int(token)] = ours["item_embedding.weight"][internal]
    theirs["item_emb.weight"] = table
    path = tmp_path / "authors.pt"
    torch.save(theirs, path)
    return config, dataset, ours, str(path)


def test_authors_weights_load_as_the_same_sasrec(authors_file):
    config, dataset, ours, path = authors_file
    checkpoint = check_frozen_checkpoint(
        config, path, n_items=dataset.item_num, id_tokens=dataset.field2id_token["item_id"]
    )
    loaded = checkpoint["state_dict"]
    assert set(loaded) == set(ours)
    for key, tensor in ours.items():
        assert torch.equal(loaded[key], tensor), key


def test_authors_weights_need_end_positions(authors_file):
    config, _, _, path = authors_file
    config.final_config_dict["position_alignment"] = "start"
    with pytest.raises(CheckpointError, match="set position_alignment: end"):
        check_frozen_checkpoint(config, path)


def test_authors_weights_for_other_items_are_one_line(authors_file):
    config, dataset, _, path = authors_file
    tokens = list(dataset.field2id_token["item_id"])
    tokens[5] = "999999"
    with pytest.raises(CheckpointError, match="item '999999'.*no row"):
        check_frozen_checkpoint(config, path, n_items=len(tokens), id_tokens=tokens)


def test_flame_runs_stage2_on_the_authors_weights(authors_file, data_root, workdir):
    """Stage 2 only: the frozen network holds their weights; the run reports that network's
    own valid and test results beside FLAME's."""
    _, _, ours, path = authors_file
    result = run("FLAME", TINY, config_dict=seq_config(data_root, frozen_checkpoint=path))
    assert result["stage1_source"] == "given"
    assert set(result["stage1_test_result"]) == set(result["test_result"])
    assert result["stage1_valid_result"] is not None


def test_exclude_history_ranks_the_input_items_out(data_root, workdir):
    # eval_item_chunk ~: the score-matrix path this mixin masks (the chunked scorer masks the
    # same items itself: tests/test_scoring.py)
    config, model, trainer, (_, _, test) = prepare(
        "SASRec",
        TINY,
        config_dict=seq_config(data_root, eval_exclude_history=True, eval_item_chunk=None),
    )
    batch = next(iter(test))
    trainer.tot_item_num = test._dataset.item_num  # set by evaluate() before it scores
    _, scores, _, _ = trainer._full_sort_batch_eval(batch)
    seq = batch[0]["item_id_list"]
    for row in range(len(seq)):
        assert torch.isinf(scores[row, seq[row]]).all()
    trainer.config.final_config_dict["eval_exclude_history"] = False
    _, plain_scores, _, _ = trainer._full_sort_batch_eval(batch)
    assert torch.isfinite(plain_scores[0, seq[0][seq[0] > 0]]).all()


# --- dropout --------------------------------------------------------------------------------
def test_fast_dropout_has_dropouts_distribution():
    from torch import nn

    from recbole_flame.model.layers.fast import FastDropout, use_fast_dropout

    torch.manual_seed(0)
    x = torch.rand(400, 500) + 0.5
    for p in (0.2, 0.5):
        out = FastDropout(p)(x)
        kept = out != 0
        assert abs(kept.float().mean().item() - (1 - p)) < 0.005
        torch.testing.assert_close(out[kept], x[kept] / (1 - p))
        assert abs(out.mean().item() - x.mean().item()) < 0.01  # unbiased, as nn.Dropout
    assert torch.equal(FastDropout(0.5).eval()(x), x)
    net = use_fast_dropout(
        nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.3), nn.Sequential(nn.Dropout(0.1)))
    )
    assert [type(m).__name__ for m in net.modules()].count("FastDropout") == 2
    assert net[1].p == 0.3 and net[2][0].p == 0.1


@pytest.mark.parametrize("act", ["gelu", "swish"])
def test_fused_activation_is_recboles_function(data_root, act):
    """Our SASRec's FFN (fused activation) == RecBole's, weights and gradients (dropout off)."""
    config = _config(data_root, hidden_act=act, hidden_dropout_prob=0.0, attn_dropout_prob=0.0)
    torch.manual_seed(0)
    ours = SASRec(config, DatasetStub(40))
    reference = RecBoleSASRec(config, DatasetStub(40))
    reference.load_state_dict(ours.state_dict())
    seq = torch.tensor([[3, 4, 5, 0, 0, 0, 0, 0], [7, 1, 2, 9, 11, 12, 6, 8]])
    lens = torch.tensor([3, 8])
    a, b = ours(seq, lens), reference(seq, lens)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, p), q in zip(ours.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
