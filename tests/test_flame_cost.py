"""The cost benchmark's FLOP count against a hand count: one step of a linear layer."""

from __future__ import annotations

import torch

from tests.conftest import load_benchmark

count_flops = load_benchmark("micro/common.py").count_flops


def test_count_flops_covers_forward_and_backward() -> None:
    batch, d_in, d_out = 8, 5, 3
    layer = torch.nn.Linear(d_in, d_out, bias=False)

    def step(x: torch.Tensor) -> None:
        layer(x).sum().backward()

    # Forward x @ W^T, backward dL/dx = g @ W and dL/dW = g^T @ x: three products of
    # batch * d_in * d_out multiply-adds, 2 FLOPs each.
    assert (
        count_flops(step, torch.randn(batch, d_in, requires_grad=True)) == 6 * batch * d_in * d_out
    )
    # An input that needs no gradient skips dL/dx: two products.
    assert count_flops(step, torch.randn(batch, d_in)) == 4 * batch * d_in * d_out
