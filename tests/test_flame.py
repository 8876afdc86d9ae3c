"""FLAME against independent references: hand-computed losses, RecBole's SASRec, a naive
tiled-attention mask, and the two-stage schedule."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from recbole.model.sequential_recommender.sasrec import SASRec

from recbole_flame.config import Config
from recbole_flame.model.flame import annealed_lambda, info_nce, pair_weights
from recbole_flame.quick_start import prepare, run
from recbole_flame.utils import CheckpointError
from recbole_flame.utils.checkpoint import load_checkpoint
from tests.conftest import SCRIPT, TINY, one_line_error, seq_config


def flame_config(data_root, **overrides):
    return seq_config(data_root, n_layers=2, **overrides)


@pytest.fixture(scope="module")
def sasrec_checkpoint(data_root, tmp_path_factory):
    """A stage-1-shaped SASRec checkpoint, trained by this package on the tiny data."""
    cwd = tmp_path_factory.mktemp("sasrec")
    old = __import__("os").getcwd()
    __import__("os").chdir(cwd)
    try:
        config = flame_config(data_root, seed=42, checkpoint_dir=str(cwd / "saved"))
        return run("SASRec", TINY, config_dict=config)["checkpoint"]
    finally:
        __import__("os").chdir(old)


def _batch(model_data):
    """One evaluation batch: (item_seq, item_seq_len, interaction)."""
    interaction = next(iter(model_data))[0]
    return interaction["item_id_list"], interaction["item_length"], interaction


# --- formulas -----------------------------------------------------------------------------
def test_lambda_schedule_defaults():
    cfg = Config("FLAME", "ml-100k")
    expected = {1: 0.944, 20: 0.316, 80: 0.01, 200: 1e-5}
    for epoch, value in expected.items():
        got = annealed_lambda(epoch, cfg["lambda_0"], cfg["lambda_R"], cfg["anneal_epochs"])
        assert got == pytest.approx(value, rel=2e-3), epoch


def test_info_nce_hand_computed():
    # B=2, d=1, tau=1: z = [1, 2, 1, 0]; row i's logits are z_i * z_j with the diagonal masked.
    a = torch.tensor([[1.0], [2.0]])
    b = torch.tensor([[1.0], [0.0]])
    e = math.e
    rows = [
        -1 + math.log(e**2 + e + 1),  # z=1 vs [2, 1, 0], positive 1
        math.log(e**2 + e**2 + 1),  # z=2 vs [2, 2, 0], positive 0
        -1 + math.log(e + e**2 + 1),  # z=1 vs [1, 2, 0], positive 1
        math.log(3),  # z=0 vs [0, 0, 0], positive 0
    ]
    assert info_nce(a, b, tau=1.0, normalize=False).item() == pytest.approx(sum(rows) / 4)
    # tau divides every logit.
    rows_tau = [
        -0.5 + math.log(e**1 + e**0.5 + 1),
        math.log(2 * e**1 + 1),
        -0.5 + math.log(e**0.5 + e**1 + 1),
        math.log(3),
    ]
    assert info_nce(a, b, tau=2.0, normalize=False).item() == pytest.approx(sum(rows_tau) / 4)


def test_info_nce_normalized_ignores_scale():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    base = info_nce(a, b, 0.5, normalize=True)
    assert info_nce(7 * a, 0.1 * b, 0.5, normalize=True).item() == pytest.approx(base.item())
    assert info_nce(7 * a, 0.1 * b, 0.5, normalize=False).item() != pytest.approx(base.item())


def test_pair_weights_favour_less_aligned_pairs():
    one = torch.ones(2, 1)
    pairs = [(one, one), (one, 3 * one)]  # mean dot products 1 and 3
    w = pair_weights(pairs, detach=False)
    z = math.exp(-1) + math.exp(-3)
    assert w.tolist() == pytest.approx([math.exp(-1) / z, math.exp(-3) / z])


# --- the model against RecBole's SASRec and a naive tiled attention -----------------------
@pytest.fixture
def flame_parts(data_root, workdir, sasrec_checkpoint):
    def build(**overrides):
        config = flame_config(data_root, frozen_checkpoint=sasrec_checkpoint, **overrides)
        cfg, model, trainer, data = prepare("FLAME", TINY, config_dict=config)
        trainer.load_frozen(sasrec_checkpoint, data[0]._dataset)
        return cfg, model, trainer, data

    return build


def test_full_sort_equals_recbole_sasrec_with_learnable_weights(flame_parts):
    cfg, model, _, (train_data, _, test_data) = flame_parts()
    reference = SASRec(cfg, train_data._dataset)
    reference.load_state_dict(model.learnable.state_dict())
    model.eval(), reference.eval()
    _, _, interaction = _batch(test_data)
    ours = model.full_sort_predict(interaction)
    theirs = reference.full_sort_predict(interaction)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)


def test_independent_paths_equal_each_network_alone(flame_parts):
    _, model, _, (_, _, test_data) = flame_parts(path_mixing="independent")
    model.eval()
    seq, lens, _ = _batch(test_data)
    with torch.no_grad():
        out = model.path_outputs(seq, lens)
        assert torch.allclose(out["ff"], model.frozen(seq, lens), atol=1e-6)
        assert torch.allclose(out["ll"], model.learnable(seq, lens), atol=1e-6)


def _naive_tiled_mask(item_seq: torch.Tensor, k: int) -> torch.Tensor:
    """Additive mask for k streams of length L side by side: query (s, i) sees key (t, j) iff
    j <= i and position j is a real item, whatever the streams s and t."""
    batch, length = item_seq.shape
    mask = torch.full((batch, 1, k * length, k * length), -10000.0)
    for b in range(batch):
        for q in range(k * length):
            for key in range(k * length):
                i, j = q % length, key % length
                if j <= i and item_seq[b, j] != 0:
                    mask[b, 0, q, key] = 0.0
    return mask


def test_tiled_paths_equal_a_naive_tiled_attention(flame_parts):
    _, model, _, (_, _, test_data) = flame_parts(path_mixing="tiled")
    model.eval()
    seq, lens, _ = _batch(test_data)
    seq, lens = seq[:6], lens[:6]
    length = seq.size(1)
    with torch.no_grad():
        out = model.path_outputs(seq, lens)
        mask = _naive_tiled_mask(seq, 2)
        streams = torch.cat((model.learnable.embed(seq, lens), model.frozen.embed(seq, lens)), 1)
        rows = torch.arange(len(seq))
        for encoder_net, first, second in (
            (model.learnable, "ll", "fl"),
            (model.frozen, "lf", "ff"),
        ):
            hidden = encoder_net.trm_encoder(streams, mask, output_all_encoded_layers=False)[-1]
            assert torch.allclose(out[first], hidden[rows, lens - 1], atol=1e-5)
            assert torch.allclose(out[second], hidden[rows, length + lens - 1], atol=1e-5)
        # Tiling really mixes the streams: ll is not the learnable network alone.
        assert not torch.allclose(out["ll"], model.learnable(seq, lens), atol=1e-4)


def test_per_block_paths_follow_their_labels(flame_parts):
    _, model, _, (_, _, test_data) = flame_parts(
        path_mixing="independent", module_split="per_block"
    )
    model.eval()
    assert model.n_modules == 3 and len(model.sample_paths()) == 8
    seq, lens, _ = _batch(test_data)
    mask = model.get_attention_mask(seq)
    nets = {"l": model.learnable, "f": model.frozen}
    with torch.no_grad():
        out = model.path_outputs(seq, lens)
        for label in ("lfl", "fll", "ffl"):
            hidden = nets[label[0]].embed(seq, lens)
            for block, net in enumerate(label[1:]):
                hidden = nets[net].trm_encoder.layer[block](hidden, mask)
            expected = hidden[torch.arange(len(seq)), lens - 1]
            assert torch.allclose(out[label], expected, atol=1e-6), label


def test_n_paths_samples_that_many_distinct_paths(flame_parts):
    _, model, _, (train_data, _, _) = flame_parts(module_split="per_block", n_paths=3)
    model.train()
    paths = model.sample_paths()
    assert len(paths) == 3 == len(set(paths))
    batch = next(iter(train_data))
    rec, cl = model.calculate_loss(batch)
    assert torch.isfinite(rec) and torch.isfinite(cl) and cl.item() > 0


# --- training -----------------------------------------------------------------------------
def test_alignment_stats_match_a_per_pair_reference(flame_parts):
    """The per-pair statistics stage 2 logs are the pair weights and InfoNCE values that the
    alignment loss is made of, each recomputed here pair by pair from the path outputs."""
    _, model, _, (_, _, test_data) = flame_parts(
        hidden_dropout_prob=0.0, attn_dropout_prob=0.0, train_batch_size=4096
    )
    model.train()
    seq, lens, _ = _batch(test_data)
    with torch.no_grad():
        loss = model.alignment_loss(seq, lens)
        out = model.path_outputs(seq, lens)
    stats = model.pop_alignment_stats()
    labels = list(out)
    expected_loss = 0.0
    raw = {}
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            raw[f"{a}-{b}"] = -(out[a] * out[b]).sum(-1).mean().item()
    denominator = sum(math.exp(v) for v in raw.values())
    for pair, score in raw.items():
        a, b = pair.split("-")
        weight = math.exp(score) / denominator
        nce = info_nce(out[a], out[b], model.tau, model.cl_normalize).item()
        assert stats["weight"][pair] == pytest.approx(weight, rel=1e-4)
        assert stats["info_nce"][pair] == pytest.approx(nce, rel=1e-4)
        assert stats["inner"][pair] == pytest.approx(-score, rel=1e-4, abs=1e-5)
        expected_loss += weight * nce
    assert loss.item() == pytest.approx(expected_loss, rel=1e-4)
    for path, value in out.items():
        assert stats["norm"][path] == pytest.approx(value.norm(dim=1).mean().item(), rel=1e-5)
    assert stats["lambda_r"]["value"] == model.lambda_r
    assert set(model.pop_alignment_stats()) == {"lambda_r"}  # reset after reading
    model.eval()
    with torch.no_grad():
        model.alignment_loss(seq, lens)
    assert set(model.pop_alignment_stats()) == {"lambda_r"}  # only training steps count


def test_stage2_changes_only_the_learnable_network(flame_parts, sasrec_checkpoint):
    _, model, trainer, (train_data, valid_data, _) = flame_parts(epochs=2)
    before = {k: v.clone() for k, v in model.learnable.state_dict().items()}
    trainer.fit(train_data, valid_data, saved=False)
    frozen_ref = load_checkpoint(sasrec_checkpoint)["state_dict"]
    for key, value in model.frozen.state_dict().items():
        assert torch.equal(value, frozen_ref[key]), key
    changed = [k for k, v in model.learnable.state_dict().items() if not torch.equal(v, before[k])]
    assert (
        "item_embedding.weight" in changed
        and "trm_encoder.layer.0.feed_forward.dense_1.weight" in changed
    )
    assert all(p.grad is None for p in model.frozen.parameters())
    # lambda follows the trainer's epochs, counted from 1.
    assert model.lambda_r == pytest.approx(annealed_lambda(2, 1.0, 1e-5, 200))
    # Each learning-curve point carries the alignment's parts of the epochs before it.
    for point, epoch in zip(trainer.valid_history, (1, 2), strict=True):
        align = point["alignment"]
        assert align["lambda_r"]["value"] == pytest.approx(annealed_lambda(epoch, 1.0, 1e-5, 200))
        assert sum(align["weight"].values()) == pytest.approx(1.0, abs=1e-5)
        assert len(align["weight"]) == len(align["info_nce"]) == 6 and len(align["norm"]) == 4


def test_two_stages_end_to_end_and_stage1_cache(data_root, workdir):
    config = flame_config(data_root, epochs=2)
    first = run("FLAME", TINY, config_dict=config)
    assert first["stage1_source"] == "trained"
    assert first["stage1_checkpoint"] and first["checkpoint"]
    assert 0 <= first["test_result"]["ndcg@10"] <= 1
    second = run("FLAME", TINY, config_dict=dict(config, tau=0.5))  # a stage-2-only change
    assert second["stage1_source"] == "cache"
    assert second["stage1_checkpoint"] == first["stage1_checkpoint"]
    third = run("FLAME", TINY, config_dict=config)
    assert third["test_result"] == first["test_result"]  # cached stage 1 changes nothing
    # Stage 1 is this package's SASRec on the same pipeline with the FLAME config's settings
    # (FLAME's yaml sets position_alignment: end, which a plain SASRec must be given).
    sasrec = run(
        "SASRec", TINY, config_dict=dict(config, seed=42, position_alignment="end"), saved=False
    )
    assert first["stage1_valid_result"] == dict(sasrec["best_valid_result"])
    # The FLAME run carries the frozen SASRec's own test result: that standalone run's.
    assert first["stage1_test_result"] == dict(sasrec["test_result"])
    assert first["stage1_best_epoch"] == sasrec["best_epoch"]
    assert first["best_epoch"] in (1, 2) and len(first["valid_history"]) == 2
    # The convergence ratio, by hand from the two learning curves.
    target = first["stage1_valid_result"]["ndcg@10"]
    reached = [h["epoch"] for h in first["valid_history"] if h["valid_score"] >= target]
    stage1_best = first["stage1_learning_curve"]["best_epoch"]
    assert first["stage1_best_epoch"] == stage1_best
    assert first["stage2_epoch_reaching_stage1_best"] == (reached[0] if reached else None)
    assert first["convergence_ratio"] == (stage1_best / reached[0] if reached else None)


def test_stage1_cache_written_before_later_keys_is_reused(data_root, workdir):
    """A cache written by an earlier version (its stored key lacks dense_windows and holds
    attention_impl) is reused; one whose stored settings really differ is not."""
    from pathlib import Path

    from recbole_flame.utils.checkpoint import atomic_save

    config = flame_config(data_root, epochs=1)
    first = run("FLAME", TINY, config_dict=config, saved=False)
    current = Path(first["stage1_checkpoint"])
    state = load_checkpoint(current)
    assert state["stage1_key"]["dense_windows"] == "all"
    older = dict(state["stage1_key"], attention_impl="recbole")
    del older["dense_windows"]
    other = dict(older, learning_rate=0.5)
    atomic_save(dict(state, stage1_key=other), current.with_name("SASRec-x-differs.pth"))
    atomic_save(dict(state, stage1_key=older), current.with_name(f"SASRec-{TINY}-older.pth"))
    atomic_save(dict(state, stage1_key=other), current.with_name(f"SASRec-{TINY}-other.pth"))
    current.unlink()
    again = run("FLAME", TINY, config_dict=config, saved=False)
    assert again["stage1_source"] == "cache"
    assert again["stage1_checkpoint"] == str(current.with_name(f"SASRec-{TINY}-older.pth"))
    assert again["test_result"] == first["test_result"]
    current.with_name(f"SASRec-{TINY}-older.pth").unlink()
    third = run("FLAME", TINY, config_dict=config, saved=False)
    assert third["stage1_source"] == "trained" and third["stage1_checkpoint"] == str(current)


def test_epochs_0_scores_the_given_frozen_network(data_root, workdir, sasrec_checkpoint):
    """``epochs: 0`` with a frozen checkpoint trains nothing and reports the frozen network's own
    test result (the README's command for the authors' weights): RecBole's SASRec evaluator
    on the same checkpoint gives the same numbers."""
    config = flame_config(data_root, seed=42, frozen_checkpoint=sasrec_checkpoint, epochs=0)
    result = run("FLAME", TINY, config_dict=config, saved=False)
    _, _, trainer, (_, _, test_data) = prepare(
        "SASRec", TINY, config_dict=flame_config(data_root, seed=42)
    )
    expected = trainer.evaluate(test_data, load_best_model=True, model_file=sasrec_checkpoint)
    assert result["stage1_test_result"] == pytest.approx(dict(expected))


def test_frozen_checkpoint_that_does_not_fit(data_root, workdir, sasrec_checkpoint):
    config = flame_config(data_root, hidden_size=32, frozen_checkpoint=sasrec_checkpoint)
    with pytest.raises(CheckpointError) as info:
        run("FLAME", TINY, config_dict=config, saved=False)
    assert sasrec_checkpoint in str(info.value) and "item_embedding.weight" in str(info.value)


def test_missing_frozen_checkpoint_is_one_line(data_root, tmp_path):
    missing = tmp_path / "nope.pth"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--model=FLAME",
            "--dataset=ml-100k",
            f"--frozen_checkpoint={missing}",
            "--epochs=1",
            "--gpu_id=",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = one_line_error(proc)
    assert str(missing) in line and "frozen_checkpoint" in line


def test_every_flame_key_is_placed_on_one_side_of_the_stage1_key():
    """The stage-1 cache lists FLAME's stage-2 keys itself, not from FLAME's rule table: a new
    FLAME key fails here until it is put in that list (it does not change stage 1) or below
    (it does, and stays in the key)."""
    from recbole_flame.model.flame import KEY_RULES
    from recbole_flame.trainer.stage1_cache import STAGE2_KEYS

    changes_stage1 = {"loss_type"}  # a common key FLAME narrows: stage 1 trains with it
    assert set(KEY_RULES) == STAGE2_KEYS | changes_stage1


def test_stage1_cache_key_leaves_out_the_same_keys_as_before_the_one_home_move():
    """The stage-1 key is built from the package's one list of keys no run learns from plus
    FLAME's stage-2 keys; it must leave out exactly what the committed caches were keyed
    without (written out here), or every cached stage 1 of hours would be trained again. Keys
    added since are left out too when, like the distributed-training keys, no run learns from
    them and no committed cache's key holds them."""
    from recbole_flame.trainer.stage1_cache import NOT_STAGE1

    written_without = set(
        """
        path_mixing module_split n_paths tau cl_normalize detach_pair_weights frozen_dropout
        lambda_0 lambda_R anneal_epochs frozen_checkpoint stage1_cache_dir stage1_epochs
        attention_impl epochs model data_path checkpoint_dir gpu_id use_gpu device state
        show_progress worker log_wandb wandb_project eval_batch_size single_spec local_rank
        config_files save_dataset save_dataloaders dataset_save_path dataloaders_save_path
        """.split()
    )
    added_since = {
        "nproc",
        "world_size",
        "offset",
        "ip",
        "port",
        "ddp_backend",
        "ddp_timeout",
        "eval_item_chunk",  # how full-sort scores are computed, not what they are
        "prefix_loader",  # how the same prefix batches are built
    }
    assert written_without | added_since == NOT_STAGE1
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    caches = [
        path
        for path in results.rglob("SASRec-*.pth")
        if path.parent.name in ("stage1", "flame_stage1")  # committed stage-1 caches
    ]
    assert caches, f"no committed stage-1 cache under {results}"
    for cache in caches:
        assert not added_since & set(load_checkpoint(cache)["stage1_key"]), cache
