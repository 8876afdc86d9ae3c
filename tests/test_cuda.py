"""The GPU subset: what only a device shows. Skipped without CUDA; ``benchmarks/gpu/check.py``
runs it on a GPU (``RECBOLE_FLAME_TEST_DEVICE=cuda``) and, with ``--device=cpu --tiny``, on the
CPU (CI), where the kernel comparison is skipped and nccl becomes gloo.

Each model trains an epoch with AMP off and on; TiM4Rec's SSD kernel against its PyTorch path
(outputs and gradients); packed equals unpacked; a run resumes on the device; a one-process
process group (nccl on CUDA) gathers evaluation rows that RecBole's collector left on the CPU.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from recbole_flame.model.layers import ssd as ssd_module
from recbole_flame.quick_start import run
from recbole_flame.utils import distributed
from recbole_flame.utils.checkpoint import load_checkpoint
from tests.conftest import TEST_DEVICE, TINY, ctr_config, prepare_in, seq_config
from tests.test_amp import MODELS, NO_DROPOUT

# On the CPU only when the GPU check's dry run asks (RECBOLE_FLAME_GPU_CHECK=cpu).
pytestmark = pytest.mark.skipif(
    not (TEST_DEVICE == "cuda" and torch.cuda.is_available())
    and os.environ.get("RECBOLE_FLAME_GPU_CHECK") != "cpu",
    reason="the GPU subset: RECBOLE_FLAME_TEST_DEVICE=cuda on a CUDA machine (benchmarks/gpu)",
)
DEVICE = torch.device("cuda" if TEST_DEVICE == "cuda" else "cpu")


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp"])
@pytest.mark.parametrize("name", ["SASRec", "FLAME", "TiM4Rec", "CANet", "CETNet", "GRU4Rec"])
def test_each_model_trains_and_evaluates_an_epoch(name, amp, data_root, tmp_path, workdir):
    model, extra = MODELS[name]
    make = ctr_config if model == "CETNet" else seq_config
    settings = make(data_root, seed=7, enable_amp=amp, **extra)
    if model == "FLAME":
        settings["stage1_epochs"] = 1
    result = run(model, TINY, config_dict=settings, saved=False)
    metric = "auc" if model == "CETNet" else "ndcg@10"
    assert math.isfinite(result["test_result"][metric])


def _ssd_inputs(dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    b, length, h, p, n = 2, 24, 4, 8, 8

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(DEVICE, dtype).requires_grad_()

    x = rnd(b, length, h, p)
    dt = torch.nn.functional.softplus(torch.randn(b, length, h, generator=gen)).to(DEVICE, dtype)
    dt.requires_grad_()
    A = (-torch.rand(h, generator=gen) - 0.5).to(DEVICE, torch.float32).requires_grad_()
    B, C = rnd(b, length, 1, n, scale=0.5), rnd(b, length, 1, n, scale=0.5)
    return x, dt, A, B, C


@pytest.mark.skipif(DEVICE.type != "cuda", reason="the SSD kernel runs on CUDA only")
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_tim4rec_kernel_against_its_pytorch_path(dtype, tol, monkeypatch):
    kernel = ssd_module._kernel()
    if kernel is None:
        pytest.skip("mamba-ssm's SSD kernel does not import here")
    # Triton's float32 dots default to TF32 (about 1e-3); IEEE for the float32 comparison.
    monkeypatch.setenv("TRITON_F32_DEFAULT", "ieee")
    outs = {}
    for backend in ("torch", "kernel"):
        x, dt, A, B, C = _ssd_inputs(dtype)
        y = ssd_module.ssd(x, dt, A, B, C, chunk_size=8, backend=backend)
        weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y)
        (y.float() * weights.float()).sum().backward()
        outs[backend] = [y.float(), x.grad.float(), dt.grad.float(), B.grad.float(), C.grad.float()]
    for name, ref, got in zip(
        ["y", "dx", "ddt", "dB", "dC"], outs["torch"], outs["kernel"], strict=True
    ):
        scale = ref.abs().max().clamp_min(1e-6)
        assert ((got - ref).abs().max() / scale) < tol, name


def test_packed_equals_unpacked_on_the_device(data_root, tmp_path):
    settings = seq_config(data_root, MAX_ITEM_LIST_LENGTH=12, n_layers=2, **NO_DROPOUT)
    _, net, _, (train_data, _, _) = prepare_in(tmp_path, "SASRec", settings)
    batch = next(iter(train_data)).to(DEVICE)
    net.train()
    losses = {}
    for packed in (True, False):
        net.packing = packed
        net.zero_grad()
        loss = net.calculate_loss(batch)
        loss.backward()
        losses[packed] = (loss.detach(), net.item_embedding.weight.grad.clone())
    assert torch.allclose(losses[True][0], losses[False][0], rtol=1e-5)
    assert torch.allclose(losses[True][1], losses[False][1], rtol=1e-4, atol=1e-7)


def test_a_run_resumes_on_the_device(data_root, tmp_path, workdir):
    def settings(name: str, epochs: int) -> dict:
        return seq_config(
            data_root, checkpoint_dir=str(tmp_path / name), epochs=epochs, hidden_dropout_prob=0.3
        )

    whole = run("SASRec", TINY, config_dict=settings("whole", 2))
    first = run("SASRec", TINY, config_dict=settings("half", 1))
    resumed = run("SASRec", TINY, config_dict=settings("half", 2), resume=first["resume_file"])
    a, b = load_checkpoint(whole["resume_file"]), load_checkpoint(resumed["resume_file"])
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key


class _Sampler:
    def __init__(self, n: int) -> None:
        self.num_samples = n
        self.dataset = range(n)


def test_a_one_process_group_gathers_cpu_rows(tmp_path):
    import torch.distributed as dist

    backend = "nccl" if DEVICE.type == "cuda" else "gloo"
    if DEVICE.type == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group(
        backend, init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        rows = torch.arange(12.0).view(6, 2)  # where RecBole's collector leaves them
        gathered = distributed.gather_sample_rows(rows, _Sampler(6))
        assert gathered.device == rows.device and torch.equal(gathered, rows)
    finally:
        dist.destroy_process_group()
