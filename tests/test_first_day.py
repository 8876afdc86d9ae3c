"""A newcomer's first day: the CLI from any folder, a fair comparison by default, and one line
for the mistakes a first run makes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recbole_flame.cli import main, resolve_hyper
from recbole_flame.config import Config, parse_cmd_args
from recbole_flame.utils import ConfigError
from recbole_flame.utils.paths import profile
from tests.conftest import TINY, one_line_error

ROOT = Path(__file__).resolve().parent.parent


def _module_cli(*args, cwd):
    """``python -m recbole_flame ...`` run from ``cwd`` (not the checkout)."""
    return subprocess.run(
        [sys.executable, "-m", "recbole_flame", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


TINY_MODEL = [
    "--MAX_ITEM_LIST_LENGTH=10",
    "--hidden_size=16",
    "--inner_size=32",
    "--n_layers=1",
    "--embedding_size=16",
    "--gpu_id=",
    "--state=WARNING",
    "--show_progress=False",
]


def test_readme_comparison_command_is_fair_and_includes_the_frozen_sasrec(data_root, tmp_path):
    # The README's comparison, tiny: every model trains with the comparison profile (FLAME's
    # stage-1 settings), and FLAME's frozen SASRec is a row of its own.
    proc = _module_cli(
        "--model=FLAME,SASRec,GRU4Rec",
        f"--dataset={TINY}",
        f"--data_path={data_root}",
        "--seeds=1",
        "--epochs=1",
        *TINY_MODEL,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "comparison" / "comparison.json").read_text())
    rows = {row["model"]: row for row in summary["rows"]}
    assert list(rows) == ["FLAME", "FLAME (frozen)", "SASRec", "GRU4Rec"]
    trained = profile("comparison")
    for model in ("FLAME", "SASRec", "GRU4Rec"):
        settings = rows[model]["settings"]
        assert settings["train_batch_size"] == trained["train_batch_size"] == 256
        assert settings["stopping_step"] == trained["stopping_step"] == 30
        assert settings["valid_metric"] == profile("evaluation")["valid_metric"]
    # RecBole's SASRec defaults (batch 2048, patience 10) were overridden, and the log says so
    line = next(x for x in proc.stdout.splitlines() if x.startswith("comparison profile: SASRec"))
    assert "train_batch_size 2048 -> 256" in line and "stopping_step 10 -> 30" in line
    table = (tmp_path / "comparison" / "comparison.md").read_text()
    assert "| FLAME (frozen) |" in table
    assert "p=" not in table and "no p-value across seeds (fewer than 3)" in table
    # one seed still gets its per-user paired test against the first model
    assert "FLAME (frozen) - FLAME, seed 1, test ndcg@20 per user over 60 users" in table
    # the per-user difference is that of RecBole's own test results (rounded to 4 digits)
    for model in ("FLAME (frozen)", "SASRec", "GRU4Rec"):
        test = rows[model]["per_user_vs_first"]["1"]
        reported = rows[model]["ndcg@20"]["mean"] - rows["FLAME"]["ndcg@20"]["mean"]
        assert abs(test["mean_diff"] - reported) < 1.5e-4, model
    frozen = rows["FLAME (frozen)"]
    flame_run = next(r for r in summary["runs"] if r["model"] == "FLAME")
    assert frozen["parameters"] == flame_run["parameters"]  # same architecture, its own weights


def test_console_script_runs_from_any_folder(tmp_path):
    script = Path(sys.executable).parent / "recbole-flame"
    if not script.is_file():
        pytest.skip("recbole-flame is installed by pip install -e . (CI does)")
    proc = subprocess.run(
        [str(script), "--model=SASRek"], cwd=tmp_path, capture_output=True, text=True
    )
    line = one_line_error(proc)
    assert line.startswith("recbole-flame: error: unknown model 'SASRek': did you mean 'SASRec'")


def test_python_m_recbole_flame_is_the_cli(tmp_path):
    line = one_line_error(_module_cli("--model=SASRek", cwd=tmp_path))
    assert line.startswith("recbole-flame: error: unknown model 'SASRek': did you mean 'SASRec'")


def test_hyper_files_are_found_by_name_or_path(tmp_path):
    assert Path(resolve_hyper("SASRec")).name == "SASRec.hyper"
    assert Path(resolve_hyper("hyper/flame.hyper")).name == "FLAME.hyper"  # from any folder
    own = tmp_path / "mine.hyper"
    own.write_text("learning_rate choice [0.001]\n")
    assert resolve_hyper(str(own)) == str(own)


def test_unknown_hyper_name_is_one_line(capsys):
    assert main(["--model=SASRec", "--hyper=NoSuch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no shipped hyper file" in err[0] and "SASRec" in err[0]


def test_both_option_forms_read_the_same():
    assert parse_cmd_args(["--data_path", "/x", "--epochs=2", "--topk", "[5,10]"]) == {
        "data_path": "/x",
        "epochs": 2,
        "topk": [5, 10],
    }


def test_dash_for_underscore_suggests_the_key():
    with pytest.raises(ConfigError, match="did you mean 'train_batch_size'"):
        Config("SASRec", "ml-100k", cmd_args=["--train-batch-size=64"])


def test_gpu_id_without_cuda_is_one_warning_and_use_gpu_says_cpu(capsys, monkeypatch):
    import torch

    from recbole_flame.config import configurator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(configurator, "_CPU_WARNED", [])
    config = Config("SASRec", "ml-100k", config_dict={"gpu_id": 0})
    assert config["use_gpu"] is False and config["device"].type == "cpu"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "warning: gpu_id=0 was given but CUDA is not available here: this run is on the CPU"
    ]
    assert Config("SASRec", "ml-100k")["use_gpu"] is False  # no gpu_id given: no warning
    assert capsys.readouterr().err == ""


def test_evaluation_profile_is_shared_by_this_packages_ranking_models():
    wanted = profile("evaluation")
    for model in ("FLAME", "CANet", "TiM4Rec"):
        config = Config(model, "ml-100k", config_dict={"gpu_id": ""})
        assert {k: config[k] for k in wanted} == wanted, model


@pytest.mark.parametrize(
    "header, words",
    [
        ("user_id\titem_id\ttimestamp", ["'user_id' has no type", "name:type"]),
        ("user_id:token,item_id:token,timestamp:float", ["split by ','", "field_separator"]),
        ("user_id:token\titem_id:tok\ttimestamp:float", ["type 'tok'", "token_seq"]),
    ],
)
def test_atomic_header_mistakes_are_one_line(tmp_path, capsys, header, words):
    folder = tmp_path / "mine"
    folder.mkdir()
    sep = "," if "," in header else "\t"
    rows = [sep.join(["1", "2", "3"]), sep.join(["1", "3", "4"])]
    (folder / "mine.inter").write_text("\n".join([header, *rows]) + "\n")
    assert main(["--model=SASRec", "--dataset=mine", f"--data_path={tmp_path}", "--gpu_id="]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert str(folder / "mine.inter") in err[0]
    for word in words:
        assert word in err[0], err[0]


def test_tim4rec_without_time_column_asks_for_real_timestamps(tmp_path, capsys):
    folder = tmp_path / "notime"
    folder.mkdir()
    (folder / "notime.inter").write_text("user_id:token\titem_id:token\n1\t2\n1\t3\n")
    args = ["--dataset=notime", f"--data_path={tmp_path}", "--gpu_id="]
    assert main(["--model=TiM4Rec", *args]) == 2
    err = capsys.readouterr().err
    assert "real timestamps" in err and "position in its user's sequence" not in err
    assert main(["--model=SASRec", *args]) == 2
    assert "position in its user's sequence" in capsys.readouterr().err


def test_flame_run_leaves_one_tensorboard_run_per_stage_no_lock_and_logs_final_paths(
    data_root, workdir
):
    from recbole_flame.quick_start import run
    from tests.conftest import seq_config

    run("FLAME", TINY, config_dict=seq_config(data_root, epochs=1, state="INFO"))
    runs = sorted(p.name for p in (workdir / "log_tensorboard").iterdir())
    assert len(runs) == 2 and runs[1] == f"{runs[0]}-stage1", runs
    for folder in (workdir / "log_tensorboard").iterdir():  # no hparam sub-folders
        assert all(p.is_file() for p in folder.iterdir()), list(folder.iterdir())
    assert not list((workdir / "saved").rglob("*.lock"))
    log = next((workdir / "log" / "FLAME").glob("*.log")).read_text()
    assert ".partial" not in log
    stage1 = next((workdir / "saved" / "flame_stage1").glob("SASRec-*.pth"))
    assert f"Saving current: {stage1}" in log
