"""``run_recbole_flame.py --spec=FILE``: the experiment engine from the command line. The
summary of finished runs is printed and written under ``benchmarks/results/<name>/`` of the
current directory; bad input (a missing spec, an unknown --only label, bad --seeds, an
experiment option without --spec) is one line on stderr and exit status 2. Also: every
committed spec under ``benchmarks/experiments/`` loads and pairs only runs it has."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recbole_flame.cli import main
from recbole_flame.experiment.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
SPEC = (
    "description: two runs on three seeds\n"
    "dataset: ml-100k\nseeds: [1, 2, 3]\n"
    "runs:\n  A: {model: SASRec}\n  B: {model: SASRec}\n"
    "compare: [[A, B]]\ntest_metrics: [ndcg@10]\n"
)


def _finished_runs(folder: Path) -> None:
    """Result files of both runs and every seed, as the engine writes them."""
    folder.mkdir(parents=True)
    scores = {"A": [0.10, 0.12, 0.11], "B": [0.09, 0.10, 0.11]}
    for label, values in scores.items():
        for seed, value in zip((1, 2, 3), values, strict=True):
            result = {
                "test_result": {"ndcg@10": value},
                "best_epoch": seed,
                "epochs_run": seed + 5,
                "epoch_train_seconds": [2.0, 1.0, 1.5],
                "elapsed_seconds_to_best": 10.0,
                "elapsed_seconds": 20.0,
            }
            (folder / f"{label}-seed{seed}.json").write_text(json.dumps({"result": result}))


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_summary_of_a_spec_prints_what_it_writes(tmp_path, monkeypatch, capsys):
    (tmp_path / "tiny.yaml").write_text(SPEC)
    results = tmp_path / "benchmarks" / "results" / "tiny"
    _finished_runs(results)
    monkeypatch.chdir(tmp_path)
    assert main(["--spec=tiny.yaml", "--summary"]) == 0
    out = capsys.readouterr().out
    assert out == (results / "summary.md").read_text()
    assert out.startswith("### tiny: two runs on three seeds\n")
    assert "| A | 3 | 0.1100 ± 0.0100 |" in out
    # differences +0.01, +0.02, 0: mean 0.01, sd 0.01, t = 0.01 / (0.01 / sqrt 3) = 1.73
    assert "A - B, test ndcg@10: mean diff +0.0100 (sd 0.0100" in out
    assert "over seeds [1, 2, 3], paired t = 1.73" in out


def test_out_and_seeds_pick_the_folder_and_the_seeds(tmp_path, monkeypatch, capsys):
    (tmp_path / "tiny.yaml").write_text(SPEC)
    _finished_runs(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    assert main(["--spec=tiny.yaml", "--summary", "--out=elsewhere", "--seeds=1,2"]) == 0
    out = capsys.readouterr().out
    assert "| A | 2 | 0.1100 ± 0.0141 |" in out
    assert out == (tmp_path / "elsewhere" / "summary.md").read_text()
    assert not (tmp_path / "benchmarks").exists()


def test_missing_spec_file_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_recbole_flame.py"), "--spec=nowhere.yaml", "--summary"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2
    line = _one_line(proc.stderr)
    assert "nowhere.yaml" in line and "no such spec file" in line


@pytest.mark.parametrize(
    ("args", "wanted"),
    [
        (["--only", "C"], ["--only", "'C'", "'A', 'B'"]),
        (["--seeds=1,x"], ["--seeds", "1,x"]),
        (["--seeds=,"], ["--seeds", "no seed"]),
        (["--epochs=3"], ["--epochs=3", "--spec"]),
        (["--model=FLAME"], ["--model", "--spec"]),
    ],
)
def test_bad_experiment_input_is_one_line(tmp_path, monkeypatch, capsys, args, wanted):
    (tmp_path / "tiny.yaml").write_text(SPEC)
    monkeypatch.chdir(tmp_path)
    assert main(["--spec=tiny.yaml", "--summary", *args]) == 2
    line = _one_line(capsys.readouterr().err)
    assert all(w in line for w in wanted), line
    assert not (tmp_path / "benchmarks").exists()  # nothing written


def test_not_a_spec_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "config.yaml").write_text("metrics: [AUC]\n")  # a RecBole config, not a spec
    (tmp_path / "broken.yaml").write_text("runs: [\n")
    monkeypatch.chdir(tmp_path)
    assert main(["--spec=config.yaml", "--summary"]) == 2
    assert "not an experiment spec" in _one_line(capsys.readouterr().err)
    assert main(["--spec=broken.yaml", "--summary"]) == 2
    assert "broken.yaml" in _one_line(capsys.readouterr().err)


def test_experiment_options_need_a_spec(capsys):
    assert main(["--summary", "--only", "A"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "--only" in line and "--summary" in line and "--spec" in line


def test_committed_specs_load_and_pair_their_own_runs():
    specs = sorted((ROOT / "benchmarks" / "experiments").glob("*.yaml"))
    assert len(specs) >= 12
    for path in specs:
        if path.stem == "obd":  # the Open Bandit search's RecBole config file, not a spec
            continue
        spec = load_spec(path)
        rows = set(spec["runs"]) | set(spec.get("derived", {}))
        pairs = [*spec["compare"], *spec.get("time_to_accuracy", [])]
        assert all(a in rows and b in rows for a, b in pairs), path.name
        head = path.read_text().splitlines()[0]
        assert head.startswith("# ") and "issue" not in head.lower(), path.name
