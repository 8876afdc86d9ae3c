"""The GPU paths the CPU can exercise: mixed precision for every model (CPU autocast stands in
for CUDA's), a resume whose checkpoint is not on the CPU, the nccl evaluation gather, the CANet
guide in float16, and CUDA's refusal of binary_cross_entropy inside autocast."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from recbole_flame.quick_start import run
from recbole_flame.trainer import trainer as trainer_module
from recbole_flame.utils import amp, distributed
from recbole_flame.utils.checkpoint import load_checkpoint
from tests.conftest import CANET_SMALL, TINY, ctr_config, prepare_in, seq_config

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0}
CANET = {**CANET_SMALL, "dropout_prob": 0.0}
TIM4REC = {"hidden_size": 16, "d_state": 8, "head_dim": 8, "chunk_size": 4, "dropout_prob": 0.0}

# (model, settings): every model of this package, and SASRec (ours) and GRU4Rec (RecBole's).
MODELS = {
    "SASRec": ("SASRec", NO_DROPOUT),
    "SASRec-dense": ("SASRec", {**NO_DROPOUT, "train_mode": "dense"}),
    "GRU4Rec": ("GRU4Rec", {"dropout_prob": 0.0, "embedding_size": 16}),
    "FLAME": ("FLAME", {**NO_DROPOUT, "frozen_dropout": False}),
    "FLAME-dense": ("FLAME", {**NO_DROPOUT, "frozen_dropout": False, "train_mode": "dense"}),
    "TiM4Rec": ("TiM4Rec", TIM4REC),
    "CANet": ("CANet", CANET),
    "CANet-marginal": ("CANet", {**CANET, "guide_form": "marginal"}),
    "CETNet": ("CETNet", {}),
}


def _settings(data_root, model: str, extra: dict, **overrides) -> dict:
    if model == "CETNet":
        return ctr_config(data_root, seed=7, **extra, **overrides)
    return seq_config(data_root, seed=7, n_layers=2, **extra, **overrides)


def _one_epoch(folder, data_root, model: str, extra: dict, **overrides):
    """The first epoch's summed loss and the model after it, from the same initial weights
    (seeded) and batches whatever the precision."""
    folder.mkdir(parents=True, exist_ok=True)
    _, net, trainer, (train_data, _, _) = prepare_in(
        folder, model, _settings(data_root, model, extra, **overrides)
    )
    if model == "FLAME":  # stage 2 against a frozen copy of the initial learnable network
        net.load_frozen(copy.deepcopy(net.learnable.state_dict()))
    loss = trainer._train_epoch(train_data, 0)
    total = sum(loss) if isinstance(loss, tuple) else loss
    return float(total), net


@pytest.mark.parametrize("name", list(MODELS))
def test_a_training_epoch_under_bfloat16_autocast_is_close_to_float32(name, data_root, tmp_path):
    model, extra = MODELS[name]
    full, _ = _one_epoch(tmp_path / "fp32", data_root, model, extra)
    half, net = _one_epoch(
        tmp_path / "bf16", data_root, model, extra, enable_amp=True, amp_dtype="bfloat16"
    )
    assert math.isfinite(half)
    # bfloat16 keeps 8 bits of mantissa: a loss within 3% after one epoch of updates.
    assert half == pytest.approx(full, rel=0.03), (half, full)
    assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.parametrize("name", ["SASRec", "FLAME", "CANet-marginal", "CETNet"])
def test_a_training_epoch_under_float16_autocast_with_its_scaler(name, data_root, tmp_path):
    model, extra = MODELS[name]
    full, _ = _one_epoch(tmp_path / "fp32", data_root, model, extra)
    half, net = _one_epoch(
        tmp_path / "fp16",
        data_root,
        model,
        extra,
        enable_amp=True,
        amp_dtype="float16",
        clip_grad_norm={"max_norm": 5.0},
    )
    assert math.isfinite(half)
    assert half == pytest.approx(full, rel=0.03), (half, full)
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_the_amp_dtype_and_scaler_follow_the_settings():
    cpu = torch.device("cpu")
    assert amp.autocast_dtype({"amp_dtype": None}, cpu) == torch.bfloat16
    assert amp.autocast_dtype({"amp_dtype": "float16"}, cpu) == torch.float16
    assert amp.uses_scaler({"enable_amp": True, "amp_dtype": "float16"}, cpu)
    assert not amp.uses_scaler({"enable_amp": True, "amp_dtype": "bfloat16"}, cpu)
    assert not amp.uses_scaler({"enable_amp": False, "amp_dtype": "float16"}, cpu)


def test_clipping_sees_the_unscaled_gradients(data_root, tmp_path, monkeypatch):
    """With float16's GradScaler (loss scale 2^16) the norm clip_grad_norm_ measures must be
    the true gradient's, as without AMP: scaled gradients would be clipped 65536 times harder."""
    seen: dict[str, list[float]] = {}

    def measuring(key):
        def clip(parameters, **kwargs):
            grads = [p.grad for p in parameters if p.grad is not None]
            seen.setdefault(key, []).append(
                float(torch.norm(torch.stack([g.norm() for g in grads])))
            )

        return clip

    model, extra = MODELS["SASRec"]
    for key, overrides in (("fp32", {}), ("fp16", {"enable_amp": True, "amp_dtype": "float16"})):
        monkeypatch.setattr(trainer_module, "clip_grad_norm_", measuring(key))
        _one_epoch(
            tmp_path / key, data_root, model, extra, clip_grad_norm={"max_norm": 5}, **overrides
        )
    assert seen["fp16"][0] == pytest.approx(seen["fp32"][0], rel=0.05)


def test_the_grad_scaler_is_one_per_run_and_resumes(data_root, tmp_path, workdir):
    settings = seq_config(
        data_root,
        checkpoint_dir=str(tmp_path / "ckpt"),
        enable_amp=True,
        amp_dtype="float16",
        epochs=2,
        **NO_DROPOUT,
    )
    result = run("SASRec", TINY, config_dict=settings)
    state = load_checkpoint(result["resume_file"])
    # GradScaler starts at 2^16 and halves on each overflow; after two epochs it has moved or
    # grown tracker steps: either way it is a record of one scaler, not a fresh one.
    assert state["grad_scaler"]["scale"] > 0
    assert state["grad_scaler"]["_growth_tracker"] >= 0
    assert state["grad_scaler"]["_growth_tracker"] + (state["grad_scaler"]["scale"] != 65536.0) > 0


# --- float16 without autocast's help -----------------------------------------------------------
def test_the_canet_marginal_guide_stays_finite_in_float16(data_root, tmp_path):
    _, net, _, _ = prepare_in(
        tmp_path, "CANet", seq_config(data_root, guide_form="marginal", **CANET)
    )
    router = net
    n_routes = router.member_hidden.size(0)
    logits = torch.full((4, n_routes), -30.0)
    logits[:, 0] = 30.0  # every other route's probability underflows float16
    hit = torch.tensor([[True], [False], [True], [False]])
    reference = router.guide_from_hits(hit, logits)
    with torch.autocast("cpu", dtype=torch.float16):
        half = router.guide_from_hits(hit, logits.half())
    assert torch.isfinite(half)
    assert float(half) == pytest.approx(float(reference), rel=1e-3)


def test_cetnet_takes_its_probability_loss_outside_autocast(data_root, tmp_path, monkeypatch):
    """CUDA's autocast refuses ``binary_cross_entropy`` (CPU's allows it): the stand-in below
    refuses it inside any autocast region, as CUDA does."""
    import recbole_flame.model.cetnet.fusion as fusion

    original = F.binary_cross_entropy

    def refusing(*args, **kwargs):
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError("binary_cross_entropy is unsafe to autocast")
        return original(*args, **kwargs)

    monkeypatch.setattr(fusion.F, "binary_cross_entropy", refusing)
    _, net, _, (train_data, _, _) = prepare_in(tmp_path, "CETNet", ctr_config(data_root, seed=7))
    batch = next(iter(train_data))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = net.calculate_loss(batch)
    assert all(torch.isfinite(part) for part in losses)


# --- resume with a checkpoint read onto another device -----------------------------------------
def test_resume_restores_every_generator_when_the_device_is_not_the_cpu(
    data_root, tmp_path, workdir, monkeypatch
):
    """A GPU run's trainer has ``device`` cuda; its resume state must still be read onto the CPU
    (generator states are CPU byte tensors; weights go to the model's device through
    ``load_state_dict``). ``meta`` stands in for the GPU: a tensor mapped there has no data."""
    settings = seq_config(
        data_root, checkpoint_dir=str(tmp_path / "c"), epochs=1, hidden_dropout_prob=0.3
    )
    first = run("SASRec", TINY, config_dict=settings)
    saved = load_checkpoint(first["resume_file"])["rng"]
    _, _, trainer, (train_data, _, _) = prepare_in(tmp_path, "SASRec", {**settings, "epochs": 2})
    trainer.device = torch.device("meta")
    trainer.resume_checkpoint(first["resume_file"])
    torch.manual_seed(0)  # scrambled, so only a restore gives the saved draws back
    trainer_module.set_rng_state(trainer._pending_rng, train_data.generator, trainer.device)
    expected = torch.Generator().set_state(saved["torch"])
    assert torch.equal(torch.rand(5), torch.rand(5, generator=expected))
    assert torch.equal(train_data.generator.get_state(), saved["loader"])


def test_cuda_generator_states_of_older_files_are_read_per_device(monkeypatch):
    """Files written before kept every visible GPU's state; a resume on GPU 1 of fewer GPUs takes
    its own entry and never asks for a device it does not have."""
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: restored.append((s, d)))
    state = trainer_module.rng_state(None)
    state["cuda"] = [torch.tensor([0], dtype=torch.uint8), torch.tensor([1], dtype=torch.uint8)]
    trainer_module.set_rng_state(state, None, torch.device("cuda", 1))
    assert len(restored) == 1 and int(restored[0][0]) == 1
    state["cuda"] = state["cuda"][:1]  # saved with one GPU, resumed on the second
    restored.clear()
    trainer_module.set_rng_state(state, None, torch.device("cuda", 1))
    assert restored == []


# --- the nccl evaluation gather ----------------------------------------------------------------
class _Sampler:
    def __init__(self, n: int) -> None:
        self.num_samples = n
        self.dataset = range(2 * n)


class _Gathered(Exception):
    pass


def test_the_evaluation_gather_hands_nccl_tensors_on_its_device(monkeypatch):
    """RecBole's collector moves the rows to the CPU; nccl all-gathers CUDA tensors only. The
    ``meta`` device stands in for the rank's GPU."""
    devices = []

    def all_gather(parts, tensor):
        devices.extend([tensor.device, *(p.device for p in parts)])
        raise _Gathered

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "collective_device", lambda: torch.device("meta"))
    monkeypatch.setattr(distributed.dist, "all_gather", all_gather)
    with pytest.raises(_Gathered):
        distributed.gather_sample_rows(torch.arange(6.0).view(3, 2), _Sampler(3))
    assert devices and all(d.type == "meta" for d in devices)


def test_the_collective_device_is_the_gpu_under_nccl(monkeypatch):
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert distributed.collective_device() == torch.device("cuda", 3)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "gloo")
    assert distributed.collective_device() == torch.device("cpu")
