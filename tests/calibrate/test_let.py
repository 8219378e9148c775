"""OmniQuant's learnable equivalent transformation (:mod:`mbq_onnx.calibrate.let`)."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from calib_checks import assert_artifact_runs_like_fake_quant

from mbq_onnx.calibrate import CalibConfig, calibrate, write_artifact
from mbq_onnx.calibrate.engine import _BlockCalibrator, capture_block_inputs
from mbq_onnx.calibrate.let import ALPHA_GRID
from mbq_onnx.model.surgery import decoder_layers, layer_output
from mbq_onnx.quant.spec import QuantSpec

SPEC = QuantSpec((4, 2, 2), 16)


def _ids(n: int = 6, length: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(0))


def _first_block(model: torch.nn.Module):
    """``(block 0, its input, its kwargs, its float output)`` on a few random windows."""
    block = decoder_layers(model)[0]
    x, kwargs = capture_block_inputs(model, _ids())
    with torch.no_grad():
        ref = layer_output(block, x, kwargs[0])
    return block, x, kwargs[0], ref


def _random_scales(cal: _BlockCalibrator, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for scale in cal.scales:
            scale.log_s.copy_(torch.randn(scale.log_s.shape, generator=g) * 0.5)


def test_scales_transform_every_linear_of_a_gqa_block_without_changing_it(tiny_llama):
    """Any scales leave the float block's output unchanged, before and after folding them in — under
    grouped-query attention too (6 query heads share 2 value heads)."""
    block, x, kw, ref = _first_block(tiny_llama(seed=0))
    norms = {n: p.detach().clone() for n, p in block.named_parameters() if "norm" in n}
    cal = _BlockCalibrator(block, "model.layers.0", SPEC, CalibConfig(let=True), [1, 2, 3], True, kw)
    assert [s.producer for s in cal.scales] == [
        "input_layernorm",
        "post_attention_layernorm",
        "self_attn.v_proj",
        "mlp.up_proj",
    ]
    assert all(w.let is not None for w in cal.wrapped.values())
    _random_scales(cal)
    with torch.no_grad():
        torch.testing.assert_close(layer_output(block, x, kw), ref, rtol=1e-4, atol=1e-5)
        cal.fold_let()
        assert all(w.let is None for w in cal.wrapped.values())
        torch.testing.assert_close(layer_output(block, x, kw), ref, rtol=1e-4, atol=1e-5)
        assert not torch.equal(block.input_layernorm.weight, norms["input_layernorm.weight"])
    _, _, weights, float_params = cal.export()
    assert set(float_params) == {
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
    }
    assert len(weights) == 7  # every linear: consumers' columns or producers' rows were scaled
    cal.restore()
    for n, p in block.named_parameters():
        if "norm" in n:
            assert torch.equal(p, norms[n]), f"{n} not restored"


def test_scales_change_the_quantization_error(tiny_llama):
    """The point of LET: after scaling, the quantized block errs differently from plain RTN."""
    block, x, kw, ref = _first_block(tiny_llama(seed=0))
    cal = _BlockCalibrator(block, "model.layers.0", SPEC, CalibConfig(let=True), [1], False, kw)
    streams = {1: x}
    idx = torch.arange(x.shape[0])
    before = cal.losses(streams, ref, idx, use_lwc=False)[1]
    _random_scales(cal)
    after = cal.losses(streams, ref, idx, use_lwc=False)[1]
    cal.restore()
    assert after != pytest.approx(before, rel=1e-3)


def _with_outlier_channels(model: torch.nn.Module, factor: float = 8.0) -> torch.nn.Module:
    """The same float model with activation outliers: a few norm channels ×factor, the columns that read
    them ÷factor — what LET (like AWQ) is for; a random tiny model has none."""
    with torch.no_grad():
        for layer in decoder_layers(model):
            for norm, consumers in (
                (
                    layer.input_layernorm,
                    (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj),
                ),
                (layer.post_attention_layernorm, (layer.mlp.gate_proj, layer.mlp.up_proj)),
            ):
                norm.weight[::9] *= factor
                for linear in consumers:
                    linear.weight[:, ::9] /= factor
    return model


def test_calibration_with_let_writes_an_artifact_that_runs_like_its_fake_quant(tiny_llama, tmp_path):
    cfg = CalibConfig(
        samples=8,
        seqlen=32,
        base_epochs=1,
        epochs=2,
        batch_size=4,
        holdout=4,
        let=True,
        error_feedback=(1.0,),
    )
    model = _with_outlier_channels(tiny_llama(seed=0))
    before = copy.deepcopy(model.state_dict())
    ids = torch.randint(0, 256, (12, 32), generator=torch.Generator().manual_seed(0))
    result = calibrate(model, None, SPEC, cfg, input_ids=ids, progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"calibration changed the float model's {k}"
    for block in result.report["blocks"]:
        assert set(block["let_scale_range"]) == {
            "input_layernorm",
            "post_attention_layernorm",
            "self_attn.v_proj",
            "mlp.up_proj",
        }
        assert all(block["calibrated_mse"][k] <= block["rtn_mse"][k] for k in block["rtn_mse"])
    # the guard and the report measure against plain RTN, not RTN after the LET start (block 0: same inputs)
    plain = calibrate(model, None, SPEC, replace(cfg, let=False), input_ids=ids, progress=False)
    assert result.report["blocks"][0]["rtn_mse"] == plain.report["blocks"][0]["rtn_mse"]
    trained = [r for b in result.report["blocks"] for r in b["let_scale_range"].values() if r != [1.0, 1.0]]
    assert trained, "no LET scale kept away from 1"
    assert result.float_params, "no norm carries a folded scale"
    artifact = write_artifact(tmp_path / "art", model, result)
    assert_artifact_runs_like_fake_quant(artifact, model, result, ids[:2], (1, 2, 3))


def test_let_names_what_a_block_lacks():
    block = torch.nn.Sequential(torch.nn.Linear(8, 8))
    with pytest.raises(ValueError, match="LLaMA-style"):
        _BlockCalibrator(block, "b", SPEC, CalibConfig(let=True), [1], False, {})


def test_activation_aware_start_follows_input_magnitude_and_never_loses_to_none(tiny_llama):
    block, x, kw, ref = _first_block(tiny_llama(seed=0))
    cal = _BlockCalibrator(block, "model.layers.0", SPEC, CalibConfig(let=True), [1, 2, 3], False, kw)
    o_scale = cal.scales[2]  # v_proj → o_proj: 24 value channels serve 72 o_proj inputs (3 query heads each)
    magnitude = torch.arange(1.0, 73.0)
    o_scale.set_activation_aware(magnitude, 1.0)
    s = o_scale.scale().detach()
    assert s.shape == (24,) and torch.all(s[1:] > s[:-1]) and (s.max() * s.min()).item() == pytest.approx(1.0)
    o_scale.set_activation_aware(magnitude, 0.0)
    assert torch.equal(o_scale.scale(), torch.ones(24))

    streams, idx = {k: x for k in (1, 2, 3)}, torch.arange(x.shape[0])
    start = cal.losses(streams, ref, idx, use_lwc=False)
    alphas = cal.init_let(streams, ref, idx)
    assert set(alphas) == {s.producer for s in cal.scales}
    after = cal.losses(streams, ref, idx, use_lwc=False)
    cal.restore()
    assert sum(after[k] / start[k] for k in start) <= len(start) + 1e-9


def test_activation_aware_search_equals_measuring_every_alpha(tiny_llama):
    """The search reuses the losses it already has for α = 0 (s = 1); the α it picks, and the block it
    leaves, are those of measuring every candidate afresh."""
    block, x, kw, ref = _first_block(tiny_llama(seed=0))
    cal = _BlockCalibrator(block, "model.layers.0", SPEC, CalibConfig(let=True), [1, 2, 3], False, kw)
    streams, idx = {k: x for k in (1, 2, 3)}, torch.arange(x.shape[0])
    magnitude = cal.input_magnitudes(streams, idx)
    start = cal.losses(streams, ref, idx, use_lwc=False)
    expected = {}
    for scale in cal.scales:
        candidates = []
        for alpha in ALPHA_GRID:
            scale.set_activation_aware(magnitude[scale.producer], alpha)
            got = cal.losses(streams, ref, idx, use_lwc=False)
            if alpha == 0.0 or all(got[k] <= start[k] for k in got):
                candidates.append((sum(got[k] / start[k] for k in got), alpha))
        expected[scale.producer] = min(candidates)[1]
        scale.set_activation_aware(magnitude[scale.producer], expected[scale.producer])
    searched = cal.losses(streams, ref, idx, use_lwc=False)
    for scale in cal.scales:
        scale.reset()

    calls = []
    measure = cal.losses
    cal.losses = lambda *a, **k: calls.append(1) or measure(*a, **k)
    assert cal.init_let(streams, ref, idx) == expected
    assert len(calls) == 1 + len(cal.scales) * (len(ALPHA_GRID) - 1)
    assert measure(streams, ref, idx, use_lwc=False) == searched
    cal.restore()


def test_unfold_gives_the_untransformed_block_back(tiny_llama):
    """The guard's last resort: scales folded in (or not), then no transformation at all — plain RTN."""
    block, x, kw, ref = _first_block(tiny_llama(seed=0))
    cal = _BlockCalibrator(block, "model.layers.0", SPEC, CalibConfig(let=True), [1, 2, 3], False, kw)
    streams, idx = {k: x for k in (1, 2, 3)}, torch.arange(x.shape[0])
    plain = cal.losses(streams, ref, idx, use_lwc=False)
    _random_scales(cal)
    cal.fold_let()
    cal.fold_let()  # a second fold changes nothing
    assert cal.losses(streams, ref, idx, use_lwc=False) != plain
    cal.unfold_let()
    assert cal.losses(streams, ref, idx, use_lwc=False) == plain
    assert all(torch.equal(s.scale().detach(), torch.ones_like(s.log_s)) for s in cal.scales)
    _, _, weights, float_params = cal.export()
    assert not weights and not float_params
    cal.restore()
