"""``export``: FLAME as a checkpoint RecBole's own SASRec loads, and the inference networks as
ONNX and TorchScript encoders (item sequence + length -> user vector) with the item table.

References: the FLAME class itself with every weight of its checkpoint (not the loader's
learnable-only network), RecBole's ``SASRec`` class, the package's own models in eager PyTorch.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction
from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec

from recbole_flame.inference import export, load_model
from recbole_flame.model.flame import FLAME
from recbole_flame.utils.errors import UserError
from tests.conftest import TINY, seq_config

TIM4REC = {"hidden_size": 16, "d_state": 8, "head_dim": 8, "chunk_size": 4, "n_layers": 2}
L = 10  # MAX_ITEM_LIST_LENGTH of seq_config


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """One epoch each: SASRec, FLAME with each position alignment, TiM4Rec (time-aware)."""
    from recbole_flame.quick_start import run

    folder = tmp_path_factory.mktemp("export")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        configs = {
            "SASRec": ("SASRec", seq_config(data_root)),
            "FLAME-end": ("FLAME", seq_config(data_root, stage1_epochs=1)),  # FLAME's default
            "FLAME-start": (
                "FLAME",
                seq_config(data_root, stage1_epochs=1, position_alignment="start"),
            ),
            "TiM4Rec": ("TiM4Rec", seq_config(data_root, **TIM4REC)),
        }
        return {
            label: run(model, TINY, config_dict=config)["checkpoint"]
            for label, (model, config) in configs.items()
        }
    finally:
        os.chdir(cwd)


def _batch(n_items: int, time_aware: bool = False) -> Interaction:
    """Six right-padded sequences of lengths 1 .. L (a batch size no export traced with); the
    last row's timestamps are all equal (zero time gaps)."""
    gen = torch.Generator().manual_seed(3)
    lengths = torch.tensor([1, 3, L, 5, L - 1, L])
    items = torch.randint(1, n_items, (len(lengths), L), generator=gen)
    real = torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)
    fields = {"item_id_list": items.masked_fill(~real, 0), "item_length": lengths}
    if time_aware:
        times = 8.8e8 + torch.cumsum(torch.rand(len(lengths), L, generator=gen) * 5e4, dim=1)
        times[-1] = 8.8e8
        fields["timestamp_list"] = times.masked_fill(~real, 0.0).float()
    return Interaction(fields)


def _flame_scores(path: str, batch: Interaction) -> torch.Tensor:
    """FLAME's own scores: the FLAME class, every weight of the checkpoint loaded."""
    loaded = load_model(path)
    flame = FLAME(loaded.config, loaded.splits[0]._dataset)
    flame.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    with torch.no_grad():
        return flame.eval().full_sort_predict(batch)


def _left_padded(batch: Interaction) -> Interaction:
    """The layout RecBole's SASRec needs for position_alignment end: each row's items at the
    row's end, read at position L - 1."""
    seq, lengths = batch["item_id_list"], batch["item_length"]
    out = torch.zeros_like(seq)
    for row, n in enumerate(lengths.tolist()):
        out[row, L - n :] = seq[row, :n]
    return Interaction({"item_id_list": out, "item_length": torch.full_like(lengths, L)})


@pytest.mark.parametrize("alignment", ["start", "end"])
def test_flame_as_a_recbole_sasrec_checkpoint_scores_as_flame(trained, tmp_path, alignment):
    path = trained[f"FLAME-{alignment}"]
    (out,) = export(path, "sasrec", tmp_path / "flame-sasrec.pth")
    state = torch.load(out, weights_only=True)  # plain data only
    loaded = load_model(path)
    assert loaded.config["position_alignment"] == alignment
    recbole_net = RecBoleSASRec(loaded.config, loaded.splits[0]._dataset)
    recbole_net.load_state_dict(state["state_dict"], strict=True)
    batch = _batch(loaded.n_items)
    want = _flame_scores(path, batch)
    given = _left_padded(batch) if alignment == "end" else batch
    with torch.no_grad():
        got = recbole_net.eval().full_sort_predict(given)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    if alignment == "start":  # RecBole's layout itself would not do for end
        assert state["export"]["layout"] == "RecBole's: right-padded"
    else:
        assert "left-padded" in state["export"]["layout"]
    # ... and this package reads it back as a SASRec checkpoint
    again = load_model(out)
    assert type(again.model).__name__ == "SASRec"
    with torch.no_grad():
        torch.testing.assert_close(again.model.full_sort_predict(batch), want, atol=1e-6, rtol=0)


def _package_scores(label: str, path: str, batch: Interaction) -> torch.Tensor:
    if label.startswith("FLAME"):
        return _flame_scores(path, batch)
    net = load_model(path).model
    with torch.no_grad():
        return net.full_sort_predict(batch)


@pytest.mark.parametrize("label", ["SASRec", "FLAME-end", "TiM4Rec"])
@pytest.mark.parametrize("to", ["onnx", "torchscript"])
def test_exported_encoders_score_as_the_package(trained, tmp_path, label, to):
    if to == "onnx":
        ort = pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
    path = trained[label]
    files = export(path, to, tmp_path / f"model.{'onnx' if to == 'onnx' else 'pt'}")
    model_file, table_file, ids_file, meta_file = files
    meta = json.loads(meta_file.read_text())
    table = np.load(table_file)
    loaded = load_model(path)
    batch = _batch(loaded.n_items, time_aware="timestamps" in meta["inputs"])
    inputs = [batch["item_id_list"], batch["item_length"]]
    if label == "TiM4Rec":
        assert meta["inputs"] == ["item_seq", "item_seq_len", "timestamps"]
        inputs.append(batch["timestamp_list"])
    if to == "onnx":
        session = ort.InferenceSession(str(model_file))
        names = [i.name for i in session.get_inputs()]
        assert names == meta["inputs"]
        (vectors,) = session.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})
    else:
        with torch.no_grad():
            vectors = torch.jit.load(str(model_file))(*inputs).numpy()
    want = _package_scores(label, path, batch).numpy()
    assert np.isfinite(want).all()
    np.testing.assert_allclose(vectors @ table.T, want, atol=1e-5, rtol=0)
    # the table's rows are internal ids; the tsv names each row's external id
    rows = [line.split("\t") for line in ids_file.read_text().splitlines()]
    tokens = loaded.dataset.field2id_token["item_id"]
    assert [r[1] for r in rows] == [str(t) for t in tokens] and table.shape[0] == len(tokens)


def test_what_cannot_be_exported_is_one_line(trained, tmp_path):
    with pytest.raises(UserError) as exc:
        export(trained["TiM4Rec"], "sasrec", tmp_path / "x.pth")
    assert "not a SASRec" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(UserError) as exc:
        export(trained["SASRec"], "tflite", tmp_path / "x")
    assert "sasrec, onnx, torchscript" in str(exc.value)


def test_cli_writes_the_files_and_refuses_in_one_line(trained, tmp_path, capsys):
    from recbole_flame.cli import main

    out = tmp_path / "enc.pt"
    assert (
        main(["export", f"--checkpoint={trained['SASRec']}", "--to=torchscript", f"--out={out}"])
        == 0
    )
    printed = capsys.readouterr().out
    assert f"written: {out}" in printed and out.is_file()
    assert (tmp_path / "enc.items.npy").is_file()
    for args in (["--to=sasrec"], ["--to=nothing"]):
        code = main(["export", f"--checkpoint={trained['TiM4Rec']}", *args])
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code == 2 and len(err) == 1, err
