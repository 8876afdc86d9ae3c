"""Runs that stop and resume: the same weights as an uninterrupted run, Ctrl-C, NaN losses."""

from __future__ import annotations

import pytest
import torch

from recbole_flame.cli import main
from recbole_flame.quick_start import run
from recbole_flame.trainer import trainer as trainer_module
from recbole_flame.utils import CheckpointError, ConfigError
from recbole_flame.utils.checkpoint import load_checkpoint
from tests.conftest import TINY, seq_config


def _settings(data_root, tmp_path, name: str, **overrides) -> dict:
    return seq_config(
        data_root,
        checkpoint_dir=str(tmp_path / name),
        hidden_dropout_prob=0.3,  # dropout on: the random generators must be restored too
        stopping_step=50,
        **overrides,
    )


def _last_state(result: dict) -> dict:
    return load_checkpoint(result["resume_file"])


@pytest.mark.parametrize(
    ("model", "extra"),
    [
        ("SASRec", {}),
        ("SASRec", {"train_mode": "dense"}),
        ("FLAME", {"train_mode": "dense", "stage1_epochs": 1}),
    ],
)
def test_resumed_run_equals_an_uninterrupted_one(data_root, tmp_path, workdir, model, extra):
    whole = run(model, TINY, config_dict=_settings(data_root, tmp_path, "whole", epochs=2, **extra))
    first = run(model, TINY, config_dict=_settings(data_root, tmp_path, "half", epochs=1, **extra))
    assert _last_state(first)["epoch"] == 0
    resumed = run(
        model,
        TINY,
        config_dict=_settings(data_root, tmp_path, "half", epochs=2, **extra),
        resume=first["resume_file"],
    )
    a, b = _last_state(whole), _last_state(resumed)
    assert a["epoch"] == b["epoch"] == 1
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key
    assert resumed["test_result"] == whole["test_result"]
    assert [h["epoch"] for h in resumed["valid_history"]] == [1, 2]
    assert resumed["valid_history"][0]["valid_score"] == whole["valid_history"][0]["valid_score"]


def test_resume_of_a_finished_run_only_tests(data_root, tmp_path, workdir):
    done = run("SASRec", TINY, config_dict=_settings(data_root, tmp_path, "d", epochs=1))
    again = run(
        "SASRec",
        TINY,
        config_dict=_settings(data_root, tmp_path, "d", epochs=1),
        resume=done["resume_file"],
    )
    assert again["test_result"] == done["test_result"]
    assert len(again["epoch_train_seconds"]) == 1


def test_resume_with_other_settings_is_one_line(data_root, tmp_path, workdir):
    done = run("SASRec", TINY, config_dict=_settings(data_root, tmp_path, "s", epochs=1))
    with pytest.raises(ConfigError, match="learning_rate=0.01"):
        run(
            "SASRec",
            TINY,
            config_dict=_settings(data_root, tmp_path, "s", epochs=2, learning_rate=0.01),
            resume=done["resume_file"],
        )


def test_resume_from_a_best_model_file_is_one_line(data_root, tmp_path, workdir):
    done = run("SASRec", TINY, config_dict=_settings(data_root, tmp_path, "b", epochs=1))
    with pytest.raises(CheckpointError, match="-last.pth"):
        run(
            "SASRec",
            TINY,
            config_dict=_settings(data_root, tmp_path, "b", epochs=2),
            resume=done["checkpoint"],
        )


def _interrupt_at(monkeypatch, epoch: int, model_name: str | None = None) -> None:
    """Ctrl-C at the start of training epoch ``epoch`` (0-based) of ``model_name``'s trainer."""
    original = trainer_module.RunStateMixin._train_epoch

    def train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        if epoch_idx == epoch and (model_name is None or type(self.model).__name__ == model_name):
            raise KeyboardInterrupt
        return original(self, train_data, epoch_idx, *args, **kwargs)

    monkeypatch.setattr(trainer_module.RunStateMixin, "_train_epoch", train_epoch)


def _cli_args(data_root, tmp_path, **settings) -> list[str]:
    config = _settings(data_root, tmp_path, "cli", **settings)
    return [f"--{k}={v}" for k, v in config.items() if k != "load_col"] + [
        "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}"
    ]


def test_ctrl_c_saves_the_last_epoch_and_the_cli_resumes(
    data_root, tmp_path, workdir, monkeypatch, capsys
):
    _interrupt_at(monkeypatch, epoch=1)
    args = ["--model=SASRec", f"--dataset={TINY}", *_cli_args(data_root, tmp_path, epochs=3)]
    assert main(args) == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "interrupted during training; resume with --resume=" in line
    path = line.split("--resume=")[1]
    assert load_checkpoint(path)["epoch"] == 0  # epoch 1 (0-based 0) completed and saved
    monkeypatch.undo()
    assert main([*args, f"--resume={path}"]) == 0
    assert load_checkpoint(path)["epoch"] == 2


def test_interrupted_flame_stage1_resumes_when_run_again(data_root, tmp_path, workdir, monkeypatch):
    settings = dict(train_mode="dense", epochs=1, stage1_epochs=2)
    whole = run("FLAME", TINY, config_dict=_settings(data_root, tmp_path, "w", **settings))
    _interrupt_at(monkeypatch, epoch=1, model_name="SASRec")
    with pytest.raises(KeyboardInterrupt):
        run("FLAME", TINY, config_dict=_settings(data_root, tmp_path, "i", **settings))
    monkeypatch.undo()
    again = run("FLAME", TINY, config_dict=_settings(data_root, tmp_path, "i", **settings))
    assert again["stage1_source"] == "trained"
    a = load_checkpoint(whole["stage1_checkpoint"])["state_dict"]
    b = load_checkpoint(again["stage1_checkpoint"])["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again["test_result"] == whole["test_result"]


def test_nan_loss_stops_with_one_line(data_root, tmp_path, workdir, monkeypatch, capsys):
    from recbole_flame.model.sasrec import SASRec

    calls = {"n": 0}
    original = SASRec.calculate_loss

    def loss(self, interaction):
        calls["n"] += 1
        value = original(self, interaction)
        return value * float("nan") if calls["n"] >= 2 else value

    monkeypatch.setattr(SASRec, "calculate_loss", loss)
    args = ["--model=SASRec", f"--dataset={TINY}", *_cli_args(data_root, tmp_path, epochs=3)]
    assert main(args) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "training loss became nan in epoch" in line and "learning_rate" in line
    assert "enable_amp" in line and "Traceback" not in line
