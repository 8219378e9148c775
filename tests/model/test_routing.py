"""Routers: slice counts from logits, τ monotonicity, forced counts, straight-through gates."""

from __future__ import annotations

import itertools

import torch

from mbq_onnx.model.routing import (
    RoutingContext,
    SliceRouter,
    apply_force,
    routed_counts,
    slice_counts,
    slice_gates,
)


def test_slice_counts_are_cumulative() -> None:
    logits = torch.tensor([[3.0, 3.0], [3.0, -3.0], [-3.0, 3.0], [-3.0, -3.0]])  # sigmoid ≈ 0.95 / 0.05
    assert slice_counts(logits, 0.5).tolist() == [3, 2, 1, 1]  # a later slice needs all earlier ones
    assert slice_counts(logits, 0.99).tolist() == [1, 1, 1, 1]
    assert slice_counts(logits, 0.01).tolist() == [3, 3, 3, 3]
    assert slice_counts(logits, torch.tensor(0.5)).dtype == torch.int64


def test_slice_counts_equal_the_cumulative_product_definition() -> None:
    """Every on/off pattern, S = 1..5: the first-off index (argmin) is ``1 + Σ_j Π_{i≤j} on_i``."""
    for num_slices in range(1, 6):
        patterns = list(itertools.product([-1.0, 1.0], repeat=num_slices - 1))
        logits = torch.tensor(patterns).reshape(len(patterns), num_slices - 1)
        on = (logits > 0).to(torch.int64)
        assert torch.equal(slice_counts(logits, 0.5), 1 + torch.cumprod(on, -1).sum(-1)), num_slices


def test_tau_bounds_are_exact_even_for_extreme_logits() -> None:
    logits = torch.tensor([[-200.0, -200.0], [200.0, 200.0], [0.0, -1e30]])  # sigmoid(-200) underflows to 0
    assert slice_counts(logits, 0.0).tolist() == [3, 3, 3]  # tau = 0: every slice
    assert slice_counts(logits, 1.0).tolist() == [1, 1, 1]  # tau = 1: base slice only


def test_higher_tau_never_adds_slices() -> None:
    torch.manual_seed(0)
    router = SliceRouter(40, 4, hidden=8)
    x = torch.randn(64, 40)
    with torch.no_grad():
        logits = router(x) * 5
    previous = None
    for tau in torch.linspace(0.01, 0.99, 25):
        counts = slice_counts(logits, tau)
        assert counts.min() >= 1 and counts.max() <= 4
        if previous is not None:
            assert torch.all(counts <= previous)
        previous = counts
    assert slice_counts(logits, 0.01).float().mean() > slice_counts(logits, 0.99).float().mean()


def test_router_shapes_and_cost() -> None:
    router = SliceRouter(576, 3, hidden=16)
    assert router(torch.randn(2, 5, 576)).shape == (2, 5, 2)
    assert router.macs_per_token() == 576 * 16 + 16 * 2
    assert SliceRouter(8, 1)(torch.randn(3, 8)).shape == (3, 0)
    assert slice_counts(torch.zeros(3, 0), 0.5).tolist() == [1, 1, 1]


def test_router_is_invariant_to_input_scale() -> None:
    router = SliceRouter(32, 3, hidden=8)
    x = torch.randn(10, 32)
    torch.testing.assert_close(router(x), router(x * 100))


def test_force_overrides_router_python_and_tensor() -> None:
    counts = torch.tensor([[1, 2, 3]])
    assert apply_force(counts, None, 3).tolist() == [[1, 2, 3]]
    assert apply_force(counts, 0, 3).tolist() == [[1, 2, 3]]
    assert apply_force(counts, 2, 3).tolist() == [[2, 2, 2]]
    assert apply_force(counts, 9, 3).tolist() == [[3, 3, 3]]
    assert apply_force(counts, torch.tensor(0), 3).tolist() == [[1, 2, 3]]
    assert apply_force(counts, torch.tensor(1), 3).tolist() == [[1, 1, 1]]
    router = SliceRouter(16, 3, hidden=4)
    x = torch.randn(2, 4, 16)
    assert routed_counts(x, None, RoutingContext(), 3).tolist() == [[3] * 4] * 2
    assert routed_counts(x, router, RoutingContext(force_slices=1), 3).tolist() == [[1] * 4] * 2


def test_slice_gates_forward_hard_backward_soft() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]], requires_grad=True)
    gates = slice_gates(logits, 0.5)
    assert gates.tolist() == [[1.0, 0.0], [1.0, 1.0]]
    torch.testing.assert_close(1 + gates.sum(-1).long(), slice_counts(logits.detach(), 0.5))
    gates.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    soft = slice_gates(logits.detach(), 0.5, hard=False)
    assert torch.all((soft > 0) & (soft < 1))
