"""CETNet against independent references: the fusion and losses computed by hand in plain Python,
RecBole's own base models (their predict, calculate_loss and yaml defaults), parameter identity,
and the command line."""

from __future__ import annotations

import math
import os

import pytest
import torch

from recbole_flame.config import Config
from recbole_flame.model.cetnet import (
    CETNet,
    auc_score,
    base_logit,
    base_model_configs,
    base_regulariser,
    binary_entropy,
    collaborative_losses,
    context_model_names,
    ensemble_diagnostics,
    fuse,
    log_loss,
)
from recbole_flame.quick_start import prepare, run
from recbole_flame.utils import ConfigError
from tests.conftest import SCRIPT, TINY, ctr_config, one_line_error, run_cli

EPS = 1e-7
# Fixed logits for K=2 models and B=3 samples.
LOGITS = [[2.0, -1.0, 0.3], [0.5, -3.0, 0.0]]
LABELS = [1.0, 0.0, 1.0]


# --- plain-Python references ----------------------------------------------------------------
def _sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _entropy(z: float, eps: float = EPS) -> float:
    p = min(max(_sig(z), eps), 1.0 - eps)
    return -(p * math.log(p) + (1.0 - p) * math.log(1.0 - p))


def _weights(column: list[float], tau: float) -> list[float]:
    scores = [math.exp(-_entropy(z) / tau) for z in column]
    return [s / sum(scores) for s in scores]


def _bce(p: float, y: float) -> float:
    return -(y * math.log(p) + (1.0 - y) * math.log(1.0 - p))


def _hand_fused(logits: list[list[float]], tau: float, space: str) -> list[float]:
    out = []
    for b in range(len(logits[0])):
        column = [row[b] for row in logits]
        w = _weights(column, tau)
        if space == "prob":
            out.append(sum(wk * _sig(z) for wk, z in zip(w, column, strict=True)))
        else:
            out.append(_sig(sum(wk * z for wk, z in zip(w, column, strict=True))))
    return out


# --- fusion and loss as pure functions ------------------------------------------------------
@pytest.mark.parametrize("space", ["prob", "logit"])
@pytest.mark.parametrize("tau", [1.0, 0.25])
def test_fusion_equals_hand_formula(space, tau):
    fused = fuse(torch.tensor(LOGITS), tau, EPS, space)
    assert fused.prob.tolist() == pytest.approx(_hand_fused(LOGITS, tau, space), abs=1e-6)
    for b in range(3):
        expected = _weights([row[b] for row in LOGITS], tau)
        assert fused.weights[:, b].tolist() == pytest.approx(expected, abs=1e-6)


def test_lower_entropy_model_gets_larger_weight():
    # Model 0 is confident (|z| large, either sign), model 1 is near 0.5.
    for confident in (4.0, -4.0):
        w = fuse(torch.tensor([[confident], [0.2]]), 1.0, EPS).weights[:, 0]
        assert w[0] > 0.5 > w[1]
    # A lower temperature sharpens the preference.
    z = torch.tensor([[4.0], [0.2]])
    assert fuse(z, 0.1, EPS).weights[0, 0] > fuse(z, 1.0, EPS).weights[0, 0]


def test_entropy_clamp_keeps_saturated_models_finite():
    z = torch.tensor([[60.0, -60.0], [0.0, 0.0]], requires_grad=True)
    h = binary_entropy(z, 1e-6)
    p = 1e-6
    clamped = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert h[0].tolist() == pytest.approx([clamped, clamped], rel=1e-3)
    assert h[1].tolist() == pytest.approx([math.log(2)] * 2, rel=1e-6)
    fused = fuse(z, 1.0, 1e-6)
    loss = sum(collaborative_losses(z, torch.tensor([1.0, 0.0]), fused, 1.0))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("space", ["prob", "logit"])
def test_loss_parts_equal_hand_formula(space):
    alpha = 0.7
    z = torch.tensor(LOGITS)
    fused = fuse(z, 1.0, EPS, space)
    got = collaborative_losses(z, torch.tensor(LABELS), fused, alpha)
    p = _hand_fused(LOGITS, 1.0, space)
    n = len(LABELS)
    fused_loss = sum(_bce(p[b], LABELS[b]) for b in range(n)) / n
    base = sum(_bce(_sig(row[b]), LABELS[b]) for row in LOGITS for b in range(n)) / n
    collab = alpha * sum(_bce(_sig(row[b]), p[b]) for row in LOGITS for b in range(n)) / n
    assert [t.item() for t in got] == pytest.approx([fused_loss, base, collab], rel=1e-5)


def test_collab_gradient_does_not_flow_into_the_fused_target():
    alpha = 0.5
    z = torch.tensor(LOGITS, requires_grad=True)
    fused = fuse(z, 1.0, EPS)
    _, _, collab = collaborative_losses(z, torch.tensor(LABELS), fused, alpha)
    collab.backward()
    # With the target p held constant, d/dz_kb of alpha * mean_b BCE(sigmoid(z_kb), p_b) is
    # alpha * (sigmoid(z_kb) - p_b) / B; a target that let gradient through would add terms.
    p = _hand_fused(LOGITS, 1.0, "prob")
    expected = [[alpha * (_sig(zb) - p[b]) / 3 for b, zb in enumerate(row)] for row in LOGITS]
    for got_row, exp_row in zip(z.grad.tolist(), expected, strict=True):
        assert got_row == pytest.approx(exp_row, abs=1e-7)


def test_detached_fusion_weights_give_the_mixture_gradient_only():
    z = torch.tensor(LOGITS, requires_grad=True)
    fused = fuse(z, 1.0, EPS, "prob", detach_weights=True)
    fused_loss, _, _ = collaborative_losses(z, torch.tensor(LABELS), fused, 0.0)
    fused_loss.backward()
    p = _hand_fused(LOGITS, 1.0, "prob")
    for k, row in enumerate(LOGITS):
        for b, zb in enumerate(row):
            w = _weights([r[b] for r in LOGITS], 1.0)[k]
            dl_dp = (p[b] - LABELS[b]) / (p[b] * (1 - p[b])) / 3
            assert z.grad[k, b].item() == pytest.approx(dl_dp * w * _sig(zb) * (1 - _sig(zb)))
    z.grad = None
    fused_loss, _, _ = collaborative_losses(z, torch.tensor(LABELS), fuse(z, 1.0, EPS), 0.0)
    fused_loss.backward()
    assert not torch.allclose(z.grad, z.grad.new_tensor(0.0))


# --- base-model configs (no data needed) ----------------------------------------------------
def test_base_configs_come_from_each_models_recbole_yaml():
    cfg = Config(
        "CETNet",
        "ml-100k",
        config_dict={
            "base_models": ["DCNV2", "DeepFM", "DCNV2"],
            "base_embedding_sizes": [12, None, 24],
            "base_model_overrides": [None, None, {"cross_layer_num": 1}],
            "embedding_size": 8,
            "dropout_prob": 0.05,
            "gpu_id": "",
        },
    )
    dcn, deepfm, dcn2 = base_model_configs(cfg)
    # RecBole's DCNV2.yaml and DeepFM.yaml, not CETNet's or each other's.
    assert (dcn["mixed"], dcn["structure"], dcn["cross_layer_num"]) == (False, "stacked", 3)
    assert dcn["mlp_hidden_size"] == [768, 768] and dcn["reg_weight"] == 2
    assert deepfm["mlp_hidden_size"] == [128, 128, 128]
    assert [c["embedding_size"] for c in (dcn, deepfm, dcn2)] == [12, 8, 24]
    # An explicit user key reaches every base model, as in a standalone run; overrides win.
    assert dcn["dropout_prob"] == deepfm["dropout_prob"] == 0.05
    assert dcn2["cross_layer_num"] == 1 and dcn["cross_layer_num"] == 3
    # Shared keys stay CETNet's; each config is a copy the model may write to.
    assert dcn["train_batch_size"] == cfg["train_batch_size"]
    dcn["mlp_hidden_size"].append(1)
    assert dcn2["mlp_hidden_size"] == [768, 768] and "mixed" not in cfg


# --- the model on tiny data -----------------------------------------------------------------
@pytest.fixture(scope="module")
def build(data_root, tmp_path_factory):
    """Build CETNet on the tiny CTR data; returns (model, train_data, test_data)."""
    cwd = tmp_path_factory.mktemp("cetnet")

    def _build(**overrides):
        old = os.getcwd()
        os.chdir(cwd)
        try:
            config = ctr_config(data_root, seed=7, **overrides)
            _, model, _, (train_data, _, test_data) = prepare("CETNet", TINY, config_dict=config)
        finally:
            os.chdir(old)
        return model, train_data, test_data

    return _build


def _params(module: torch.nn.Module) -> set[int]:
    return {p.data_ptr() for p in module.parameters()}


@pytest.mark.parametrize("names", [["DCNV2", "DeepFM"], ["DCNV2", "DCNV2"]])
def test_base_models_share_no_parameter(build, names):
    model, _, _ = build(base_models=names, base_embedding_sizes=[8, 12])
    a, b = model.base_models
    assert [type(m).__name__ for m in (a, b)] == names
    assert _params(a).isdisjoint(_params(b))
    assert {id(p) for p in a.parameters()}.isdisjoint(id(p) for p in b.parameters())
    # Each owns its embedding table, of its own size; CETNet owns nothing else.
    assert a.token_embedding_table is not b.token_embedding_table
    assert a.token_embedding_table.embedding.weight.shape[1] == 8
    assert b.token_embedding_table.embedding.weight.shape[1] == 12
    assert _params(model) == _params(a) | _params(b)
    if names[0] == names[1]:
        # Same architecture, distinct initial draws: a real multi-embedding ensemble.
        wa = a.token_embedding_table.embedding.weight
        wb = b.token_embedding_table.embedding.weight
        assert not torch.equal(wa[:, :8], wb[:, :8])


def test_predict_is_the_fusion_of_the_base_models_own_predictions(build):
    model, _, test_data = build(base_models=["DCNV2", "DeepFM"], tau=0.5)
    model.eval()
    batch = next(iter(test_data))[0]
    with torch.no_grad():
        probs = torch.stack([m.predict(batch) for m in model.base_models])  # RecBole's own
        p = probs.clamp(EPS, 1 - EPS)
        confidence = p * p.log() + (1 - p) * (1 - p).log()  # = -H
        w = torch.exp(confidence / 0.5)
        expected = (w / w.sum(0) * probs).sum(0)
        got = model.predict(batch)
    assert got.shape == expected.shape == (len(batch),)
    assert torch.allclose(got, expected, atol=1e-6)


def test_logits_and_regularisers_match_every_allowed_recbole_model(build):
    names = list(context_model_names())
    assert {"DCNV2", "DeepFM", "xDeepFM"} <= set(names) and "SASRec" not in names
    model, train_data, _ = build(base_models=names)
    model.eval()  # no dropout, so two forward passes agree
    batch = next(iter(train_data))
    label = batch["label"]
    with torch.no_grad():
        for name, net in zip(model.base_model_names, model.base_models, strict=True):
            z = base_logit(name, net, batch)
            assert z.shape == (len(batch),), name
            assert torch.allclose(torch.sigmoid(z), net.predict(batch).reshape(-1), atol=1e-6)
            ours = torch.nn.functional.binary_cross_entropy_with_logits(z, label)
            ours = ours + base_regulariser(name, net)
            assert float(ours) == pytest.approx(float(net.calculate_loss(batch)), rel=1e-5), name


@pytest.mark.parametrize("names", [["DCNV2", "DeepFM"], ["DCNV2", "DCNV2"]])
def test_every_base_model_receives_gradient(build, names):
    model, train_data, _ = build(base_models=names)
    model.train()
    batch = next(iter(train_data))
    losses = model.calculate_loss(batch)
    assert len(losses) == 3 and all(torch.isfinite(t) for t in losses)
    sum(losses).backward()
    reached = []
    for net in model.base_models:
        emb = net.token_embedding_table.embedding.weight.grad
        assert emb is not None and emb.abs().sum() > 0
        reached.append({n for n, p in net.named_parameters() if p.grad is not None})
    # Reference: the parameters each model's own RecBole loss reaches (DCNV2 never uses its
    # first-order layer, so that one gets no gradient either way).
    model.zero_grad(set_to_none=True)
    for net, ours in zip(model.base_models, reached, strict=True):
        net.calculate_loss(batch).backward()
        assert ours == {n for n, p in net.named_parameters() if p.grad is not None}


def test_end_to_end_run_reports_auc_and_logloss(data_root, workdir):
    config = ctr_config(
        data_root,
        base_models=["DCNV2", "DeepFM"],
        base_model_overrides=[{"mlp_hidden_size": [32]}, {"mlp_hidden_size": [32]}],
    )
    result = run("CETNet", TINY, config_dict=config, saved=False)
    auc, logloss = result["test_result"]["auc"], result["test_result"]["logloss"]
    assert 0.0 <= auc <= 1.0 and logloss > 0


# --- diagnostics ----------------------------------------------------------------------------
def test_auc_and_logloss_equal_sklearn():
    from sklearn.metrics import log_loss as sk_log_loss
    from sklearn.metrics import roc_auc_score

    gen = torch.Generator().manual_seed(3)
    labels = (torch.rand(300, generator=gen) < 0.3).double().numpy()
    scores = torch.rand(300, generator=gen).double().numpy()
    scores[:60] = 0.5  # ties
    assert auc_score(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert log_loss(scores, labels) == pytest.approx(sk_log_loss(labels, scores), abs=1e-12)
    assert math.isnan(auc_score(scores, [1.0] * 300))


def test_diagnostics_equal_hand_formulas():
    from sklearn.metrics import roc_auc_score

    logits = [[2.0, -1.0, 0.3, -0.2], [0.5, -3.0, 0.0, 1.5]]
    labels = [1.0, 0.0, 1.0, 0.0]
    tau, alpha = 0.5, 0.7
    got = ensemble_diagnostics(
        torch.tensor(logits), torch.tensor(labels), ["DCNV2", "DeepFM"], tau, EPS, "prob", alpha
    )
    fused = _hand_fused(logits, tau, "prob")
    assert got["fused"]["auc"] == pytest.approx(roc_auc_score(labels, fused))
    assert got["fused"]["logloss"] == pytest.approx(
        sum(_bce(p, y) for p, y in zip(fused, labels, strict=True)) / 4
    )
    weights = [_weights([row[b] for row in logits], tau) for b in range(4)]
    collab = kl = 0.0
    assert [b["name"] for b in got["base"]] == ["DCNV2", "DeepFM"]
    for k in range(2):
        probs = [_sig(z) for z in logits[k]]
        base = got["base"][k]
        assert base["auc"] == pytest.approx(roc_auc_score(labels, probs))
        w = [weights[b][k] for b in range(4)]
        assert base["weight_mean"] == pytest.approx(sum(w) / 4)
        assert base["weight_quantiles"]["q50"] == pytest.approx(sorted(w)[1] / 2 + sorted(w)[2] / 2)
        top = sum(weights[b][k] == max(weights[b]) for b in range(4)) / 4
        assert base["top_weight_share"] == pytest.approx(top)
        # BCE(p_k, p) = H(p) + KL(p || p_k): the collaborative term and the part that pulls.
        pairs = list(zip(probs, fused, strict=True))
        collab += sum(p * _bce(q, 1.0) + (1 - p) * _bce(q, 0.0) for q, p in pairs) / 4
        kl_k = (
            sum(p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)) for q, p in pairs) / 4
        )
        assert base["kl_fused_to_model"] == pytest.approx(kl_k)
        kl += kl_k
    assert got["loss"]["collab"] == pytest.approx(alpha * collab)
    assert got["loss"]["collab_kl"] == pytest.approx(alpha * kl)
    mean = [(_sig(a) + _sig(b)) / 2 for a, b in zip(*logits, strict=True)]
    assert got["mean_of_probs"]["auc"] == pytest.approx(roc_auc_score(labels, mean))
    corr = torch.corrcoef(torch.tensor(logits, dtype=torch.float64))[0, 1].item()
    assert got["logit_correlation"]["0~1"] == pytest.approx(corr)


def test_run_reports_diagnostics_that_agree_with_recbole_and_each_model(data_root, workdir):
    from sklearn.metrics import roc_auc_score

    from recbole_flame.trainer import CETNetTrainer
    from recbole_flame.trainer.cetnet_trainer import labeled_batches

    config = ctr_config(
        data_root,
        base_models=["DCNV2", "DeepFM"],
        base_model_overrides=[{"mlp_hidden_size": [32]}, {"mlp_hidden_size": [32]}],
    )
    _, model, trainer, (train_data, valid_data, test_data) = prepare(
        "CETNet", TINY, config_dict=config
    )
    assert isinstance(trainer, CETNetTrainer)
    from recbole_flame.quick_start.quick_start import train_and_test

    result = train_and_test(trainer.config, trainer, (train_data, valid_data, test_data), False)
    diag = result["cetnet_diagnostics"]
    assert set(diag) == {"valid", "test"}
    # The fused metrics are RecBole's evaluator's (which rounds to 4 digits).
    for split, reported in (("test", result["test_result"]),):
        assert diag[split]["fused"]["auc"] == pytest.approx(reported["auc"], abs=6e-5)
        assert diag[split]["fused"]["logloss"] == pytest.approx(reported["logloss"], abs=6e-5)
    # Each base model's AUC is that of its own RecBole predict on the same rows.
    model.eval()
    with torch.no_grad():
        batches = list(labeled_batches(test_data, "cpu"))
        y = torch.cat([b["label"] for b in batches]).numpy()
        for k, net in enumerate(model.base_models):
            p = torch.cat([net.predict(b).reshape(-1) for b in batches]).numpy()
            assert diag["test"]["base"][k]["auc"] == pytest.approx(roc_auc_score(y, p))
    weights = [b["weight_mean"] for b in diag["test"]["base"]]
    assert sum(weights) == pytest.approx(1.0)
    assert diag["test"]["n"] == len(y)


# --- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("names", "culprit", "why"),
    [
        (["DCNV2", "NoSuchModel"], "NoSuchModel", "not a known model"),
        (["SASRec"], "SASRec", "sequential"),
        (["DeepFM", "BPR"], "BPR", "general"),
    ],
)
def test_bad_base_model_names_it_and_lists_the_allowed(data_root, workdir, names, culprit, why):
    with pytest.raises(ConfigError) as info:
        prepare("CETNet", TINY, config_dict=ctr_config(data_root, base_models=names))
    message = str(info.value)
    assert f"'{culprit}'" in message and why in message
    assert "DCNV2" in message and "DeepFM" in message and "\n" not in message


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"base_models": []}, "base_models"),
        ({"tau": 0}, "tau"),
        ({"fusion_space": "sum"}, "fusion_space"),
        ({"base_embedding_sizes": [8]}, "base_embedding_sizes"),
        ({"base_model_overrides": [{"epochs": 3}, None]}, "base_model_overrides"),
        ({"entropy_eps": 0.7}, "entropy_eps"),
    ],
)
def test_bad_settings_stop_before_data(data_root, workdir, overrides, key):
    with pytest.raises(ConfigError, match=key):
        CETNet.check_config(Config("CETNet", TINY, config_dict=ctr_config(data_root, **overrides)))


def test_cli_bad_base_model_is_one_line(tmp_path):
    line = one_line_error(run_cli("--model=CETNet", "--base_models=[SASRec]", cwd=tmp_path))
    assert "SASRec" in line and "DCNV2" in line
    assert SCRIPT.is_file()
