"""Using a trained model: ``load_model`` rebuilds the run, ``recommend`` gives top-k rows.

References are computed here without the package's code: each user's history from the atomic
file with pandas, RecBole's own ``SASRec`` class holding the checkpoint's weights, BPR's
embeddings multiplied by hand, DeepFM's ``predict`` called one item at a time.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from recbole.data.interaction import Interaction
from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec

from recbole_flame.inference import load_model, recommend
from recbole_flame.utils.errors import UserError
from tests.conftest import TINY, base_config, ctr_config, seq_config

K = 5


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """One epoch each of SASRec, FLAME, BPR and DeepFM on the tiny slice: checkpoint paths and
    the test results the runs reported."""
    from recbole_flame.quick_start import run

    folder = tmp_path_factory.mktemp("trained")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        configs = {
            "SASRec": seq_config(data_root),
            "FLAME": seq_config(data_root, stage1_epochs=1),
            "BPR": base_config(
                data_root,
                embedding_size=16,
                metrics=["Recall", "NDCG"],
                topk=[10],
                valid_metric="NDCG@10",
            ),
            "DeepFM": ctr_config(data_root, mlp_hidden_size=[16]),
        }
        out = {}
        for name, config in configs.items():
            result = run(name, TINY, config_dict=config)
            out[name] = (result["checkpoint"], result["test_result"])
        return out
    finally:
        os.chdir(cwd)


def _inter(data_root: Path) -> pd.DataFrame:
    frame = pd.read_csv(data_root / TINY / f"{TINY}.inter", sep="\t", dtype=str)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame


def _history(frame: pd.DataFrame, user: str) -> list[str]:
    """The user's items by time, ties in file order (RecBole's stable sort). RecBole holds a
    float field in float32, where timestamps around 8.8e8 s fall on 64 s steps: its sequences
    order by those values, so this does too."""
    rows = frame[frame["user_id"] == user].copy()
    rows["t"] = rows["timestamp"].astype(np.float32)
    return list(rows.sort_values("t", kind="stable")["item_id"])


def _top(scores: np.ndarray, banned: set[int], k: int) -> list[tuple[int, float]]:
    """Top k ids by score, banned ids and the padding id 0 left out."""
    order = sorted(
        (i for i in range(len(scores)) if i != 0 and i not in banned), key=lambda i: -scores[i]
    )
    return [(i, float(scores[i])) for i in order[:k]]


def _recbole_sasrec(loaded, path: str) -> RecBoleSASRec:
    """RecBole's own SASRec with the checkpoint's weights (FLAME's learnable ones)."""
    weights = torch.load(path, weights_only=True)["state_dict"]
    if any(k.startswith("learnable.") for k in weights):
        weights = {k[len("learnable.") :]: v for k, v in weights.items() if "learnable." in k}
    net = RecBoleSASRec(loaded.config, loaded.splits[0]._dataset)
    net.load_state_dict(weights)
    return net.eval()


def _sasrec_scores(net, loaded, items: list[str]) -> np.ndarray:
    max_len = loaded.config["MAX_ITEM_LIST_LENGTH"]
    ids = [int(loaded.dataset.token2id("item_id", t)) for t in items][-max_len:]
    seq = torch.zeros(1, max_len, dtype=torch.long)
    if loaded.config["position_alignment"] == "end":
        # RecBole numbers positions from the row's start: the last item at L-1 is a row
        # left-padded to L, read at its end (FLAME's default layout, the authors')
        seq[0, max_len - len(ids) :] = torch.tensor(ids)
        length = max_len
    else:
        seq[0, : len(ids)] = torch.tensor(ids)
        length = len(ids)
    batch = Interaction({"item_id_list": seq, "item_length": torch.tensor([length])})
    with torch.no_grad():
        return net.full_sort_predict(batch)[0].numpy()


def _as_rows(loaded, user: str, top: list[tuple[int, float]]) -> pd.DataFrame:
    tokens = loaded.dataset.field2id_token["item_id"]
    return pd.DataFrame(
        {
            "user": [user] * len(top),
            "rank": list(range(1, len(top) + 1)),
            "item": [str(tokens[i]) for i, _ in top],
            "score": [s for _, s in top],
        }
    )


def _same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == ["user", "rank", "item", "score"]
    assert (
        got[["user", "rank", "item"]].values.tolist()
        == want[["user", "rank", "item"]].values.tolist()
    )
    np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), atol=1e-5)


# --- load -----------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["SASRec", "FLAME", "BPR", "DeepFM"])
def test_a_loaded_run_scores_its_test_split_as_the_run_did(trained, model, workdir):
    from recbole_flame.trainer import Trainer

    path, test_result = trained[model]
    loaded = load_model(path)
    # the rebuilt config, splits and weights give the test result the run logged
    trainer = Trainer(loaded.config, loaded.model)
    again = trainer.evaluate(loaded.splits[2], load_best_model=False)
    assert dict(again) == pytest.approx(dict(test_result), abs=1e-4)
    assert loaded.model_name == model and not loaded.model.training


def test_flame_loads_its_learnable_network_alone(trained):
    path, _ = trained["FLAME"]
    loaded = load_model(path)
    saved = torch.load(path, weights_only=True)["state_dict"]
    own = loaded.model.state_dict()
    assert type(loaded.model).__name__ == "SASRec"
    assert set(own) == {k[len("learnable.") :] for k in saved if k.startswith("learnable.")}
    for key, value in own.items():
        assert torch.equal(value, saved[f"learnable.{key}"])


def test_a_flame_stage_1_loads_as_the_frozen_sasrec(trained):
    path, _ = trained["FLAME"]
    (stage1,) = Path(path).parent.glob("flame_stage1/*.pth")
    loaded = load_model(stage1)
    assert loaded.model_name == "FLAME" and type(loaded.model).__name__ == "SASRec"
    frozen = {
        k[len("frozen.") :]: v
        for k, v in torch.load(path, weights_only=True)["state_dict"].items()
        if k.startswith("frozen.")
    }
    own = loaded.model.state_dict()
    assert set(own) == set(frozen) and all(torch.equal(own[k], frozen[k]) for k in own)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_a_device_this_machine_lacks_is_one_line(trained):
    with pytest.raises(UserError) as exc:
        load_model(trained["SASRec"][0], device="cuda")
    assert "CUDA is not available" in str(exc.value) and "\n" not in str(exc.value)


# --- recommend --------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["SASRec", "FLAME"])
def test_users_get_recbole_sasrecs_top_k_over_their_whole_history(trained, data_root, model):
    path, _ = trained[model]
    loaded = load_model(path)
    net = _recbole_sasrec(loaded, path)
    frame = _inter(data_root)
    users = ["1", "7", "30"]
    got = recommend(loaded, users=users, k=K)
    want = []
    for user in users:
        items = _history(frame, user)  # training, validation and test interactions
        banned = {int(loaded.dataset.token2id("item_id", t)) for t in items}
        want.append(_as_rows(loaded, user, _top(_sasrec_scores(net, loaded, items), banned, K)))
    _same_rows(got, pd.concat(want, ignore_index=True))
    for user in users:
        assert not set(got[got.user == user]["item"]) & set(_history(frame, user))


@pytest.mark.parametrize("model", ["SASRec", "FLAME"])
def test_a_new_sequence_is_scored_without_retraining(trained, model):
    path, _ = trained[model]
    loaded = load_model(path)
    net = _recbole_sasrec(loaded, path)
    sequence = ["50", "172", "133", "1", "50"]
    got = recommend(loaded, sequences=[sequence], k=K)
    banned = {int(loaded.dataset.token2id("item_id", t)) for t in sequence}
    want = _as_rows(loaded, "sequence-1", _top(_sasrec_scores(net, loaded, sequence), banned, K))
    _same_rows(got, want)
    # keep_history: the sequence's own items may come back
    kept = recommend(loaded, sequences=[sequence], k=K, keep_history=True)
    want = _as_rows(loaded, "sequence-1", _top(_sasrec_scores(net, loaded, sequence), set(), K))
    _same_rows(kept, want)


def test_candidates_restrict_the_ranking(trained):
    path, _ = trained["SASRec"]
    loaded = load_model(path)
    net = _recbole_sasrec(loaded, path)
    sequence = ["50", "172"]
    candidates = ["1", "2", "3", "4", "50", "181", "258"]
    got = recommend(loaded, sequences=[sequence], k=3, candidates=candidates)
    ids = {int(loaded.dataset.token2id("item_id", t)) for t in candidates} - {
        int(loaded.dataset.token2id("item_id", t)) for t in sequence
    }
    banned = set(range(loaded.n_items)) - ids
    want = _as_rows(loaded, "sequence-1", _top(_sasrec_scores(net, loaded, sequence), banned, 3))
    _same_rows(got, want)


def test_a_general_model_ranks_out_every_interacted_item(trained, data_root):
    path, _ = trained["BPR"]
    loaded = load_model(path)
    weights = torch.load(path, weights_only=True)["state_dict"]
    frame = _inter(data_root)
    got = recommend(loaded, users=["3", "12"], k=K)
    want = []
    for user in ["3", "12"]:
        u = int(loaded.dataset.token2id("user_id", user))
        scores = (weights["item_embedding.weight"] @ weights["user_embedding.weight"][u]).numpy()
        banned = {int(loaded.dataset.token2id("item_id", t)) for t in _history(frame, user)}
        want.append(_as_rows(loaded, user, _top(scores, banned, K)))
    _same_rows(got, pd.concat(want, ignore_index=True))


def test_a_ctr_model_scores_every_item_in_chunks(trained, data_root, monkeypatch):
    import recbole_flame.inference.recommendation as recommendation

    monkeypatch.setattr(recommendation, "CTR_CHUNK", 97)  # many chunks, merged
    path, _ = trained["DeepFM"]
    loaded = load_model(path)
    frame = _inter(data_root)
    user = "5"
    got = recommend(loaded, users=[user], k=K)
    # One item at a time: the user's and the item's features joined by RecBole's dataset.
    u = int(loaded.dataset.token2id("user_id", user))
    scores = np.full(loaded.n_items, -np.inf)
    with torch.no_grad():
        for i in range(1, loaded.n_items):
            pair = loaded.dataset.join(
                Interaction({"user_id": torch.tensor([u]), "item_id": torch.tensor([i])})
            )
            scores[i] = float(loaded.model.predict(pair)[0])
    banned = {int(loaded.dataset.token2id("item_id", t)) for t in _history(frame, user)}
    _same_rows(got, _as_rows(loaded, user, _top(scores, banned, K)))


def test_fewer_rows_only_when_fewer_items_are_left(trained):
    path, _ = trained["SASRec"]
    loaded = load_model(path)
    got = recommend(loaded, sequences=[["1"]], k=3, candidates=["1", "2", "3"])
    assert set(got["item"]) == {"2", "3"} and list(got["rank"]) == [1, 2]


# --- bad input: one line ------------------------------------------------------------------------
def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_unknown_users_and_items_are_named(trained):
    loaded = load_model(trained["SASRec"][0])
    with pytest.raises(UserError) as exc:
        recommend(loaded, users=["1", "99999", "nobody"])
    text = _one_line(exc)
    assert "99999, nobody" in text and "60 users" in text and "--sequence" in text
    with pytest.raises(UserError) as exc:
        recommend(loaded, sequences=[["50", "no-such-item"]])
    assert "no-such-item" in _one_line(exc) and f"{loaded.n_items - 1} items" in str(exc.value)
    with pytest.raises(UserError):
        recommend(loaded, users=["1"], k=0)
    with pytest.raises(UserError):
        recommend(loaded, users=["1"], sequences=[["50"]])


def test_a_new_user_for_a_general_or_ctr_model_says_why(trained):
    for model in ("BPR", "DeepFM"):
        loaded = load_model(trained[model][0])
        with pytest.raises(UserError) as exc:
            recommend(loaded, sequences=[["50", "172"]])
        assert f"{model} cannot score a new sequence" in _one_line(exc)
        with pytest.raises(UserError) as exc:
            recommend(loaded, users=["99999"])
        assert "scores only the users it was trained on" in _one_line(exc)


def test_files_that_cannot_be_rebuilt_are_one_line(trained, tmp_path, data_root):
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(UserError) as exc:
        load_model(not_a_checkpoint)
    assert "notes.pth" in _one_line(exc)

    # A checkpoint written before the rebuild record existed (committed with the results).
    old = Path(__file__).resolve().parent.parent / (
        "benchmarks/results/flame_ml100k/ckpt/FLAME-seed1/FLAME-Nov-22-2026_23-47-28-56b892.pth"
    )
    if old.is_file():
        with pytest.raises(UserError) as exc:
            load_model(old)
        assert "no 'rebuild' record" in _one_line(exc)

    # The dataset is not where the run found it.
    with pytest.raises(UserError) as exc:
        load_model(trained["SASRec"][0], data_path=tmp_path / "elsewhere")
    text = _one_line(exc)
    assert f"'{TINY}'" in text and "data_path" in text


def test_a_changed_dataset_is_refused(trained, tmp_path, data_root):
    changed = tmp_path / TINY
    shutil.copytree(data_root / TINY, changed)
    inter = changed / f"{TINY}.inter"
    lines = inter.read_text().splitlines()
    inter.write_text("\n".join(lines[:-400]) + "\n")  # the last users' rows gone
    with pytest.raises(UserError) as exc:
        load_model(trained["SASRec"][0], data_path=tmp_path)
    assert "not the data it was trained on" in _one_line(exc)


# --- command line -------------------------------------------------------------------------------
def test_cli_prints_and_writes_the_rows(trained, tmp_path, capsys):
    from recbole_flame.cli import main

    path = trained["SASRec"][0]
    out = tmp_path / "recs.csv"
    users = tmp_path / "users.txt"
    users.write_text("1\n\n7\n")
    assert (
        main(
            ["recommend", f"--checkpoint={path}", f"--users_file={users}", "--k=4", f"--out={out}"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    written = pd.read_csv(out, dtype={"user": str, "item": str})
    expected = recommend(path, users=["1", "7"], k=4)
    assert (
        written[["user", "rank", "item"]].values.tolist()
        == expected[["user", "rank", "item"]].values.tolist()
    )
    assert len(written) == 8 and "written:" in printed
    assert main(["recommend", f"--checkpoint={path}", "--sequence=50,172,133", "--k=2"]) == 0
    assert "sequence-1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, words",
    [
        (["--users=1,424242"], "424242"),
        (["--sequence=50,xyz"], "xyz"),
        (["--users=1", "--sequence=50"], "exactly one of"),
        ([], "exactly one of"),
        (["--users_file=/no/such/file"], "does not exist"),
        (["--users=1", "--timestamps=1,2"], "--timestamps goes with --sequence"),
    ],
)
def test_cli_bad_input_is_one_line(trained, capsys, args, words):
    from recbole_flame.cli import main

    code = main(["recommend", f"--checkpoint={trained['SASRec'][0]}", *args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and words in err[0], err


def test_cli_bad_checkpoint_is_one_line(tmp_path, capsys):
    from recbole_flame.cli import main

    code = main(["recommend", f"--checkpoint={tmp_path / 'missing.pth'}", "--users=1"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "missing.pth" in err[0]
