"""Where a run's data comes from: a folder made by hand with no yaml, the bundled amazon-beauty,
RecBole's download; and the one-line stops (no time column, offline download, unknown name)."""

from __future__ import annotations

import hashlib
import io
import math
import re
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import recbole
import yaml
from recbole.data import create_dataset

from recbole_flame.cli import main
from recbole_flame.config import Config
from recbole_flame.data.datasets import bundled_file, check_time_field, provide_dataset
from recbole_flame.quick_start import prepare, train_and_test
from recbole_flame.utils import ConfigError
from tests.conftest import CANET_SMALL, ML100K, N_USERS, SCRIPT, one_line_error, run_cli, seq_config
from tests.test_tim4rec import TINY_MODEL as TIM4REC_TINY

OWN, NO_TIME = "own-data", "own-notime"
RECBOLE_PROPERTIES = Path(recbole.__file__).parent / "properties" / "dataset"
# The numbers the project's data README gives for the 5-core Beauty set.
BEAUTY_USERS, BEAUTY_ITEMS, BEAUTY_INTERACTIONS = 22_363, 12_101, 198_502
SHARED_BEAUTY = (
    SCRIPT.parent.parent / "shared" / "datasets" / "amazon-beauty" / "amazon-beauty.inter"
)


def _own_inter() -> pd.DataFrame:
    """ml-100k's first N_USERS users as the README describes a user's own data: user, item and
    a time column (real unix seconds, so TiM4Rec's time path sees real intervals)."""
    inter = pd.read_csv(ML100K / "ml-100k.inter", sep="\t", dtype=str)
    users = sorted(inter["user_id:token"].unique(), key=int)[:N_USERS]
    inter = inter[inter["user_id:token"].isin(users)]
    return inter[["user_id:token", "item_id:token", "timestamp:float"]]


def _write(root: Path, name: str, frame: pd.DataFrame) -> None:
    (root / name).mkdir(parents=True)
    frame.to_csv(root / name / f"{name}.inter", sep="\t", index=False)


@pytest.fixture(scope="module")
def own_root(tmp_path_factory) -> Path:
    """DIR/<name>/<name>.inter made by hand, no yaml anywhere; one copy without a time column."""
    root = tmp_path_factory.mktemp("own")
    inter = _own_inter()
    _write(root, OWN, inter)
    _write(root, NO_TIME, inter[["user_id:token", "item_id:token"]])
    return root


def _tiny(own_root: Path, **overrides) -> dict:
    """The shared tiny sequential settings, without the load_col they set."""
    config = seq_config(own_root, **overrides)
    del config["load_col"]
    return config


# --- a user's own data ----------------------------------------------------------------------
def test_dataset_without_yaml_loads_every_column(own_root):
    assert Config("SASRec", OWN, config_dict={"data_path": str(own_root)})["load_col"] is None
    given = {"inter": ["user_id", "item_id"]}
    cfg = Config("SASRec", OWN, config_dict={"data_path": str(own_root), "load_col": given})
    assert cfg["load_col"] == given
    # Datasets with a yaml keep its load_col: RecBole's ml-100k, this package's amazon-beauty.
    ml100k = yaml.safe_load((RECBOLE_PROPERTIES / "ml-100k.yaml").read_text())["load_col"]
    assert Config("SASRec", "ml-100k")["load_col"] == ml100k
    assert Config("SASRec", "amazon-beauty")["load_col"] == {
        "inter": ["user_id", "item_id", "timestamp"]
    }


OWN_RUNS = {
    "SASRec": {},
    "SASRec-dense": {"train_mode": "dense"},
    "FLAME": {"n_layers": 2},
    "CANet": CANET_SMALL,
    "TiM4Rec": dict(TIM4REC_TINY, n_layers=1),
}


@pytest.mark.parametrize("run_name", list(OWN_RUNS))
def test_own_dataset_runs_one_epoch(run_name, own_root, workdir):
    model = run_name.split("-")[0]
    settings = _tiny(own_root, state="INFO", **OWN_RUNS[run_name])
    config, _net, trainer, data = prepare(model, OWN, config_dict=settings)
    assert config["load_col"] is None
    # The time column RecBole's sequential dataset sorts by was loaded and carried along.
    assert "timestamp_list" in data[0]._dataset.inter_feat
    result = train_and_test(config, trainer, data, saved=False)
    assert math.isfinite(result["test_result"]["ndcg@10"])
    log = next((workdir / "log" / model).glob("*.log")).read_text()
    assert "has no yaml of its own, so every column is loaded" in log


def test_dataset_without_time_column_stops_in_one_line_before_loading(own_root, tmp_path):
    proc = run_cli("--model=FLAME", f"--dataset={NO_TIME}", f"--data_path={own_root}", cwd=tmp_path)
    line = one_line_error(proc)
    assert "TIME_FIELD" in line and "load_col" in line
    assert str(own_root / NO_TIME / f"{NO_TIME}.inter") in line and "user_id, item_id" in line
    assert not (tmp_path / "log").exists()  # stopped before the logger, let alone the data


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"TIME_FIELD": None}, "which is not set"),  # RecBole would stop on "time_field isn't set"
        ({"load_col": {"inter": ["user_id", "item_id"]}}, "leaves it out"),
        ({"unload_col": {"inter": ["timestamp"]}}, "drops it"),
    ],
)
def test_time_field_settings_that_cannot_work_are_one_line(own_root, overrides, words):
    cfg = Config("SASRec", OWN, config_dict=dict({"data_path": str(own_root)}, **overrides))
    with pytest.raises(ConfigError, match=words) as info:
        check_time_field(cfg)
    assert "TIME_FIELD" in str(info.value) and "\n" not in str(info.value)


def test_models_that_do_not_sort_by_time_need_no_time_column(own_root):
    check_time_field(Config("BPR", NO_TIME, config_dict={"data_path": str(own_root)}))


# --- the bundled amazon-beauty --------------------------------------------------------------
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bundled_amazon_beauty_found_without_a_dataset_folder(workdir):
    assert not (workdir / "dataset").exists()
    cfg = Config("Pop", "amazon-beauty", config_dict={"state": "WARNING"})
    line = provide_dataset(cfg)
    written = workdir / "dataset" / "amazon-beauty" / "amazon-beauty.inter"
    assert str(bundled_file("amazon-beauty")) in line and str(written.parent) in line
    assert (written.parent / "ORIGIN.md").is_file()
    assert sum(1 for _ in written.open()) - 1 == BEAUTY_INTERACTIONS
    if SHARED_BEAUTY.is_file():  # the project's own copy, where this checkout has one
        assert _sha256(written) == _sha256(SHARED_BEAUTY)
    else:  # the checksum its origin note gives
        note = (written.parent / "ORIGIN.md").read_text()
        assert _sha256(written) == re.search(r"sha256\s+`([0-9a-f]{64})`", note).group(1)
    dataset = create_dataset(cfg)
    assert (dataset.user_num - 1, dataset.item_num - 1) == (BEAUTY_USERS, BEAUTY_ITEMS)
    assert dataset.inter_num == BEAUTY_INTERACTIONS  # already 5-core: the filter keeps all
    again = provide_dataset(cfg)
    assert "bundled copy" in again and "wrote" not in again


def test_headline_dataset_prepares_from_an_empty_directory(workdir):
    """The headline command's path: no --data_path, no dataset/ folder, a sequential model."""
    config, _net, _trainer, data = prepare(
        "SASRec",
        "amazon-beauty",
        config_dict={"state": "INFO", "show_progress": False, "hidden_size": 16, "inner_size": 32},
    )
    assert config["data_path"] == str(workdir / "dataset" / "amazon-beauty")
    assert data[0]._dataset.user_num - 1 == BEAUTY_USERS
    log = next((workdir / "log" / "SASRec").glob("*.log")).read_text()
    assert "wrote the copy bundled with recbole_flame" in log


# --- RecBole's download ---------------------------------------------------------------------
def _recbole_url(name: str) -> str:
    return yaml.safe_load((RECBOLE_PROPERTIES / "url.yaml").read_text())[name]


def test_known_dataset_goes_to_download_and_offline_is_one_line(tmp_path, monkeypatch, capsys):
    asked = []

    def offline(url, *args, **kwargs):
        asked.append(url)
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.chdir(tmp_path)
    data_path = tmp_path / "data"
    assert main(["--model=SASRec", "--dataset=ml-1m", f"--data_path={data_path}"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "'ml-1m'" in lines[0] and "no network in this test" in lines[0]
    assert "data_path" in lines[0] and str(data_path / "ml-1m") in lines[0]
    assert asked == [_recbole_url("ml-1m")]
    assert not (data_path / "ml-1m").exists()  # no half-made folder to fool the next run
    # A name RecBole does not know stops at once, without a download attempt.
    assert main(["--model=SASRec", "--dataset=no-such-data", f"--data_path={data_path}"]) == 2
    assert "not found" in capsys.readouterr().err and len(asked) == 1


class _Response(io.BytesIO):
    """What ``urlopen`` returns, as far as RecBole's download helpers use it."""

    def info(self) -> dict[str, str]:
        return {"Content-Length": str(len(self.getvalue()))}


def test_known_dataset_is_downloaded_then_loaded(tmp_path, monkeypatch):
    """RecBole's download path end to end, the server replaced by a zip of a small .inter."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-1m.inter", _own_inter().to_csv(sep="\t", index=False))
    asked = []

    def serve(url, *args, **kwargs):
        asked.append(url)
        return _Response(archive.getvalue())

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    monkeypatch.chdir(tmp_path)
    config, _net, _trainer, data = prepare(
        "SASRec", "ml-1m", config_dict=_tiny(tmp_path / "data", state="INFO")
    )
    folder = tmp_path / "data" / "ml-1m"
    assert set(asked) == {_recbole_url("ml-1m")}
    assert sorted(p.name for p in folder.iterdir()) == ["ml-1m.inter"]  # the zip was removed
    assert data[0]._dataset.user_num - 1 == N_USERS
    log = next((tmp_path / "log" / "SASRec").glob("*.log")).read_text()
    assert f"downloaded RecBole's copy from {_recbole_url('ml-1m')}" in log
