"""End-to-end runs of RecBole built-in models through this package's run()."""

from __future__ import annotations

import pytest

from recbole_flame.quick_start import run
from tests.conftest import TINY, base_config, ctr_config, seq_config


def _check(result, metric):
    assert set(result) >= {
        "best_valid_score",
        "valid_score_bigger",
        "best_valid_result",
        "test_result",
    }
    value = result["test_result"][metric]
    assert 0.0 <= value <= 1.0


@pytest.mark.parametrize("model", ["SASRec", "GRU4Rec"])
def test_sequential_baselines(model, data_root, workdir):
    config = seq_config(data_root, embedding_size=16)
    _check(run(model, TINY, config_dict=config, saved=False), "ndcg@10")


def test_general_baseline_bpr(data_root, workdir):
    config = base_config(
        data_root, embedding_size=16, metrics=["Recall", "NDCG"], topk=[10], valid_metric="NDCG@10"
    )
    _check(run("BPR", TINY, config_dict=config, saved=False), "ndcg@10")


def test_context_baseline_deepfm(data_root, workdir):
    result = run(
        "DeepFM", TINY, config_dict=ctr_config(data_root, mlp_hidden_size=[16]), saved=False
    )
    _check(result, "auc")
    assert result["test_result"]["logloss"] > 0
