"""The chunked full-sort scorer gives RecBole's evaluator's metrics.

Reference: RecBole's own ``Collector`` and ``Evaluator`` fed the model's whole score matrix
(``full_sort_predict``, the padding item and, with ``eval_exclude_history``, the input
sequence's items set to -inf as the FLAME and SASRec authors' evaluators do), batch by batch.
The trainer under test evaluates through the chunked scorer (item chunks of 97, so many chunks
and a ragged last one; and one chunk holding the catalogue) and with the scorer off.
"""

from __future__ import annotations

import pytest
import torch
from recbole.data.interaction import Interaction
from recbole.evaluator import Collector, Evaluator

from recbole_flame.inference.scoring import InnerProductScorer, Ranked, topk_hits
from recbole_flame.trainer.trainer import Trainer
from recbole_flame.utils.registry import get_trainer
from tests.conftest import CANET_SMALL, prepare_in, seq_config

# Every metric RecBole 1.2.1 computes from a ranking (rec.topk, rec.items); cut-offs up to 200
# of 1127 items, so that untrained models place positives in them. ItemCoverage, GiniIndex,
# AveragePopularity and TailPercentage also need dataset counts that RecBole's own collector
# cannot hand over (it calls .cpu() on an int and a Counter), so no run can report them.
METRICS = ["Hit", "NDCG", "Recall", "MRR", "Precision", "MAP", "ShannonEntropy"]
SETTINGS = dict(
    metrics=METRICS,
    topk=[1, 5, 10, 50, 200],
    valid_metric="NDCG@10",
    metric_decimal_place=10,
    eval_batch_size=16,  # several batches
)
MODELS = {
    "SASRec": {},
    "FLAME": {},
    "TiM4Rec": {"hidden_size": 16, "d_state": 8, "head_dim": 8, "chunk_size": 4, "n_layers": 2},
    "CANet": CANET_SMALL,
}


@pytest.fixture(scope="module", params=list(MODELS))
def prepared(request, data_root, tmp_path_factory):
    name = request.param
    config = seq_config(data_root, **SETTINGS, **MODELS[name])
    folder = tmp_path_factory.mktemp(f"scoring-{name}")
    config_obj, model, _, data = prepare_in(folder, name, config)
    model.eval()
    return name, folder, config_obj, model, data


def _recbole_reference(config, model, eval_data, exclude_history: bool) -> dict:
    collector, evaluator = Collector(config), Evaluator(config)
    n_items = eval_data._dataset.item_num
    with torch.no_grad():
        for interaction, history, positive_u, positive_i in eval_data:
            scores = model.full_sort_predict(interaction).view(-1, n_items)
            scores[:, 0] = float("-inf")
            if history is not None:
                scores[history] = float("-inf")
            if exclude_history:
                scores.scatter_(1, interaction["item_id_list"], float("-inf"))
            collector.eval_batch_collect(scores, interaction, positive_u, positive_i)
    return dict(evaluator.evaluate(collector.get_data_struct()))


def _trainer(folder, config, model):
    import os

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("exclude_history", [False, True])
@pytest.mark.parametrize("chunk", [97, 5000, None])
def test_metrics_equal_recboles_evaluator(prepared, exclude_history, chunk):
    name, folder, config, model, (_, valid_data, test_data) = prepared
    config["eval_exclude_history"] = exclude_history
    config["eval_item_chunk"] = chunk
    trainer = _trainer(folder, config, model)
    assert isinstance(trainer, Trainer)
    for data in (valid_data, test_data):
        got = dict(trainer.evaluate(data, load_best_model=False))
        want = _recbole_reference(config, model, data, exclude_history)
        extra = set(got) - set(want)  # CANet adds its routed FLOPs
        assert extra <= {"flops_ratio"} and {k: got[k] for k in want} == want, name
        assert 0 < got["hit@200"] < 1  # positives both in and out of the top k
    config["eval_exclude_history"] = False
    config["eval_item_chunk"] = 16384


def test_the_chunked_path_is_the_one_taken(prepared, monkeypatch):
    name, folder, config, model, (_, valid_data, _) = prepared
    if name == "CANet":  # not an inner-product model: RecBole's path, checked above
        return
    trainer = _trainer(folder, config, model)
    config["eval_item_chunk"] = 97
    called = []
    monkeypatch.setattr(
        model, "full_sort_predict", lambda *a: called.append(1) or pytest.fail("whole matrix")
    )
    trainer.evaluate(valid_data, load_best_model=False)
    assert not called
    config["eval_item_chunk"] = 16384


def test_a_metric_that_needs_every_score_takes_recboles_path(prepared):
    name, folder, config, model, _ = prepared
    trainer = _trainer(folder, config, model)
    served = trainer._ranking_scorer() is not None
    assert served == (name != "CANet")
    setattr(trainer.eval_collector.register, "rec.meanrank", True)  # what GAUC registers
    assert trainer._ranking_scorer() is None


def test_rec_topk_rows_equal_recboles_with_several_positives_per_row():
    """RecBole's collector on a whole score matrix against the scorer's chunked top k, with
    several positives a row, one pair given twice, masked pairs and a masked positive."""
    gen = torch.Generator().manual_seed(0)
    n_items, rows, d, k = 53, 7, 5, 6
    vectors, table = torch.randn(rows, d, generator=gen), torch.randn(n_items, d, generator=gen)
    positive_u = torch.tensor([0, 0, 0, 1, 3, 3, 4, 5, 6, 6])
    positive_i = torch.tensor([4, 9, 4, 12, 1, 50, 33, 7, 2, 3])
    history = (torch.tensor([0, 2, 2, 5]), torch.tensor([10, 3, 4, 7]))  # row 5: its positive
    scorer = InnerProductScorer(lambda batch: vectors, lambda: table, chunk=8)
    _, ids = scorer.top_k(vectors, k, pairs=history)
    got = topk_hits(ids, positive_u, positive_i, n_items)

    class _Config(dict):
        pass

    config = _Config(eval_args={"mode": "full"}, topk=[k], device="cpu", metrics=["Hit"])
    collector = Collector(config)
    scores = vectors @ table.T
    scores[:, 0] = float("-inf")
    scores[history] = float("-inf")
    collector.eval_batch_collect(scores, Interaction({}), positive_u, positive_i)
    want = collector.get_data_struct().get("rec.topk")
    assert torch.equal(got, want.long())
    assert isinstance(Ranked(ids, got), Ranked) and len(Ranked(ids, got)) == rows
