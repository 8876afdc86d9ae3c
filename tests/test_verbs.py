"""The command line's verbs: each hands the engine what the flat form hands it, has its own
``--help``, and refuses bad input in one line."""

from __future__ import annotations

import pytest

import recbole_flame.cli as cli
from tests.conftest import one_line_error, run_cli


@pytest.fixture
def calls(monkeypatch):
    """What the command line asked of each engine, recorded instead of run."""
    import recbole_flame.experiment.compare as compare
    import recbole_flame.experiment.runs as runs
    import recbole_flame.quick_start as quick_start
    import recbole_flame.tuning.search as search

    seen: list[tuple] = []

    def record(name):
        def called(*args, **kwargs):
            seen.append((name, args, kwargs))
            if name == "compare":
                raise SystemExit(0)  # nothing to print a table from
            if name == "search":
                raise SystemExit(0)

        return called

    monkeypatch.setattr(quick_start, "run", record("train"))
    monkeypatch.setattr(compare, "run_comparison", record("compare"))
    monkeypatch.setattr(search, "run_search", record("search"))
    monkeypatch.setattr(runs, "run_experiment", record("run-spec"))
    return seen


def _both(calls, verb_argv, flat_argv):
    for argv in (verb_argv, flat_argv):
        try:
            assert cli.main(argv) == 0
        except SystemExit as exc:
            assert exc.code == 0
    assert len(calls) == 2, calls
    return calls[0], calls[1]


@pytest.mark.parametrize(
    "verb_argv, flat_argv",
    [
        (
            ["train", "--model=SASRec", "--dataset=ml-1m", "--epochs=3", "--resume=x.pth"],
            ["--model=SASRec", "--dataset=ml-1m", "--epochs=3", "--resume=x.pth"],
        ),
        (
            ["compare", "--model=FLAME,SASRec", "--seeds=1,2", "--learning_rate=0.01"],
            ["--model=FLAME,SASRec", "--seeds=1,2", "--learning_rate=0.01"],
        ),
        (
            ["search", "--model=SASRec", "--hyper=SASRec", "--trials=3", "--epochs=2"],
            ["--model=SASRec", "--hyper=SASRec", "--trials=3", "--epochs=2"],
        ),
        (
            ["run-spec", "spec.yaml", "--only", "A", "B", "--seeds=1", "--threads=1", "--park"],
            ["--spec=spec.yaml", "--only", "A", "B", "--seeds=1", "--threads=1", "--park"],
        ),
    ],
    ids=["train", "compare", "search", "run-spec"],
)
def test_a_verb_asks_the_engine_what_the_flat_form_asks(calls, verb_argv, flat_argv):
    verb, flat = _both(calls, verb_argv, flat_argv)
    assert verb[0] == flat[0] == verb_argv[0]
    if verb[0] == "search":  # a SearchSettings dataclass: compare its fields
        assert vars(verb[1][0]) == vars(flat[1][0])
    else:
        assert verb[1:] == flat[1:]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["search", "--model=SASRec"], "--hyper"),
        (["search", "--model=SASRec,BPR", "--hyper=SASRec"], "one model"),
        (["compare", "--seeds=1,x"], "--seeds"),
        (["train", "--resume"], "--resume"),  # the state file is required
        (["run-spec"], "SPEC"),
        (["run-spec", "spec.yaml", "--epochs=3"], "--epochs"),  # a spec holds every setting
    ],
)
def test_bad_verb_input_is_one_line(calls, capsys, argv, words):
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert err[0].startswith(f"{cli.program_name()} {argv[0]}")
    assert not calls


@pytest.mark.parametrize("verb", sorted(cli.VERBS))
def test_every_verb_has_its_own_help(verb, tmp_path):
    proc = run_cli(verb, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: run_recbole_flame.py {verb}")


def test_the_flat_help_names_the_verbs(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert all(verb in proc.stdout for verb in cli.VERBS)


def test_an_unknown_model_through_train_is_one_line(tmp_path):
    line = one_line_error(run_cli("train", "--model=SASRek", cwd=tmp_path))
    assert line.startswith("run_recbole_flame.py train: error: unknown model 'SASRek'")
