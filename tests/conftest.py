"""Shared fixtures: a small slice of ml-100k in RecBole's atomic format, tiny configs, and the
command line run in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import recbole

ML100K = Path(recbole.__file__).parent / "dataset_example" / "ml-100k"
SCRIPT = Path(__file__).resolve().parent.parent / "run_recbole_flame.py"
BENCHMARKS = SCRIPT.parent / "benchmarks"
TINY = "ml-tiny"
#: CANet's smallest supernet of the tests: two widths, depths and embedding sizes.
CANET_SMALL = {
    "hidden_size_list": [8, 16],
    "n_layers_list": [1, 2],
    "embedding_size_list": [8, 16],
    "n_heads": 2,
    "router_hidden_size": 8,
    "router_n_heads": 2,
    "router_inner_size": 16,
}
N_USERS = 60


def _write_slice(root: Path) -> Path:
    """The first N_USERS users of ml-100k with all their interactions, users and items."""
    folder = root / TINY
    folder.mkdir(parents=True, exist_ok=True)
    inter = pd.read_csv(ML100K / "ml-100k.inter", sep="\t", dtype=str)
    users = sorted(inter["user_id:token"].unique(), key=int)[:N_USERS]
    inter = inter[inter["user_id:token"].isin(users)]
    inter.to_csv(folder / f"{TINY}.inter", sep="\t", index=False)
    user = pd.read_csv(ML100K / "ml-100k.user", sep="\t", dtype=str)
    user[user["user_id:token"].isin(users)].to_csv(folder / f"{TINY}.user", sep="\t", index=False)
    item = pd.read_csv(ML100K / "ml-100k.item", sep="\t", dtype=str)
    items = set(inter["item_id:token"])
    item[item["item_id:token"].isin(items)].to_csv(folder / f"{TINY}.item", sep="\t", index=False)
    return root


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    return _write_slice(tmp_path_factory.mktemp("datasets"))


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run in a temporary directory: RecBole writes log/, log_tensorboard/ and saved/ to cwd."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# RECBOLE_FLAME_TEST_DEVICE=cuda runs the tests' models on GPU 0 (benchmarks/gpu/check.py does,
# for tests/test_cuda.py); by default, and in CI, everything runs on the CPU.
TEST_DEVICE = os.environ.get("RECBOLE_FLAME_TEST_DEVICE", "cpu")


def base_config(data_root: Path, **overrides) -> dict:
    """Settings every test run shares: quiet, short, tiny data, on TEST_DEVICE."""
    on_gpu = TEST_DEVICE == "cuda"
    config = {
        "data_path": str(data_root),
        "gpu_id": "0" if on_gpu else "",
        "use_gpu": on_gpu,
        "state": "WARNING",
        "show_progress": False,
        "epochs": 1,
        "eval_batch_size": 256,
        "train_batch_size": 256,
        "checkpoint_dir": os.path.join(os.getcwd(), "saved"),
    }
    config.update(overrides)
    return config


def seq_config(data_root: Path, **overrides) -> dict:
    """A tiny sequential setting (leave-one-out, full ranking)."""
    config = base_config(
        data_root,
        MAX_ITEM_LIST_LENGTH=10,
        hidden_size=16,
        inner_size=32,
        n_layers=1,
        n_heads=2,
        load_col={"inter": ["user_id", "item_id", "timestamp"]},
        metrics=["Recall", "NDCG"],
        topk=[10],
        valid_metric="NDCG@10",
    )
    config.update(overrides)
    return config


def ctr_config(data_root: Path, **overrides) -> dict:
    """A tiny CTR setting: label = rating >= 4, user and item features, labeled evaluation."""
    config = base_config(
        data_root,
        load_col={
            "inter": ["user_id", "item_id", "rating", "timestamp"],
            "user": ["user_id", "age", "gender", "occupation"],
            "item": ["item_id", "release_year", "class"],
        },
        threshold={"rating": 4},
        embedding_size=8,
    )
    config.update(overrides)
    return config


def prepare_in(folder: Path, model: str, config_dict: dict):
    """``prepare`` run inside ``folder`` (RecBole writes log/ to cwd), for module fixtures that
    cannot use the function-scoped ``workdir``."""
    from recbole_flame.quick_start import prepare

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return prepare(model, TINY, config_dict=config_dict)
    finally:
        os.chdir(cwd)


def load_benchmark(path: str):
    """The module of ``benchmarks/<path>`` (repository tooling, not part of the package), as the
    script imports when run: its own folder first on ``sys.path``."""
    import importlib.util
    import sys as _sys

    file = BENCHMARKS / path
    if str(file.parent) not in _sys.path:
        _sys.path.insert(0, str(file.parent))
    name = "benchmarks_" + path.replace("/", "_").removesuffix(".py")
    if name not in _sys.modules:
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        _sys.modules[name] = module
        spec.loader.exec_module(module)
    return _sys.modules[name]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``run_recbole_flame.py`` with ``args`` in a fresh process, run in ``cwd``."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The one line a failed command printed (it must have failed, with one non-blank line on
    stderr and no traceback)."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


class DataStageReached(Exception):
    """Raised where a run would check for its data: the config stage let the input through."""


@pytest.fixture
def cli_config_stage(workdir, monkeypatch, capsys):
    """``run(*argv) -> (exit code, non-blank stderr lines)``: the CLI's ``main`` in-process,
    stopped with :class:`DataStageReached` where a run would start on its data."""
    import recbole_flame.quick_start.quick_start as quick_start
    from recbole_flame.cli import main

    def reached(config):
        raise DataStageReached(f"{config['model']}: the config stage accepted the input")

    monkeypatch.setattr(quick_start, "check_dataset_on_disk", reached)
    # RecBole's Config writes CUDA_VISIBLE_DEVICES; give it back after the test.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")

    def run(*argv: str) -> tuple[int, list[str]]:
        code = main(list(argv))
        err = capsys.readouterr().err
        return code, [line for line in err.splitlines() if line.strip()]

    return run
