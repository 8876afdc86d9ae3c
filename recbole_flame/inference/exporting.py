"""Export a trained model for use outside this package.

* ``sasrec``: a network that is a SASRec (FLAME's learnable network, which is all FLAME runs at
  inference; a SASRec run; a FLAME stage 1) as a checkpoint whose ``state_dict`` RecBole's own
  ``SASRec`` class loads with ``strict=True``. It is also a checkpoint of this package
  (:func:`~recbole_flame.inference.load_model` reads it back as a SASRec).
* ``onnx``, ``torchscript``: the inference network (SASRec, FLAME's learnable SASRec, TiM4Rec's
  PyTorch path) as a function of the item-id sequence and its length (and, for a time-aware
  TiM4Rec, the timestamps) to the user vector; the item embedding table is written beside it
  (``.items.npy``, row = internal item id, with ``.items.tsv`` mapping rows to external ids), so
  a serving stack scores ``user_vector @ table.T`` (or queries an ANN index) itself.

The input layout of the exported encoders is RecBole's: item ids right-padded with 0 to
``MAX_ITEM_LIST_LENGTH`` (L) columns, the number of each row's real items beside them; any
batch size. The width is fixed at L: TiM4Rec's chunked scan pads by the width modulo its chunk,
arithmetic a trace would freeze at the width it saw.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec
from torch import nn

from recbole_flame.inference.load import LoadedModel, load_model
from recbole_flame.model.tim4rec import TiM4Rec
from recbole_flame.utils.checkpoint import atomic_save, plain, plain_config
from recbole_flame.utils.errors import UserError

TARGETS = ("sasrec", "onnx", "torchscript")
SUFFIX = {"sasrec": "-sasrec.pth", "onnx": ".onnx", "torchscript": ".pt"}
#: ONNX opset of the export (scaled_dot_product_attention needs 14 or later).
OPSET = 18


class ExportError(UserError, ValueError):
    """A model or target that cannot be exported."""


#: The layout RecBole's SASRec needs to score as a model trained with ``position_alignment: end``.
END_LAYOUT = (
    "position_alignment end: RecBole's SASRec numbers positions from the row's start, so give it "
    "each sequence left-padded to MAX_ITEM_LIST_LENGTH (its last item at position L-1) with "
    "item_seq_len = MAX_ITEM_LIST_LENGTH; it then reads the output at the last item, as this "
    "package's model does for right-padded input"
)


class UserEncoder(nn.Module):
    """The inference network as ``(item_seq, item_seq_len[, timestamps]) -> user vector``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(
        self,
        item_seq: torch.Tensor,
        item_seq_len: torch.Tensor,
        timestamps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if timestamps is None:
            return self.network(item_seq, item_seq_len)
        return self.network(item_seq, item_seq_len, timestamps)


def time_aware(network: nn.Module) -> bool:
    return isinstance(network, TiM4Rec) and bool(network.time_aware)


def _check_encodable(loaded: LoadedModel) -> None:
    net = loaded.model
    if isinstance(net, RecBoleSASRec | TiM4Rec):
        return
    raise ExportError(
        f"{loaded.model_name} cannot be exported as a sequence encoder: --to=onnx and "
        "--to=torchscript write SASRec, FLAME (its learnable SASRec) and TiM4Rec"
    )


def _default_out(checkpoint: str | os.PathLike, to: str) -> Path:
    path = Path(checkpoint)
    return path.with_name(path.name.removesuffix(".pth") + SUFFIX[to])


def _writable(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from exc
    return out


def export(
    checkpoint: str | os.PathLike | LoadedModel,
    to: str,
    out: str | os.PathLike | None = None,
    data_path: str | os.PathLike | None = None,
) -> list[Path]:
    """Write ``checkpoint``'s model as ``to`` (``sasrec``, ``onnx`` or ``torchscript``) to
    ``out`` (default: beside the checkpoint); returns the files written."""
    if to not in TARGETS:
        raise ExportError(f"--to must be one of {', '.join(TARGETS)}, not '{to}'")
    if isinstance(checkpoint, LoadedModel):
        loaded = checkpoint
    else:
        # TiM4Rec's PyTorch path (the same weights as its CUDA kernel): what the exporters trace
        overrides = {"ssd_backend": "torch"} if to != "sasrec" else None
        loaded = load_model(checkpoint, "cpu", data_path, _tim4rec_only(checkpoint, overrides))
    target = _writable(Path(out) if out else _default_out(loaded.path, to))
    if to == "sasrec":
        return [export_sasrec(loaded, target)]
    _check_encodable(loaded)
    encoder = UserEncoder(loaded.model.cpu().eval()).eval()
    if to == "onnx":
        files = [export_onnx(loaded, encoder, target)]
    else:
        files = [export_torchscript(loaded, encoder, target)]
    return files + write_item_table(loaded, target)


def _tim4rec_only(checkpoint: str | os.PathLike, overrides: dict | None) -> dict | None:
    """``overrides`` if the checkpoint is a TiM4Rec's (other models do not know the key)."""
    if not overrides:
        return None
    from recbole_flame.inference.load import rebuild_entry
    from recbole_flame.utils.checkpoint import load_checkpoint

    record = rebuild_entry(load_checkpoint(checkpoint), checkpoint)
    return overrides if record["network"] == "TiM4Rec" else None


def export_sasrec(loaded: LoadedModel, out: Path) -> Path:
    """The network's weights as a checkpoint RecBole's ``SASRec`` loads with ``strict=True``."""
    net = loaded.model
    if not isinstance(net, RecBoleSASRec):
        raise ExportError(
            f"--to=sasrec: {loaded.model_name}'s network is a {type(net).__name__}, not a SASRec "
            "(FLAME's learnable network, a SASRec run and a FLAME stage 1 are)"
        )
    record = dict(loaded.checkpoint["rebuild"])
    record["network"] = "SASRec"
    alignment = loaded.config["position_alignment"] or "start"
    config = plain_config(loaded.config)
    state = {
        "format": "recbole_flame/1",
        "config": config,
        "epoch": loaded.checkpoint.get("epoch", 0),
        "cur_step": 0,
        "best_valid_score": loaded.checkpoint.get("best_valid_score", 0.0),
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "other_parameter": None,
        "rebuild": record,
        "export": plain(
            {
                "from": str(loaded.path),
                "model": loaded.model_name,
                "position_alignment": alignment,
                "layout": END_LAYOUT if alignment == "end" else "RecBole's: right-padded",
            }
        ),
    }
    atomic_save(state, out)
    return out


def example_inputs(loaded: LoadedModel, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """A right-padded batch of real item ids, L wide (the tracer needs one)."""
    max_len = loaded.config["MAX_ITEM_LIST_LENGTH"]
    gen = torch.Generator().manual_seed(0)
    items = torch.randint(1, max(loaded.n_items, 2), (batch, max_len), generator=gen)
    lengths = torch.tensor([max_len] + [max(1, max_len // 2)] * (batch - 1))
    steps = torch.arange(max_len).unsqueeze(0)
    items = items.masked_fill(steps >= lengths.unsqueeze(1), 0)
    inputs = (items, lengths)
    if time_aware(loaded.model):
        times = torch.cumsum(torch.rand(batch, max_len, generator=gen) * 1000, dim=1)
        inputs = (*inputs, times.masked_fill(steps >= lengths.unsqueeze(1), 0.0))
    return inputs


def _input_names(loaded: LoadedModel) -> list[str]:
    names = ["item_seq", "item_seq_len"]
    return names + ["timestamps"] if time_aware(loaded.model) else names


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """The exporters' expected noise off: TorchScript's warnings that a shape check is traced as
    a constant (the width is fixed, see the module doc) and the ONNX exporter's log lines
    about operators of packages this model does not use (torchvision)."""
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        onnx_log.setLevel(level)


def export_onnx(loaded: LoadedModel, encoder: UserEncoder, out: Path) -> Path:
    """``encoder`` as ONNX: any batch size, rows of width ``MAX_ITEM_LIST_LENGTH``."""
    try:
        import onnx  # noqa: F401  (torch's exporter needs it; say so in one line if missing)
    except ImportError as exc:
        raise ExportError(
            f"--to=onnx needs the onnx package ({exc.name} is not installed): "
            "pip install 'recbole_flame[export]'"
        ) from exc
    inputs = example_inputs(loaded)
    names = _input_names(loaded)
    # torch's TorchScript-based exporter: the torch.export-based one (dynamo=True) writes a
    # graph that turns TiM4Rec's time LayerNorm of all-equal timestamps (0 * rsqrt(0 + eps)
    # in float64) into NaN, where PyTorch gives 0.
    with torch.no_grad(), _quiet_exporters():
        torch.onnx.export(
            encoder,
            inputs,
            str(out),
            input_names=names,
            output_names=["user_vector"],
            dynamic_axes={name: {0: "batch"} for name in [*names, "user_vector"]},
            opset_version=OPSET,
            dynamo=False,
        )
    return out


def export_torchscript(loaded: LoadedModel, encoder: UserEncoder, out: Path) -> Path:
    """``encoder`` traced by TorchScript: any batch size, rows of width ``MAX_ITEM_LIST_LENGTH``
    (a trace keeps the shape arithmetic of the width it saw, so the width is fixed)."""
    with torch.no_grad(), _quiet_exporters():
        traced = torch.jit.trace(encoder, example_inputs(loaded), check_trace=False)
    traced.save(str(out))
    return out


def write_item_table(loaded: LoadedModel, out: Path) -> list[Path]:
    """The item embedding table beside ``out`` (float32, row = internal id; row 0 is padding),
    the external id of each row, and what the encoder expects."""
    stem = out.with_suffix("")
    table = loaded.model.item_embedding.weight.detach().cpu().float().numpy()
    npy = stem.with_name(stem.name + ".items.npy")
    np.save(npy, table)
    tokens = stem.with_name(stem.name + ".items.tsv")
    ids = loaded.dataset.field2id_token[loaded.iid_field]
    tokens.write_text("".join(f"{row}\t{token}\n" for row, token in enumerate(ids)), "utf-8")
    meta = stem.with_name(stem.name + ".json")
    alignment = loaded.config["position_alignment"] or "start"
    meta.write_text(
        json.dumps(
            {
                "model": loaded.model_name,
                "network": type(loaded.model).__name__,
                "inputs": _input_names(loaded),
                "output": "user_vector",
                "max_seq_length": int(loaded.config["MAX_ITEM_LIST_LENGTH"]),
                "padding": "right, item id 0, to max_seq_length columns; item_seq_len = the "
                "number of real items",
                "position_alignment": alignment,
                "score": "user_vector @ items.T; row 0 of the table is padding, never rank it",
                "items": npy.name,
                "item_ids": tokens.name,
            },
            indent=2,
        )
        + "\n",
        "utf-8",
    )
    return [npy, tokens, meta]
