"""The command line: success, and bad input as one line with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "run_recbole_flame.py"


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def _one_line_error(proc):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_unknown_model(tmp_path):
    line = _one_line_error(_cli("--model=NoSuchModel", cwd=tmp_path))
    assert "NoSuchModel" in line and "SASRec" in line


def test_missing_dataset_names_path_and_option(tmp_path):
    missing = tmp_path / "nowhere"
    proc = _cli("--model=SASRec", "--dataset=my-data", f"--data_path={missing}", cwd=tmp_path)
    line = _one_line_error(proc)
    assert str(missing / "my-data") in line and "data_path" in line
    assert not (tmp_path / "saved").exists() or not any((tmp_path / "saved").iterdir())


def test_malformed_override(tmp_path):
    line = _one_line_error(_cli("--model=SASRec", "--epochs", cwd=tmp_path))  # no value
    assert "--epochs" in line and "--key=value" in line


def test_run_through_cli(data_root, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("load_col:\n  inter: [user_id, item_id, timestamp]\n")
    proc = _cli(
        "--model=SASRec",
        f"--config_files={cfg}",
        "--dataset=ml-tiny",
        f"--data_path={data_root}",
        "--epochs=1",
        "--gpu_id=",
        "--show_progress=False",
        "--MAX_ITEM_LIST_LENGTH=10",
        "--hidden_size=16",
        "--inner_size=32",
        "--n_layers=1",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test result" in proc.stdout + proc.stderr
    assert list((tmp_path / "saved").glob("SASRec-*.pth"))
