"""GPTQ: error-compensated b-bit quantization beats RTN on the layer output it optimises."""

from __future__ import annotations

import pytest
import torch

from mbq_onnx.baselines import (
    BaselineSpec,
    gptq_quantize_model,
    gptq_quantize_weight,
    rtn_quantize_model,
    rtn_quantize_weight,
)


def _linear_inputs(model, name: str, ids: torch.Tensor) -> torch.Tensor:
    """The real inputs a linear of the float model sees on ``ids``, ``[rows, K]``."""
    rows = []
    linear = model.get_submodule(name)
    h = linear.register_forward_pre_hook(lambda _m, a: rows.append(a[0].reshape(-1, a[0].shape[-1])))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        h.remove()
    return torch.cat(rows).float()


@pytest.mark.parametrize("name", ["model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_layer_output_at_4_bits(tiny_llama, name, act_order):
    model = tiny_llama()
    ids = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(1))
    x = _linear_inputs(model, name, ids)  # real activations: correlated, RMS-normed / SiLU-gated
    w = model.get_submodule(name).weight.detach()
    spec = BaselineSpec(4, 16)  # K=72 or 104 with groups of 16: ragged last group
    q_gptq = gptq_quantize_weight(w, 2 * x.T @ x / x.shape[0], spec, act_order=act_order)
    q_rtn = rtn_quantize_weight(w, spec)
    err_gptq = float(((q_gptq - w) @ x.T).norm())
    err_rtn = float(((q_rtn - w) @ x.T).norm())
    assert err_gptq < 0.9 * err_rtn, (err_gptq, err_rtn)


def test_gptq_output_lies_on_a_4bit_grid_per_group():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 72, generator=g)
    x = torch.randn(500, 72, generator=g) @ torch.randn(72, 72, generator=g)
    q = gptq_quantize_weight(w, 2 * x.T @ x / 500, BaselineSpec(4, 16))
    for g0 in range(0, 72, 16):
        for row in range(24):
            assert len(torch.unique(q[row, g0 : g0 + 16])) <= 16


def test_gptq_model_is_closer_to_float_than_rtn_on_calibration_text(tiny_llama):
    ids = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(2))
    ref = tiny_llama()
    with torch.no_grad():
        target = ref(input_ids=ids).logits
        spec = BaselineSpec(3, 16)
        rtn = rtn_quantize_model(tiny_llama(), spec)(input_ids=ids).logits
        gptq_model = gptq_quantize_model(tiny_llama(), ids, spec, progress=False)
        gptq = gptq_model(input_ids=ids).logits
    assert torch.isfinite(gptq).all()
    assert float((gptq - target).pow(2).mean()) < float((rtn - target).pow(2).mean())
    # embeddings, norms and lm_head are untouched
    for key, value in ref.state_dict().items():
        if "proj" not in key:
            assert torch.equal(value, gptq_model.state_dict()[key]), key


def test_bad_hessian_and_damp_are_rejected():
    w = torch.randn(4, 32)
    with pytest.raises(ValueError, match="hessian has shape"):
        gptq_quantize_weight(w, torch.eye(16), BaselineSpec(4, 16))
    with pytest.raises(ValueError, match="damp"):
        gptq_quantize_weight(w, torch.eye(32), BaselineSpec(4, 16), damp=0.0)
