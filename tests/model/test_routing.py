"""Routers: slice counts from logits, τ monotonicity, forced counts, straight-through gates."""

from __future__ import annotations

import itertools

import pytest
import torch

from mbq_onnx.model.routing import (
    RandomCounts,
    RoutingContext,
    SliceRouter,
    apply_force,
    gate_taus,
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


def test_random_counts_hit_the_target_average_bits() -> None:
    cum_bits = (4, 6, 8)
    for target in (4.0, 4.5, 6.0, 7.25, 8.0):
        policy = RandomCounts.for_bits(target, cum_bits, seed=0)
        counts = policy.sample((200, 64))
        assert set(counts.unique().tolist()) <= {policy.low, policy.high}
        bits = torch.tensor((0, *cum_bits), dtype=torch.float64)[counts]
        assert float(bits.mean()) == pytest.approx(target, abs=0.02)
        assert 4 + 2 * (policy.expected_count - 1) == pytest.approx(target)
    p = RandomCounts.for_bits(7.25, cum_bits)
    assert (p.low, p.high, p.p_high) == (2, 3, pytest.approx(0.625))
    with pytest.raises(ValueError, match="outside"):
        RandomCounts.for_bits(9.0, cum_bits)


def test_random_counts_are_seeded_and_replace_the_routers() -> None:
    router = SliceRouter(8, 3, hidden=4)
    x = torch.randn(5, 7, 8)
    a, b = RandomCounts.for_bits(5.0, (4, 6, 8), seed=3), RandomCounts.for_bits(5.0, (4, 6, 8), seed=3)
    ctx = RoutingContext(tau=0.5, random_counts=a)
    first = routed_counts(x, router, ctx, 3)
    assert torch.equal(first, routed_counts(x, router, RoutingContext(random_counts=b), 3))
    assert not torch.equal(first, routed_counts(x, router, ctx, 3))  # the stream goes on ...
    a.reseed()
    assert torch.equal(first, routed_counts(x, router, ctx, 3))  # ... and restarts with reseed()
    assert first.shape == (5, 7) and first.dtype == torch.int64
    ctx.force_slices = 3  # a forced count still wins
    assert routed_counts(x, router, ctx, 3).eq(3).all()


def test_random_routing_on_a_model_reads_the_target_bits(tiny_artifact) -> None:
    """Through the real MixedBitLinear path: recorded counts of a random-routed forward average the target."""
    from mbq_onnx.eval.variants import AvgBitsMeter
    from mbq_onnx.model import build_model, load_artifact

    art = load_artifact(tiny_artifact())
    model, ctx = build_model(art, cache_weights=True)
    meter = AvgBitsMeter(model, ctx, art.spec)
    ctx.random_counts = RandomCounts.for_bits(5.5, art.spec.cum_bits, seed=0)
    with torch.no_grad():
        model(input_ids=torch.randint(0, 256, (1, 200), generator=torch.Generator().manual_seed(0)))
    assert meter.average() == pytest.approx(5.5, abs=0.05)
    meter.close()


def test_oracle_routing_gives_the_extra_slice_where_it_changes_the_output_most(tiny_artifact) -> None:
    """Through the real MixedBitLinear path: each routed call gives ``round(p·tokens)`` tokens the high count,
    exactly those with the largest ``‖(W_high − W_low)·x‖²``, so its output error against the high-count
    output is the smallest any choice of that many tokens reaches (random routing's is larger)."""
    from mbq_onnx.eval.variants import AvgBitsMeter
    from mbq_onnx.model import OracleCounts, build_model, iter_mixed_bit_linears, load_artifact

    art = load_artifact(tiny_artifact())
    model, ctx = build_model(art, cache_weights=True)
    _, linear = next(iter_mixed_bit_linears(model))
    oracle = OracleCounts.for_bits(5.0, art.spec.cum_bits)
    assert (oracle.low, oracle.high, oracle.p_high) == (1, 2, pytest.approx(0.5))
    x = torch.randn(2, 50, linear.in_features, generator=torch.Generator().manual_seed(1))
    ctx.oracle_counts = oracle
    counts = linear.slice_counts(x)
    assert counts.shape == (2, 50) and set(counts.unique().tolist()) == {1, 2}
    assert int(counts.eq(2).sum()) == 50
    increment = linear.dequantized_weight(2) - linear.dequantized_weight(1)
    gain = (x @ increment.T).pow(2).sum(-1)
    assert gain[counts == 2].min() >= gain[counts == 1].max()

    def error(policy_counts: torch.Tensor) -> float:  # the output error vs 2 slices, summed over tokens
        return float(gain[policy_counts == 1].sum())

    random = RandomCounts.for_bits(5.0, art.spec.cum_bits, seed=0).sample(counts.shape)
    assert error(counts) < error(random)
    # through a whole model: the recorded counts read the target bits
    meter = AvgBitsMeter(model, ctx, art.spec)
    with torch.no_grad():
        model(input_ids=torch.randint(0, 256, (1, 200), generator=torch.Generator().manual_seed(0)))
    assert meter.average() == pytest.approx(5.0, abs=0.01)
    meter.close()
    ctx.oracle_counts = None


def test_bracketed_schedule_routes_one_gate_at_a_time() -> None:
    """τ walks from all slices (0) to the base slice (1) one gate at a time: at any τ a token reads one of two
    neighbouring slice counts, the bits fall monotonically, and τ = 1, 1 - 1/G, …, 0 are the
    uniform counts. Two slices: the same as the shared schedule."""
    for num_slices in (2, 3, 4):
        gates = num_slices - 1
        logits = torch.randn(4000, gates, generator=torch.Generator().manual_seed(num_slices)) * 3
        means, previous = [], None
        for tau in torch.linspace(0, 1, 201).tolist():
            thr = gate_taus(tau, num_slices, "bracketed")
            assert thr.shape == (gates,) and thr.dtype == torch.float32 and 0 <= thr.min() <= thr.max() <= 1
            counts = slice_counts(logits, thr)
            present = counts.unique().tolist()
            assert len(present) <= 2 and present[-1] - present[0] <= 1, (num_slices, tau, present)
            mean = counts.double().mean().item()
            if previous is not None:
                assert mean <= previous + 1e-12
            previous = mean
            means.append(mean)
        assert means[0] == num_slices and means[-1] == 1
        for j in range(num_slices):  # τ = 1 - j/G: j + 1 slices for every token, whatever the logits
            assert slice_counts(logits, gate_taus(1 - j / gates, num_slices, "bracketed")).eq(j + 1).all()
    assert torch.equal(gate_taus(0.3, 2, "bracketed"), gate_taus(0.3, 2, "shared"))
    assert gate_taus(torch.tensor(0.75), 3, "bracketed").tolist() == [0.5, 1.0]
    with pytest.raises(ValueError, match="tau schedule 'linear'"):
        gate_taus(0.5, 3, "linear")
    with pytest.raises(ValueError, match="tau schedule"):
        RoutingContext(tau_schedule="nested")


def test_routed_counts_follow_the_context_schedule() -> None:
    router = SliceRouter(8, 3, hidden=4)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    logits = router(x)
    for schedule in ("bracketed", "shared"):
        ctx = RoutingContext(tau=0.6, tau_schedule=schedule)
        want = slice_counts(logits, gate_taus(0.6, 3, schedule))
        assert torch.equal(routed_counts(x, router, ctx, 3), want)
    shared = slice_counts(logits, 0.6)
    assert torch.equal(routed_counts(x, router, RoutingContext(tau=0.6, tau_schedule="shared"), 3), shared)
