"""Hyper files, the Ray Tune search and the model comparison."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from recbole_flame.experiment.compare import run_comparison
from recbole_flame.tuning.hyper import HyperFileError, check_search_space, parse_hyper_file
from recbole_flame.tuning.search import SearchFailed, SearchSettings, run_search
from recbole_flame.utils import ConfigError
from tests.conftest import TINY, seq_config


def _write(tmp_path, text, name="m.hyper"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_hyper_file_all_kinds(tmp_path):
    path = _write(
        tmp_path,
        "# comment line\n"
        "learning_rate loguniform -8,0   # natural-log bounds\n"
        "tau uniform 0.1,2.0\n"
        "n_layers choice [1,2,3]\n"
        "base_models choice [[DCNV2, DeepFM], ['DCNV2', 'DCNV2']]\n"
        "\n"
        "inner_size quniform 64,512,64\n",
    )
    params = {p.name: p for p in parse_hyper_file(path)}
    assert params["learning_rate"].values == (-8.0, 0.0)
    space = params["learning_rate"].to_tune()
    assert space.lower == pytest.approx(math.exp(-8)) and space.upper == pytest.approx(1.0)
    assert params["tau"].values == (0.1, 2.0)
    assert params["n_layers"].values == (1, 2, 3)
    assert params["base_models"].values == (["DCNV2", "DeepFM"], ["DCNV2", "DCNV2"])
    assert params["inner_size"].values == (64.0, 512.0, 64.0)


@pytest.mark.parametrize(
    "line, problem",
    [
        ("tau uniform 2.0,0.1", "lo < hi"),
        ("tau uniform 1", "lo,hi"),
        ("tau normal 0,1", "unknown kind"),
        ("tau", "name kind values"),
        ("n_layers choice 3", "non-empty list"),
        ("inner_size quniform 64,512,0", "positive step"),
        ("inner_size quniform 60,512,64", "multiples of q"),
        ("lr loguniform a,b", "numbers"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, problem):
    path = _write(tmp_path, f"n_heads choice [1,2]\n{line}\n")
    with pytest.raises(HyperFileError) as info:
        parse_hyper_file(path)
    assert f"{path}:2" in str(info.value) and problem in str(info.value)


def test_integral_quniform_draws_integers(tmp_path):
    path = _write(tmp_path, "inner_size quniform 64,512,64\nratio quniform 0.2,0.8,0.2\n")
    params = {p.name: p for p in parse_hyper_file(path)}
    drawn = [params["inner_size"].to_tune().sample() for _ in range(20)]
    assert all(type(v) is int and 64 <= v <= 512 and v % 64 == 0 for v in drawn), drawn
    assert isinstance(params["ratio"].to_tune().sample(), float)


@pytest.mark.parametrize(
    ("model", "line", "words"),
    [
        ("SASRec", "learning_rate choice [0.01,-1]", ["learning_rate", "-1", "positive"]),
        ("SASRec", "n_layers uniform 1,3", ["n_layers", "1.0", "integer"]),
        ("SASRec", "metrics choice [[Recall], [Foo]]", ["metrics", "'Foo'"]),
        ("FLAME", "path_mixing choice ['tiled','mixed']", ["path_mixing", "'mixed'"]),
        ("CETNet", "entropy_eps uniform 0.1,0.7", ["entropy_eps", "0.7"]),
    ],
)
def test_search_space_values_are_checked_before_trials(tmp_path, model, line, words):
    path = _write(tmp_path, f"{line}\n")
    with pytest.raises(HyperFileError) as info:
        check_search_space(parse_hyper_file(path), model, path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    for word in words:
        assert word in message, message


def test_valid_search_spaces_pass_the_checks(tmp_path):
    path = _write(
        tmp_path,
        "learning_rate loguniform -8,0\ninner_size quniform 64,512,64\n"
        "hidden_dropout_prob uniform 0.0,0.5\ntau uniform 0.1,2.0\n",
    )
    check_search_space(parse_hyper_file(path), "SASRec", path)  # tau: not SASRec's key
    check_search_space(parse_hyper_file(path), "FLAME", path)
    for shipped in sorted((Path(__file__).resolve().parent.parent / "hyper").glob("*.hyper")):
        check_search_space(parse_hyper_file(shipped), shipped.stem, shipped)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x80\x04\x95binary\xff\xfe", "not a text file"),
        (b"tau uniform -inf,inf\n", "finite"),
        (b"root:x:0:0:root:/root:/bin/bash\n", "name kind values"),
        (b"learning_rate loguniform -8", "lo,hi"),
    ],
)
def test_hyper_file_that_is_not_one_is_one_line(tmp_path, content, problem):
    path = tmp_path / "h.hyper"
    path.write_bytes(content)
    with pytest.raises(HyperFileError) as info:
        parse_hyper_file(path)
    assert str(path) in str(info.value) and problem in str(info.value)
    assert "\n" not in str(info.value)


def test_hyper_values_are_never_evaluated(tmp_path):
    marker = tmp_path / "evaluated"
    path = _write(tmp_path, f"x choice [open('{marker}', 'w')]\n")
    with pytest.raises(HyperFileError, match=":1: 'choice' needs"):
        parse_hyper_file(path)  # RecBole would eval() this line and create the file
    assert not marker.exists()


def _search(data_root, tmp_path, hyper_text, trials, **overrides):
    settings = SearchSettings(
        model="SASRec",
        dataset=TINY,
        hyper_file=str(_write(tmp_path, hyper_text)),
        trials=trials,
        overrides=seq_config(data_root, epochs=2, **overrides),
        cpus_per_trial=1,
        output_dir=str(tmp_path / "ray"),
    )
    return run_search(settings)


def test_two_trial_search_writes_results(data_root, workdir):
    summary = _search(data_root, workdir, "learning_rate choice [0.001,0.01]\n", trials=2)
    assert len(summary["trials"]) == 2
    # A trial runs both epochs and says so, or the scheduler stops it after the first.
    for row in summary["trials"]:
        assert (row["status"], row["epochs"]) in {("done: all epochs", 2), ("stopped by ASHA", 1)}
        assert "=" not in row["trial"] and len(row["trial"]) < 20  # short id, not a folder
    assert any(row["status"] == "done: all epochs" for row in summary["trials"])
    assert summary["best_config"]["learning_rate"] in (0.001, 0.01)
    assert 0 <= summary["test_result"]["ndcg@10"] <= 1
    written = json.loads((workdir / "ray" / f"SASRec-{TINY}" / "search_results.json").read_text())
    assert written["best_config"] == summary["best_config"]
    assert (workdir / "ray" / f"SASRec-{TINY}" / "trials.csv").is_file()


def test_max_concurrent_reaches_the_trial_generator(data_root, workdir, monkeypatch):
    # Ray 2.6 ignores TuneConfig(max_concurrent_trials=...) with only a warning when the search
    # algorithm is a BasicVariantGenerator: the limit must be the generator's own.
    import ray
    from ray import tune

    seen = {}

    class Stop(Exception):
        pass

    class CapturingTuner:
        def __init__(self, trainable, param_space=None, tune_config=None, run_config=None):
            seen["generator"] = tune_config.search_alg
            raise Stop

    monkeypatch.setattr(tune, "Tuner", CapturingTuner)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # start no local Ray
    monkeypatch.setattr(tune, "with_parameters", lambda fn, **_: fn)  # (it needs Ray's store)
    monkeypatch.setattr(tune, "with_resources", lambda fn, _: fn)
    for limit, expected in ((1, 1), (None, 0)):
        settings = SearchSettings(
            model="SASRec",
            dataset=TINY,
            hyper_file=str(_write(workdir, "learning_rate choice [0.001,0.01]\n")),
            trials=2,
            overrides=seq_config(data_root, epochs=1),
            cpus_per_trial=1,
            output_dir=str(workdir / "ray"),
            max_concurrent=limit,
        )
        with pytest.raises(Stop):
            run_search(settings)
        assert type(seen["generator"]).__name__ == "BasicVariantGenerator"
        assert seen["generator"].max_concurrent == expected


def test_a_search_whose_every_trial_fails_stops_with_the_first_error(data_root, workdir):
    # 16 is not a multiple of 3 heads: every trial raises when it builds the model.
    with pytest.raises(SearchFailed) as err:
        _search(data_root, workdir, "n_heads choice [3]\n", trials=2)
    message = str(err.value)
    assert "\n" not in message and "every trial of the search failed" in message
    assert "must be a multiple of n_heads" in message  # the trial's own error
    written = json.loads((workdir / "ray" / f"SASRec-{TINY}" / "search_results.json").read_text())
    assert [row["status"].startswith("ERROR") for row in written["trials"]] == [True, True]
    assert written["best_config"] is None


def test_a_dense_search_of_a_model_that_cannot_train_dense_stops_before_ray(
    data_root, workdir, monkeypatch, capsys
):
    import ray

    from recbole_flame.cli import main

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    hyper = _write(workdir, "learning_rate choice [0.001,0.01]\n")
    code = main(
        [
            "--model=GRU4Rec",
            f"--dataset={TINY}",
            f"--data_path={data_root}",
            f"--hyper={hyper}",
            "--train_mode=dense",
            "--trials=1",
            "--gpu_id=",
        ]
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1
    assert "train_mode: dense is not available for GRU4Rec" in err[0]


def test_comparison_writes_table_csv_json_png(data_root, workdir):
    out = workdir / "cmp"
    summary = run_comparison(
        ["SASRec", "GRU4Rec"],
        TINY,
        seeds=[1, 2],
        overrides=seq_config(data_root, epochs=2, embedding_size=16),
        output_dir=str(out),
    )
    assert summary["models"] == ["SASRec", "GRU4Rec"]
    gru = summary["rows"][1]
    assert gru["ndcg@10"]["p_vs_first"] is None or 0 <= gru["ndcg@10"]["p_vs_first"] <= 1
    assert len(gru["ndcg@10"]["values"]) == 2 and gru["parameters"] > 0
    for name in ("comparison.md", "comparison.csv", "comparison.json", "convergence.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| SASRec |" in (out / "comparison.md").read_text()
    for row in summary["rows"]:  # epochs and time to the best validation epoch
        assert 1 <= row["best_epoch"] <= 2 and row["seconds_to_best"] > 0
    assert "epochs to best" in (out / "comparison.md").read_text()


def test_a_comparison_is_an_experiment_of_the_engine(data_root, workdir, monkeypatch):
    """Each (model, seed) is an engine record with its provenance; a second comparison into the
    same folder reads the finished runs back (it trains nothing and gives the same table), and
    one with other settings stops in one line rather than compare runs it did not make."""
    import recbole_flame.experiment.runs as runs
    from recbole_flame.experiment.compare import markdown

    out = workdir / "cmp"
    settings = seq_config(data_root, epochs=1)
    first = run_comparison(["SASRec"], TINY, seeds=[1], overrides=settings, output_dir=str(out))
    record = json.loads((out / "SASRec-seed1.json").read_text())
    assert {"command", "commit", "machine", "sitting_wall_seconds"} <= set(record)
    tested = record["result"]["test_result"]["ndcg@10"]
    assert first["rows"][0]["ndcg@10"]["values"] == [tested]
    ranks, users = record["result"]["comparison"]["ranks"]
    assert len(ranks) == len(users) == len(set(users)) > 0

    def trains(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(runs, "run_one", trains)
    again = run_comparison(["SASRec"], TINY, seeds=[1], overrides=settings, output_dir=str(out))
    assert markdown(again) == markdown(first)
    with pytest.raises(
        ConfigError, match="SASRec-seed1.json holds a run of SASRec made with other"
    ):
        run_comparison(
            ["SASRec"],
            TINY,
            seeds=[1],
            overrides=seq_config(data_root, epochs=1, learning_rate=0.01),
            output_dir=str(out),
        )


def test_comparison_refuses_models_that_see_different_data(data_root, workdir):
    from recbole_flame.experiment import compare

    real = compare.Config

    def config_for(model, *args, **kwargs):  # as if one model's yaml set its own history
        config = real(model, *args, **kwargs)
        if model == "GRU4Rec":
            config.final_config_dict["history_limit"] = 20
        return config

    compare.Config = config_for
    try:
        with pytest.raises(ConfigError, match="cannot compare SASRec and GRU4Rec.*history_limit"):
            run_comparison(
                ["SASRec", "GRU4Rec"],
                TINY,
                seeds=[1],
                overrides=seq_config(data_root, epochs=1),
                output_dir=str(workdir / "cmp"),
            )
    finally:
        compare.Config = real
    assert not (workdir / "cmp").exists()  # refused before anything ran


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parent.parent / "hyper").glob("*.hyper"))
)
def test_shipped_hyper_files_parse_and_name_real_keys(path):
    from recbole_flame.config import Config

    model = path.stem
    config = Config(model, "ml-100k", config_dict={"gpu_id": "", "use_gpu": False})
    for param in parse_hyper_file(path):
        assert param.name in config.final_config_dict, (model, param.name)


def test_trial_status_tells_how_each_trial_ended():
    from types import SimpleNamespace

    import pandas as pd

    from recbole_flame.tuning.search import _trial_rows

    def result(ends, error=None):
        frame = pd.DataFrame(
            {"valid_score": [0.1] * len(ends), "end": ends, "checkpoint": ["c"] * len(ends)}
        )
        return SimpleNamespace(
            metrics_dataframe=frame,
            config={"lr": 0.1},
            error=error,
            metrics={"trial_id": "ab_00001"},
            path="/x/_trial_ab_00001_lr=0.1_2026",
        )

    # Ray's results table turns an empty string into NaN: a trial the scheduler stopped.
    grid = [
        result(["", "all epochs"]),
        result(["", float("nan")]),
        result(["", "early stopping (patience)"]),
        result([""], error=RuntimeError("boom\nmore")),
    ]
    rows = _trial_rows(grid, ["lr"], "max")
    assert [r["status"] for r in rows] == [
        "done: all epochs",
        "stopped by ASHA",
        "done: early stopping (patience)",
        "ERROR: boom",
    ]
    assert rows[0]["trial"] == "ab_00001"
