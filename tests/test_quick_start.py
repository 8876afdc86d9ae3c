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


def test_directories_exist_before_recboles_racy_ensure_dir(data_root, workdir, monkeypatch):
    """RecBole's ``ensure_dir`` checks, then creates: two processes starting at once (a search's
    trials) race, and the loser's ``makedirs`` fails (FileExistsError, seen in a 2-trial search).
    Each directory it is asked for must already exist when it is called, so it never creates."""
    import os

    import recbole.trainer.trainer as recbole_trainer
    import recbole.utils.logger as recbole_logger

    from recbole_flame.quick_start import prepare

    asked: dict[str, bool] = {}

    def recording_ensure_dir(path: str) -> None:
        asked[os.path.normpath(path)] = os.path.isdir(path)  # did it exist before the check?
        os.makedirs(path, exist_ok=True)

    monkeypatch.setattr(recbole_trainer, "ensure_dir", recording_ensure_dir)
    monkeypatch.setattr(recbole_logger, "ensure_dir", recording_ensure_dir)
    checkpoints = str(workdir / "fresh" / "checkpoints")
    config = seq_config(data_root, embedding_size=16, epochs=1, checkpoint_dir=checkpoints)
    prepare("SASRec", TINY, config_dict=config)
    assert os.path.normpath(checkpoints) in asked and os.path.join("log", "SASRec") in asked
    assert all(asked.values()), asked
