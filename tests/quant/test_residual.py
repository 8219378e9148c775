"""Properties of the truncation-ready residual quantizer (torch side)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mbq_onnx.quant import reference
from mbq_onnx.quant.packing import unpack
from mbq_onnx.quant.residual import (
    MIN_CLIP,
    dequantize_codes,
    fake_quant,
    fake_quant_all,
    group_range,
    group_view,
    lwc_params,
    minmax_params,
    quantize_codes,
    quantize_linear,
)
from mbq_onnx.quant.spec import QuantSpec

SPECS = [
    QuantSpec((4, 2, 2), 16),
    QuantSpec((2, 2, 2, 2), 32),
    QuantSpec((3, 2), 16),
    QuantSpec((4, 2, 2), 128),
]


def realish_weight(n: int = 48, k: int = 200, seed: int = 0) -> torch.Tensor:
    """Heavy-tailed weights with per-channel scale spread and a few outliers, like trained LLM linears."""
    g = torch.Generator().manual_seed(seed)
    w = torch.distributions.StudentT(4.0).sample((n, k)) * 0.02
    w *= torch.exp(torch.randn(n, 1, generator=g) * 0.3)
    w[torch.randint(0, n, (5,), generator=g), torch.randint(0, k, (5,), generator=g)] *= 8
    return w


def _ids(spec: QuantSpec) -> str:
    return f"{'-'.join(map(str, spec.slice_bits))}_g{spec.group_size}"


def test_group_view_pads_ragged_group() -> None:
    w = torch.arange(2 * 40, dtype=torch.float32).reshape(2, 40)
    g = group_view(w, 16)
    assert g.shape == (2, 3, 16)
    torch.testing.assert_close(g.reshape(2, -1)[:, :40], w)
    assert torch.all(g[:, 2, 8:] == 0)


def test_minmax_range_covers_zero_and_the_ragged_group() -> None:
    spec = QuantSpec((4,), 16)
    w = torch.full((1, 20), 5.0)
    w[0, 16:] = torch.tensor([-1.0, 2.0, 3.0, 4.0])  # ragged last group
    scale, zero = minmax_params(w, spec)
    torch.testing.assert_close(scale, torch.tensor([[5.0 / 15, 5.0 / 15]]))  # [0, 5] and [-1, 4]
    assert zero.tolist() == [[0.0, 3.0]]
    wq = dequantize_codes(quantize_codes(w, scale, zero, spec), scale, zero, spec, 1)
    assert torch.all((wq - w).abs() <= scale.repeat_interleave(16, 1)[:, :20] / 2 + 1e-6)


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_dropping_slices_is_the_truncated_quantization(spec: QuantSpec) -> None:
    w = realish_weight()
    scale, zero = minmax_params(w, spec)
    codes = quantize_codes(w, scale, zero, spec)
    packed, scales_np, zeros_np = quantize_linear(w, spec, scale, zero)
    full = dequantize_codes(codes, scale, zero, spec, spec.num_slices)
    for n_slices in range(1, spec.num_slices + 1):
        shift = spec.total_bits - spec.bits_at(n_slices)
        # the packed planes of the first k slices hold exactly the codes' top bits
        top = unpack(packed, spec, *w.shape, n_slices=n_slices)
        np.testing.assert_array_equal(top, (codes.numpy() >> shift) << shift)
        wk = dequantize_codes(codes, scale, zero, spec, n_slices)
        # equals the numpy reference on the unpacked (truncated) codes
        np.testing.assert_allclose(
            wk.numpy(), reference.dequantize(top, scales_np, zeros_np, spec, n_slices), rtol=1e-6, atol=1e-7
        )
        # on the c-bit grid: integer level in [0, 2^c) with step 2^(B-c) and midpoint offset
        s = scale.repeat_interleave(spec.group_size, 1)[:, : w.shape[1]].double()
        z = zero.repeat_interleave(spec.group_size, 1)[:, : w.shape[1]].double()
        level = (wk.double() / s + z - ((1 << shift) - 1) / 2) / (1 << shift)
        torch.testing.assert_close(level, level.round(), rtol=0, atol=1e-3)
        assert level.round().min() >= 0 and level.round().max() < 1 << spec.bits_at(n_slices)
        # within half a c-bit step of the full-precision reconstruction
        assert torch.all((wk - full).abs() <= s * ((1 << shift) - 1) / 2 * (1 + 1e-5) + 1e-7)
        # fake_quant (training path) has the same forward value
        torch.testing.assert_close(fake_quant(w, scale, zero, spec, n_slices), wk, rtol=1e-6, atol=1e-7)
    for k, wk in enumerate(fake_quant_all(w, scale, zero, spec), start=1):
        torch.testing.assert_close(wk, dequantize_codes(codes, scale, zero, spec, k), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_reconstruction_error_falls_with_every_slice(spec: QuantSpec) -> None:
    w = realish_weight(seed=1)
    scale, zero = minmax_params(w, spec)
    codes = quantize_codes(w, scale, zero, spec)
    errs = [
        ((dequantize_codes(codes, scale, zero, spec, k) - w).norm() / w.norm()).item()
        for k in range(1, spec.num_slices + 1)
    ]
    assert all(b < a * 0.75 for a, b in itertools.pairwise(errs)), errs


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_weights_on_the_grid_round_trip_exactly(spec: QuantSpec) -> None:
    g = torch.Generator().manual_seed(3)
    n, k = 6, 72
    n_groups = spec.num_groups(k)
    q = torch.randint(0, 1 << spec.total_bits, (n, k), generator=g)
    scale = (torch.rand(n, n_groups, generator=g) * 0.1 + 0.01).float()
    zero = torch.randint(0, 1 << spec.total_bits, (n, n_groups), generator=g).float()
    w = dequantize_codes(q.to(torch.uint8), scale, zero, spec, spec.num_slices)
    codes = quantize_codes(w, scale, zero, spec)
    assert torch.equal(codes, q.to(torch.uint8))
    assert torch.equal(dequantize_codes(codes, scale, zero, spec, spec.num_slices), w)
    packed, scales_np, zeros_np = quantize_linear(w, spec, scale, zero)
    np.testing.assert_allclose(
        reference.dequantize(unpack(packed, spec, n, k), scales_np, zeros_np, spec, spec.num_slices),
        w.numpy(),
        rtol=1e-6,
        atol=1e-7,
    )


def test_fake_quant_is_differentiable_in_weight_and_clipping() -> None:
    spec = QuantSpec((4, 2, 2), 16)
    w = realish_weight(8, 40).requires_grad_(True)
    n_groups = spec.num_groups(40)
    clip_lo = torch.full((8, n_groups), 0.9, requires_grad=True)
    clip_hi = torch.full((8, n_groups), 0.9, requires_grad=True)
    x = torch.randn(16, 40)
    for n_slices in range(1, spec.num_slices + 1):
        for t in (w, clip_lo, clip_hi):
            t.grad = None
        scale, zero = lwc_params(*group_range(w, spec.group_size), spec, clip_lo, clip_hi)
        loss = ((x @ fake_quant(w, scale, zero, spec, n_slices).T - x @ w.detach().T) ** 2).mean()
        loss.backward()
        for name, t in (("w", w), ("clip_lo", clip_lo), ("clip_hi", clip_hi)):
            assert t.grad is not None and torch.isfinite(t.grad).all(), name
            assert t.grad.abs().sum() > 0, f"no gradient to {name} at {n_slices} slices"


def test_clipping_shrinks_the_range() -> None:
    spec = QuantSpec((4,), 16)
    w = realish_weight(4, 32)
    s_full, _ = minmax_params(w, spec)
    half = torch.tensor(0.5)
    s_clip, _ = lwc_params(*group_range(w, spec.group_size), spec, half, half)
    torch.testing.assert_close(s_clip, s_full * 0.5)
    s_floor, _ = lwc_params(*group_range(w, spec.group_size), spec, half * 0, half * 0)  # clamped to MIN_CLIP
    torch.testing.assert_close(s_floor, s_full * MIN_CLIP)


def test_bad_shapes_raise() -> None:
    spec = QuantSpec((4, 2, 2), 16)
    w = torch.randn(4, 40)
    scale, zero = minmax_params(w, spec)
    with pytest.raises(ValueError, match=r"\[N, G\]"):
        quantize_codes(w, scale[:, :2], zero, spec)
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        minmax_params(torch.randn(40), spec)
