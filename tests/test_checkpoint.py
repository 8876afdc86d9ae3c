"""Checkpoints: plain data, weights-only loading, atomic writes, best-model testing."""

from __future__ import annotations

import argparse
import os
import pickle
import zipfile

import pytest
import torch

from recbole_flame.quick_start import prepare, run
from recbole_flame.utils import CheckpointError
from recbole_flame.utils.checkpoint import atomic_save, load_checkpoint
from tests.conftest import TINY, seq_config


def test_round_trip_under_default_weights_only(data_root, workdir):
    result = run("SASRec", TINY, config_dict=seq_config(data_root, epochs=2), saved=True)
    path = result["checkpoint"]
    assert path and os.path.isfile(path)
    # torch>=2.6 defaults to weights_only=True: a pickled Config would fail here.
    state = torch.load(path)
    assert state["config"]["model"] == "SASRec"
    assert isinstance(state["config"]["MODEL_TYPE"], str)
    # A fresh model holding the saved weights reproduces the reported test result.
    _, net, trainer, (_, _, test_data) = prepare(
        "SASRec", TINY, config_dict=seq_config(data_root, epochs=2)
    )
    net.load_state_dict(state["state_dict"])
    again = trainer.evaluate(test_data, load_best_model=False)
    assert dict(again) == pytest.approx(dict(result["test_result"]))


def test_crash_mid_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "best.pth"
    atomic_save({"state_dict": {"w": torch.ones(2)}}, path)
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        atomic_save({"state_dict": {"w": torch.zeros(2)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth"]


def test_pickled_checkpoint_is_refused(tmp_path):
    path = tmp_path / "recbole_style.pth"
    # RecBole pickles its Config object; any non-allowlisted class stands in for it.
    torch.save({"state_dict": {}, "config": argparse.Namespace(model="SASRec")}, path)
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")


def _not_checkpoints(folder):
    """Files that exist but are not this package's checkpoints, by name."""
    good = folder / "good.pth"
    atomic_save({"state_dict": {"w": torch.ones(64)}}, good)
    data = good.read_bytes()
    files = {
        "text.pth": b"root:x:0:0:root:/root:/bin/bash\n" * 5,
        "empty.pth": b"",
        "truncated.pth": data[: len(data) // 2],
        "random.pth": bytes(range(256)) * 8,
        "plain_pickle.pth": pickle.dumps({"state_dict": {"w": [1.0]}}, protocol=4),
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    with zipfile.ZipFile(folder / "zip.pth", "w") as archive:
        archive.writestr("notes.txt", "not a model")
    torch.save([torch.ones(2)], folder / "list.pth")
    torch.save({"state_dict": 5}, folder / "bad_state_dict.pth")
    torch.save({"state_dict": {"w": "not a tensor"}}, folder / "str_weights.pth")
    return sorted(p for p in folder.iterdir() if p.name != "good.pth")


def test_files_that_are_not_checkpoints_are_one_line_naming_them(tmp_path):
    for path in _not_checkpoints(tmp_path):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message, message
        assert "recbole_flame" in message and "state_dict" in message, message


def test_unsaved_run_tests_the_best_validation_weights(data_root, workdir):
    config = seq_config(data_root, epochs=4, learning_rate=0.05)
    _, net, trainer, (train_data, valid_data, _) = prepare("SASRec", TINY, config_dict=config)
    scores = []
    best_score, _ = trainer.fit(
        train_data, valid_data, saved=False, callback_fn=lambda e, s: scores.append(s)
    )
    assert best_score == max(scores)
    assert not os.path.exists(trainer.saved_model_file)
    # evaluate(load_best_model=True) restores the best epoch's weights, not the last ones.
    result = trainer.evaluate(valid_data, load_best_model=True)
    assert result["ndcg@10"] == pytest.approx(best_score)
