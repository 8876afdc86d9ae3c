"""The Open Bandit Dataset converter against the csv files inside obp's wheel, read directly
with pandas, and RecBole loading what it writes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

obp = pytest.importorskip("obp")

from recbole_flame.data.obd import CAMPAIGNS, POLICIES, write_open_bandit  # noqa: E402

OBD = Path(obp.__file__).parent / "dataset" / "obd"


def _raw(policy: str, campaign: str) -> pd.DataFrame:
    return pd.read_csv(OBD / policy / campaign / f"{campaign}.csv", index_col=0)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, pd.DataFrame]:
    paths = write_open_bandit(
        tmp_path_factory.mktemp("obd"), parts=[("random", "men"), ("bts", "all")]
    )
    return {k: pd.read_csv(p, sep="\t", dtype=str) for k, p in paths.items()}


def test_every_impression_and_click_is_kept(written):
    inter = written["inter"]
    raw = {c: _raw(p, c) for p, c in [("random", "men"), ("bts", "all")]}
    assert len(inter) == sum(len(r) for r in raw.values())
    for campaign, rows in raw.items():
        mine = inter[inter["campaign:token"] == campaign]
        assert len(mine) == len(rows)
        assert mine["click:float"].astype(float).sum() == rows["click"].sum()
        # Per item: the same impressions and clicks.
        ours = mine.groupby("item_id:token")["click:float"].apply(lambda s: s.astype(float).sum())
        theirs = rows.groupby("item_id")["click"].sum()
        theirs.index = [f"{campaign}-{i}" for i in theirs.index]
        assert ours.sort_index().tolist() == theirs.sort_index().astype(float).tolist()
    times = inter["timestamp:float"].astype(float)
    assert times.is_monotonic_increasing


def test_features_are_the_raw_rows(written):
    inter, user, item = written["inter"], written["user"], written["item"]
    rows = _raw("random", "men").sort_values("timestamp").reset_index(drop=True)
    mine = inter[inter["campaign:token"] == "men"].reset_index(drop=True)
    users = user.set_index("user_id:token")
    for i in (0, 17, len(rows) - 1):
        raw = rows.iloc[i]
        ours = mine.iloc[i]
        assert ours["item_id:token"] == f"men-{raw['item_id']}"
        assert ours["position:token"] == str(raw["position"])
        affinity = raw[f"user-item_affinity_{raw['item_id']}"]
        assert float(ours["affinity:float"]) == pytest.approx(affinity)
        profile = users.loc[ours["user_id:token"]]
        for f in range(4):
            assert profile[f"user_feature_{f}:token"] == raw[f"user_feature_{f}"]
    context = pd.read_csv(OBD / "random" / "men" / "item_context.csv", index_col=0)
    items = item.set_index("item_id:token")
    for _, raw in context.iterrows():
        ours = items.loc[f"men-{raw['item_id']}"]
        assert float(ours["item_feature_0:float"]) == pytest.approx(raw["item_feature_0"])
        assert ours["item_feature_3:token"] == raw["item_feature_3"]
    assert len(item) == len(context) + 80  # the men's campaign's items and the all campaign's


def test_recbole_loads_the_files(tmp_path, monkeypatch):
    from recbole.data import create_dataset

    from recbole_flame.config import Config

    monkeypatch.chdir(tmp_path)
    write_open_bandit(tmp_path / "data", parts=[(p, c) for p in POLICIES for c in CAMPAIGNS][:1])
    config = Config(
        "DeepFM",
        "obd",
        config_dict={
            "data_path": str(tmp_path / "data"),
            "LABEL_FIELD": "click",
            "load_col": None,
            "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "mode": "labeled"},
            "train_neg_sample_args": None,
            "gpu_id": "",
        },
    )
    dataset = create_dataset(config)
    raw = _raw("random", "all")
    assert len(dataset) == len(raw)
    assert float(dataset.inter_feat["click"].sum()) == raw["click"].sum()
    assert dataset.item_num - 1 == raw["item_id"].nunique()  # minus RecBole's padding id
