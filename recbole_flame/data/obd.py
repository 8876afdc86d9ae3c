"""The Open Bandit Dataset's sample, as RecBole atomic files for CTR prediction.

The Open Bandit Dataset (Saito et al., "Open Bandit Dataset and Pipeline", NeurIPS 2021 Datasets
and Benchmarks) logs item recommendations shown on ZOZOTOWN, a fashion e-commerce site, and
whether they were clicked. The ``obp`` package (PyPI; version 0.4.1 is the newest for Python
3.11) ships a small sample of it inside its wheel: 10,000 impressions for each of two logging
policies (``random``, ``bts``) and three campaigns (``all``, ``men``, ``women``). This module
reads it with obp's own loader (:class:`obp.dataset.OpenBanditDataset`, whose ``load_raw_data``
reads the bundled csv files) and writes:

- ``<name>.inter``: ``user_id`` (token; the dataset has no user ids, so a user is the profile of
  its four hashed user features), ``item_id`` (token, ``<campaign>-<item_id>``: each campaign
  numbers its own items), ``campaign`` and ``position`` (tokens), ``affinity`` (float, the user's
  ``user-item_affinity`` for the shown item), ``click`` (float label) and ``timestamp`` (float,
  seconds);
- ``<name>.user``: ``user_id`` and ``user_feature_0..3`` (tokens);
- ``<name>.item``: ``item_id``, ``item_feature_0`` (float) and ``item_feature_1..3`` (tokens).

The logging policy and its propensity score are not written: they describe the logger, not the
impression. Nothing is filtered or resampled.

    python -m recbole_flame.data.obd --out benchmarks/data
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
USER_FEATURES = tuple(f"user_feature_{i}" for i in range(4))
ITEM_TOKEN_FEATURES = tuple(f"item_feature_{i}" for i in range(1, 4))


def load_open_bandit(
    behavior_policy: str, campaign: str, data_path: Path | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(impressions, item_context)`` of one logging policy and campaign, read by obp's
    ``OpenBanditDataset`` (``data_path=None``: the sample inside obp's wheel)."""
    try:
        from obp.dataset import OpenBanditDataset
    except ImportError as exc:
        raise ImportError(
            "the Open Bandit Dataset sample ships with obp: pip install 'recbole_flame[obd]'"
        ) from exc

    class RawOpenBanditDataset(OpenBanditDataset):
        """obp's loader without its bandit feature engineering (``pre_process``, meant to be
        overridden; obp 0.4.1's also fails under pandas 2)."""

        def pre_process(self) -> None:
            pass

    dataset = RawOpenBanditDataset(
        behavior_policy=behavior_policy, campaign=campaign, data_path=data_path
    )
    return dataset.data, dataset.item_context


def open_bandit_frames(
    parts: Sequence[tuple[str, str]], data_path: Path | None = None
) -> dict[str, pd.DataFrame]:
    """The atomic tables (``inter``, ``user``, ``item``) of the given (policy, campaign) parts,
    columns already named ``field:type``."""
    inters, items = [], {}
    for policy, campaign in parts:
        data, item_context = load_open_bandit(policy, campaign, data_path)
        rows = data.reset_index(drop=True)
        item = rows["item_id"].astype(int)
        affinity = rows.filter(like="user-item_affinity_").to_numpy()
        columns = [c for c in rows.columns if c.startswith("user-item_affinity_")]
        order = [int(c.rsplit("_", 1)[1]) for c in columns]
        position_of = {k: j for j, k in enumerate(order)}
        inter = pd.DataFrame(
            {
                "user_id:token": rows[list(USER_FEATURES)].astype(str).agg("|".join, axis=1),
                "item_id:token": campaign + "-" + item.astype(str),
                "campaign:token": campaign,
                "position:token": rows["position"].astype(int).astype(str),
                "affinity:float": affinity[range(len(rows)), item.map(position_of).to_numpy()],
                "click:float": rows["click"].astype(float),
                "timestamp:float": pd.to_datetime(rows["timestamp"]).astype("int64") / 1e9,
            }
        )
        for feature in USER_FEATURES:
            inter[feature] = rows[feature].astype(str)
        inters.append(inter)
        context = item_context.copy()
        context["item_id:token"] = campaign + "-" + context["item_id"].astype(int).astype(str)
        items[campaign] = context
    inter = pd.concat(inters, ignore_index=True).sort_values("timestamp:float", kind="stable")
    user = (
        inter[["user_id:token", *USER_FEATURES]]
        .drop_duplicates("user_id:token")
        .rename(columns={f: f"{f}:token" for f in USER_FEATURES})
        .sort_values("user_id:token")
    )
    item = pd.concat(items.values(), ignore_index=True).drop_duplicates("item_id:token")
    item = pd.DataFrame(
        {
            "item_id:token": item["item_id:token"],
            "item_feature_0:float": item["item_feature_0"].astype(float),
            **{f"{f}:token": item[f].astype(str) for f in ITEM_TOKEN_FEATURES},
        }
    ).sort_values("item_id:token")
    return {
        "inter": inter.drop(columns=list(USER_FEATURES)).reset_index(drop=True),
        "user": user.reset_index(drop=True),
        "item": item.reset_index(drop=True),
    }


def write_open_bandit(
    out_dir: str | Path,
    name: str = "obd",
    parts: Sequence[tuple[str, str]] | None = None,
    data_path: Path | None = None,
) -> dict[str, Path]:
    """Write ``<out_dir>/<name>/<name>.{inter,user,item}`` (every policy and campaign unless
    ``parts`` says otherwise); returns the paths."""
    parts = list(parts) if parts is not None else [(p, c) for p in POLICIES for c in CAMPAIGNS]
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for suffix, frame in open_bandit_frames(parts, data_path).items():
        path = folder / f"{name}.{suffix}"
        frame.to_csv(path, sep="\t", index=False)
        written[suffix] = path
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/data", help="the data_path to write into")
    parser.add_argument("--name", default="obd", help="dataset name (folder and file stem)")
    args = parser.parse_args(argv)
    for suffix, path in write_open_bandit(args.out, args.name).items():
        print(f"{suffix}: {path}")


if __name__ == "__main__":
    main()
