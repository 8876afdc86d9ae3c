"""What a run says about its own training: an epoch of very few steps (every train mode), and a
Ctrl-C before anything was saved (how far it got, and that there is nothing to resume)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from recbole_flame.cli import main
from recbole_flame.quick_start import prepare, run
from tests.conftest import TINY, base_config, seq_config

L = 10  # MAX_ITEM_LIST_LENGTH of seq_config


def _train_targets(data_root) -> pd.Series:
    """Each user's training targets under leave-one-out: n interactions give n - 1 prefix
    targets, the last two of which are validation and test."""
    inter = pd.read_csv(data_root / TINY / f"{TINY}.inter", sep="\t")
    return inter.groupby("user_id:token").size() - 3


def _few_steps(capsys) -> list[str]:
    """The warning lines of the run's console log (each run replaces the logging handlers, so
    the log is read where RecBole's console handler writes it)."""
    err = capsys.readouterr().err.splitlines()
    return [x for x in err if "WARNING" in x and "an epoch has only" in x]


@pytest.mark.parametrize(
    "mode, extra, unit",
    [
        ("prefix, packed", {}, "prefix rows"),
        ("prefix", {"sequence_packing": False}, "prefix rows"),
        ("dense", {"train_mode": "dense"}, "windows"),
    ],
)
def test_an_epoch_of_few_steps_warns_in_every_train_mode(
    data_root, workdir, capsys, mode, extra, unit
):
    targets = _train_targets(data_root)
    # a prefix row per target; dense windows cover L targets each, so ceil(m / L) per user
    rows = int(targets.sum()) if unit == "prefix rows" else int((-(-targets // L)).sum())
    batch = 1024
    steps = math.ceil(rows / batch)
    assert steps < 10
    prepare("SASRec", TINY, config_dict=seq_config(data_root, train_batch_size=batch, **extra))
    (line,) = _few_steps(capsys)
    plural = "s" if steps != 1 else ""
    assert f"an epoch has only {steps} training step{plural} ({rows} {unit}, " in line
    assert f"train_batch_size {batch}, train_mode {mode.split(',')[0]}" in line
    assert ("sequence packing on" in line) == ("packed" in mode)
    suggested = int(line.split("set train_batch_size to ")[1].split()[0])
    assert math.ceil(rows / suggested) >= 10  # the batch size it suggests does give 10 steps


def test_a_model_without_train_mode_warns_too(data_root, workdir, capsys):
    # BPR: one row per training interaction (RecBole's 0.8 / 0.1 / 0.1 random split)
    prepare("BPR", TINY, config_dict=base_config(data_root, train_batch_size=4096))
    (line,) = _few_steps(capsys)
    assert "an epoch has only 2 training steps" in line and "BPR takes no train_mode" in line


def test_enough_steps_no_warning(data_root, workdir, capsys):
    targets = _train_targets(data_root)
    batch = int(targets.sum()) // 10  # exactly 10 steps or a little more
    assert math.ceil(targets.sum() / batch) >= 10
    settings = seq_config(data_root, train_batch_size=batch, state="INFO")
    prepare("SASRec", TINY, config_dict=settings)
    err = capsys.readouterr().err
    assert "train_batch_size" in err  # the log is there (INFO prints the config) ...
    assert "an epoch has only" not in err  # ... without the warning


# --- Ctrl-C before anything was saved --------------------------------------------------------
def _interrupt_after(monkeypatch, model_class, calls: int) -> None:
    """Ctrl-C inside the training step after ``calls`` finished ones of ``model_class``."""
    seen = {"n": 0}
    original = model_class.calculate_loss

    def loss(self, interaction):
        seen["n"] += 1
        if seen["n"] > calls:
            raise KeyboardInterrupt
        return original(self, interaction)

    monkeypatch.setattr(model_class, "calculate_loss", loss)


def test_ctrl_c_before_the_first_validation_says_nothing_to_resume(
    data_root, tmp_path, workdir, monkeypatch, capsys
):
    from recbole_flame.model.sasrec import SASRec

    _interrupt_after(monkeypatch, SASRec, calls=3)
    config = seq_config(data_root, checkpoint_dir=str(tmp_path / "saved"), epochs=5)
    args = [f"--{k}={v}" for k, v in config.items() if k != "load_col"]
    args.append("--load_col={'inter': ['user_id', 'item_id', 'timestamp']}")
    assert main(["--model=SASRec", f"--dataset={TINY}", *args]) == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    per_epoch = math.ceil(_train_targets(data_root).sum() / 256)  # batch 256 of seq_config
    assert "interrupted during training after " in line
    assert f"and 3 training steps (an epoch here is {per_epoch})" in line
    assert "before the first validation (after epoch 1) saved the run's state" in line
    assert "nothing was saved, so there is nothing to resume" in line and "--resume" not in line
    assert not list((tmp_path / "saved").glob("*-last.pth"))  # indeed nothing to resume


def test_ctrl_c_in_flame_stage_1_names_the_stage(data_root, tmp_path, workdir, monkeypatch):
    from recbole_flame.model.sasrec import SASRec

    _interrupt_after(monkeypatch, SASRec, calls=2)  # FLAME's stage 1 trains this SASRec
    settings = seq_config(data_root, checkpoint_dir=str(tmp_path / "s"), train_mode="dense")
    with pytest.raises(KeyboardInterrupt) as info:
        run("FLAME", TINY, config_dict=settings)
    assert "and 2 training steps of FLAME stage 1 (an epoch here is" in str(info.value)
    assert "nothing to resume" in str(info.value)


def test_ctrl_c_of_a_run_that_saves_nothing_says_so(data_root, tmp_path, workdir, monkeypatch):
    from recbole_flame.model.sasrec import SASRec

    per_epoch = math.ceil(_train_targets(data_root).sum() / 256)
    _interrupt_after(monkeypatch, SASRec, calls=per_epoch + 1)  # in epoch 2, after validation 1
    settings = seq_config(data_root, checkpoint_dir=str(tmp_path / "s"), epochs=3)
    with pytest.raises(KeyboardInterrupt) as info:
        run("SASRec", TINY, config_dict=settings, saved=False)
    text = str(info.value)
    assert f"and {per_epoch + 1} training steps" in text
    assert "1 validation(s) done, but this run keeps its state in memory only" in text
