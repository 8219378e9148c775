"""MixedBitLinear and the decoder-linear swap on a tiny random LLaMA."""

from __future__ import annotations

import pytest
import torch

from mbq_onnx.model import (
    MixedBitLinear,
    RoutingContext,
    SliceRouter,
    decoder_linear_names,
    iter_mixed_bit_linears,
    quantize_model,
    set_weight_cache,
)
from mbq_onnx.quant.residual import dequantize_codes, minmax_params, quantize_codes
from mbq_onnx.quant.spec import QuantSpec


@pytest.fixture(autouse=True)
def _inference_mode():
    with torch.no_grad():
        yield


def _layer(spec: QuantSpec, router: SliceRouter | None = None, ctx: RoutingContext | None = None, bias=True):
    torch.manual_seed(0)
    linear = torch.nn.Linear(72, 24, bias=bias)
    scale, zero = minmax_params(linear.weight, spec)
    return linear, MixedBitLinear.from_float(linear, spec, scale, zero, router=router, ctx=ctx), scale, zero


@pytest.mark.parametrize(
    "spec",
    [QuantSpec((4, 2, 2), 16), QuantSpec((2, 2, 2, 2), 32)],
    ids=lambda s: "-".join(map(str, s.slice_bits)),
)
def test_force_slices_uses_the_truncated_weight(spec: QuantSpec) -> None:
    ctx = RoutingContext()
    linear, m, scale, zero = _layer(spec, SliceRouter(72, spec.num_slices, 8), ctx)
    codes = quantize_codes(linear.weight, scale, zero, spec)
    x = torch.randn(2, 5, 72)
    errors = []
    for k in range(1, spec.num_slices + 1):
        ctx.force_slices = k
        w = dequantize_codes(codes, scale, zero, spec, k)
        torch.testing.assert_close(m(x), x @ w.T + linear.bias, rtol=1e-5, atol=1e-5)
        ctx.force_slices = torch.tensor(k)  # tensor form (export graph input) gives the same
        torch.testing.assert_close(m(x), x @ w.T + linear.bias, rtol=1e-5, atol=1e-5)
        errors.append((m(x) - linear(x)).norm().item())
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0]


def test_router_and_tau_drive_per_token_counts() -> None:
    spec = QuantSpec((4, 2, 2), 16)
    ctx = RoutingContext(record=True)
    router = SliceRouter(72, 3, 8)
    torch.nn.init.normal_(router.fc2.weight, std=3.0)
    linear, m, scale, zero = _layer(spec, router, ctx)
    codes = quantize_codes(linear.weight, scale, zero, spec)
    x = torch.randn(4, 16, 72)
    means = []
    for tau in (0.05, 0.5, 0.95):
        ctx.tau, ctx.records = tau, []
        y = m(x)
        (counts,) = ctx.records
        assert counts.shape == x.shape[:-1]
        means.append(counts.float().mean().item())
        weights = [dequantize_codes(codes, scale, zero, spec, k) for k in (1, 2, 3)]
        expected = torch.stack([x[i, t] @ weights[counts[i, t] - 1].T for i in range(4) for t in range(16)])
        torch.testing.assert_close(y.reshape(-1, 24), expected + linear.bias, rtol=1e-5, atol=1e-5)
    assert means[0] >= means[1] >= means[2] and means[0] > means[2]
    ctx.tau, ctx.force_slices, ctx.records = torch.tensor(0.5), torch.tensor(0), []
    m(x)
    assert ctx.records[0].float().mean().item() == pytest.approx(means[1])


def test_no_router_means_all_slices_and_cache_is_identical() -> None:
    spec = QuantSpec((4, 2, 2), 16)
    _linear, m, _scale, _zero = _layer(spec, bias=False)
    x = torch.randn(3, 72)
    full = m.dequantized_weight()
    torch.testing.assert_close(m(x), x @ full.T, rtol=1e-5, atol=1e-5)
    y = m(x)
    m.cache_weights(True)
    assert torch.equal(m(x), y)
    assert "slice_bits=[4, 2, 2]" in repr(m)


def test_quantize_model_swaps_only_decoder_linears(tiny_llama) -> None:
    model = tiny_llama()
    names = decoder_linear_names(model)
    suffixes = {n.rsplit(".", 1)[1] for n in names}
    assert suffixes == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(names) == 7 * model.config.num_hidden_layers
    quantize_model(model, QuantSpec((4, 2, 2), 16), granularity="linear", router_hidden=8)
    swapped = dict(iter_mixed_bit_linears(model))
    assert sorted(swapped) == sorted(names)
    assert isinstance(model.lm_head, torch.nn.Linear) and not isinstance(model.lm_head, MixedBitLinear)
    assert all(m.router is not None for m in swapped.values())
    assert decoder_linear_names(model) == names  # stable after the swap; routers are not listed


@pytest.mark.parametrize("granularity", ["linear", "block", "none"])
def test_quantized_model_precision_ladder(tiny_llama, granularity: str) -> None:
    model = tiny_llama()
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    ref = model(ids).logits
    ctx = quantize_model(model, QuantSpec((4, 2, 2), 16), granularity=granularity, router_hidden=8)
    errors = []
    for k in (1, 2, 3):
        ctx.force_slices = k
        errors.append((model(ids).logits - ref).abs().mean().item())
    assert errors[0] > errors[1] > errors[2]
    ctx.force_slices, ctx.record = None, True
    model(ids)
    expected_records = {"linear": 14, "block": 2, "none": 0}[granularity]
    assert len(ctx.records) == expected_records
    for r in ctx.records:
        assert r.shape == ids.shape and r.min() >= 1 and r.max() <= 3
    ctx.record, ctx.tau = False, 0.5
    y = model(ids).logits
    set_weight_cache(model)
    torch.testing.assert_close(model(ids).logits, y, rtol=1e-5, atol=1e-5)


def test_quantize_model_uses_given_params_and_routers(tiny_llama) -> None:
    model = tiny_llama()
    spec = QuantSpec((4, 2, 2), 16)
    name = decoder_linear_names(model)[0]
    w = model.get_submodule(name).weight.detach().clone()
    scale, zero = minmax_params(w, spec)
    router = SliceRouter(w.shape[1], 3, 4)
    quantize_model(model, spec, params={name: (scale, zero)}, routers={name: router})
    m = model.get_submodule(name)
    assert m.router is router
    torch.testing.assert_close(m.scales, scale)
    with pytest.raises(ValueError, match="granularity"):
        quantize_model(tiny_llama(), spec, granularity="token")
