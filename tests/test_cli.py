"""The command line: success, and bad input as one line with a non-zero exit."""

from __future__ import annotations

from tests.conftest import one_line_error, run_cli


def test_unknown_model(tmp_path):
    line = one_line_error(run_cli("--model=NoSuchModel", cwd=tmp_path))
    assert "NoSuchModel" in line and "SASRec" in line


def test_missing_dataset_names_path_and_option(tmp_path):
    missing = tmp_path / "nowhere"
    proc = run_cli("--model=SASRec", "--dataset=my-data", f"--data_path={missing}", cwd=tmp_path)
    line = one_line_error(proc)
    assert str(missing / "my-data") in line and "data_path" in line
    assert not (tmp_path / "saved").exists() or not any((tmp_path / "saved").iterdir())


def test_malformed_override(tmp_path):
    line = one_line_error(run_cli("--model=SASRec", "--epochs", cwd=tmp_path))  # no value
    assert "--epochs" in line and "--key=value" in line


def test_run_through_cli(data_root, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("load_col:\n  inter: [user_id, item_id, timestamp]\n")
    proc = run_cli(
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
