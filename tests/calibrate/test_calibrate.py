"""End-to-end single calibration on the tiny random LLaMA: artifact, losses, τ table, routers."""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
from calib_checks import assert_artifact_runs_like_fake_quant

from mbq_onnx.calibrate import CalibConfig, calibrate, write_artifact
from mbq_onnx.model import build_model, load_artifact
from mbq_onnx.quant.spec import QuantSpec

SPEC = QuantSpec((4, 2, 2), 16)
TINY = CalibConfig(samples=8, seqlen=32, base_epochs=1, epochs=3, batch_size=4, lr_lwc=2e-2, lr_router=2e-2)


def _ids(seed: int = 0, n: int = 8, seqlen: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, seqlen), generator=torch.Generator().manual_seed(seed))


_SHARED: dict[str, tuple] = {}


@pytest.fixture
def calibrated(tiny_llama):
    """One calibration of the tiny model, shared by the tests of this module: (float model, result)."""
    if "linear" not in _SHARED:
        model = tiny_llama(seed=0)
        _SHARED["linear"] = (model, calibrate(model, None, SPEC, TINY, input_ids=_ids(), progress=False))
    return _SHARED["linear"]


def test_calibration_leaves_model_unchanged(tiny_llama):
    model = tiny_llama(seed=1)
    before = copy.deepcopy(model.state_dict())
    calibrate(model, None, SPEC, TINY.with_overrides(epochs=1), input_ids=_ids(1), progress=False)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(type(m).__name__ != "CalibLinear" for m in model.modules())


def test_calibrated_block_losses_do_not_exceed_rtn(calibrated):
    _, result = calibrated
    blocks = result.report["blocks"]
    assert len(blocks) == 2
    improved = False
    for b in blocks:
        for k in ("1", "2", "3"):
            assert b["calibrated_mse"][k] <= b["rtn_mse"][k] * (1 + 1e-6), (b["block"], k)
        improved |= b["calibrated_mse"]["1"] < 0.99 * b["rtn_mse"]["1"]
    assert improved, "calibration never improved the base slice over RTN"


def test_tau_table_is_monotone_and_spans_precisions(calibrated):
    _, result = calibrated
    table = result.tau_table
    assert [r["tau"] for r in table] == sorted(r["tau"] for r in table)
    bits = [r["avg_bits_per_call"] for r in table]
    assert all(a >= b - 1e-9 for a, b in itertools.pairwise(bits)), bits
    assert all(SPEC.cum_bits[0] <= b <= SPEC.total_bits for b in bits)
    assert bits[0] > bits[-1]


def test_artifact_roundtrip_matches_fake_quantized_model(calibrated, tmp_path):
    model, result = calibrated
    path = write_artifact(tmp_path / "art", model, result, source={"model": "tiny"})
    art = load_artifact(path, expected_spec=SPEC)
    assert art.granularity == "linear"
    assert art.tau_table == result.tau_table
    report = json.loads((path / "calibration_report.json").read_text())
    assert len(report["blocks"]) == 2 and report["tau_table"] == result.tau_table
    assert_artifact_runs_like_fake_quant(path, model, result, _ids(5, n=2), (1, 2, 3))


def test_trained_routers_change_counts_with_tau(calibrated, tmp_path):
    model, result = calibrated
    built, ctx = build_model(write_artifact(tmp_path / "art", model, result))
    ctx.record = True
    means = {}
    for tau in (0.05, 0.5, 0.95):
        ctx.tau, ctx.records = tau, []
        with torch.no_grad():
            built(input_ids=_ids(7, n=2))
        means[tau] = torch.cat([r.reshape(-1) for r in ctx.records]).float().mean().item()
    assert means[0.05] >= means[0.5] >= means[0.95]
    assert means[0.05] > means[0.95]


def test_block_router_artifact(tiny_llama, tmp_path):
    model = tiny_llama(seed=2)
    cfg = TINY.with_overrides(router="block", epochs=1)
    result = calibrate(model, None, SPEC, cfg, input_ids=_ids(2), progress=False)
    assert result.granularity == "block" and set(result.routers) == {"model.layers.0", "model.layers.1"}
    built, ctx = build_model(write_artifact(tmp_path / "blk", model, result))
    ctx.record = True
    with torch.no_grad():
        built(input_ids=_ids(3, n=1))
    assert len(ctx.records) == 2  # one count tensor per block
    assert result.tau_table[0]["avg_bits_per_call"] >= result.tau_table[-1]["avg_bits_per_call"]


def test_single_precision_mode(tiny_llama):
    model = tiny_llama(seed=3)
    result = calibrate(
        model, None, SPEC, TINY.with_overrides(epochs=1), precisions=[2], input_ids=_ids(3), progress=False
    )
    assert result.granularity == "none" and not result.routers and not result.tau_table
    for b in result.report["blocks"]:
        assert set(b["calibrated_mse"]) == {"2"}
        assert b["calibrated_mse"]["2"] <= b["rtn_mse"]["2"] * (1 + 1e-6)


def test_bad_precisions_rejected(tiny_llama):
    with pytest.raises(ValueError, match="precisions"):
        calibrate(tiny_llama(), None, SPEC, TINY, precisions=[4], input_ids=_ids(), progress=False)


def test_seeded_calibration_is_reproducible(tiny_llama):
    cfg = TINY.with_overrides(epochs=1)
    a = calibrate(tiny_llama(seed=4), None, SPEC, cfg, input_ids=_ids(4), progress=False)
    b = calibrate(tiny_llama(seed=4), None, SPEC, cfg, input_ids=_ids(4), progress=False)
    for name, (scale, zero) in a.params.items():
        assert torch.equal(scale, b.params[name][0]) and torch.equal(zero, b.params[name][1])
    assert a.tau_table == b.tau_table


def test_unit_clipping_reproduces_the_rtn_grid(tiny_llama):
    from mbq_onnx.calibrate.trainable import CalibLinear
    from mbq_onnx.quant import residual

    linear = tiny_llama().model.layers[0].mlp.down_proj
    w = linear.weight.detach()
    wrapped = CalibLinear(linear, SPEC)  # clipping factors start at 1
    got, want = wrapped.quant_params(), residual.minmax_params(w, SPEC)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with torch.no_grad():
        wrapped.clip_lo.fill_(0.5)
        wrapped.clip_hi.fill_(0.5)
    assert torch.all(wrapped.quant_params()[0] < want[0])


@pytest.mark.parametrize("router", ["linear", "block"])
def test_train_tau_of_the_config_drives_the_routed_gates(tiny_llama, router):
    """``CalibConfig.train_tau`` reaches every routed gate (it was a constant 0.5 in CalibLinear)."""
    from mbq_onnx.calibrate.engine import _BlockCalibrator
    from mbq_onnx.calibrate.trainable import ROUTED

    x = torch.randn(2, 16, tiny_llama().config.hidden_size, generator=torch.Generator().manual_seed(0))
    bits = {}
    for tau in (0.02, 0.5, 0.98):
        block = tiny_llama(seed=0).model.layers[0]
        torch.manual_seed(0)  # same router init for every τ
        cfg = TINY.with_overrides(train_tau=tau, router=router)
        cal = _BlockCalibrator(block, "model.layers.0", SPEC, cfg, [1, 2, 3], True, {})
        assert {w.train_tau for w in cal.wrapped.values()} == {tau}
        cal.set_mode(ROUTED)
        q_proj = cal.wrapped["self_attn.q_proj"]
        if router == "block":
            cal._block_gates(block, (x,), {})
        q_proj(x)
        bits[tau] = float(q_proj.last_bits.detach().mean())
    assert bits[0.02] > bits[0.5] > bits[0.98]  # a higher training τ switches fewer slices on
    assert bits[0.02] == pytest.approx(8.0) and bits[0.98] == pytest.approx(4.0)


@pytest.mark.parametrize("router", ["linear", "block"])
def test_one_stacked_forward_equals_a_forward_per_mode(tiny_llama, router):
    """``mode=(1, 2, 3, "routed")`` on the concatenated streams gives each mode's own output and gradient."""
    from mbq_onnx.calibrate.engine import _BlockCalibrator, capture_block_inputs
    from mbq_onnx.calibrate.trainable import ROUTED
    from mbq_onnx.model.surgery import layer_output

    torch.manual_seed(0)
    model = tiny_llama(seed=0)
    _, kwargs = capture_block_inputs(model, _ids(n=1, seqlen=16))
    block, kw = model.model.layers[0], kwargs[0]
    for p in block.parameters():
        p.requires_grad_(False)
    cfg = TINY.with_overrides(router=router, grad_dtype="float32")
    cal = _BlockCalibrator(block, "model.layers.0", SPEC, cfg, [1, 2, 3], True, kw)
    with torch.no_grad():  # a learned-looking clipping, so every mode differs from RTN
        for w in cal.wrapped.values():
            w.clip_lo.uniform_(0.7, 1.0)
            w.clip_hi.uniform_(0.7, 1.0)
    gen = torch.Generator().manual_seed(1)
    streams = {k: torch.randn(2, 16, model.config.hidden_size, generator=gen) for k in (1, 2, 3)}
    idx = torch.arange(2)
    stacked = cal._forward_all(streams, idx, [1, 2, 3], routed=True)
    grad_stacked = torch.autograd.grad(sum(o.square().sum() for o in stacked), cal.parameters("lwc"))
    single = []
    for mode, x in ((1, streams[1]), (2, streams[2]), (3, streams[3]), (ROUTED, streams[3])):
        cal.set_mode(mode)
        single.append(layer_output(block, x, kw))
    grad_single = torch.autograd.grad(sum(o.square().sum() for o in single), cal.parameters("lwc"))
    for got, want in zip(stacked, single, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(grad_stacked, grad_single, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(stacked[0], stacked[2])  # the modes really differ
    cal.restore()


def test_holdout_windows_are_not_trained_on_and_judge_the_guard(tiny_llama):
    model = tiny_llama(seed=0)
    cfg = TINY.with_overrides(holdout=2)
    result = calibrate(model, None, SPEC, cfg, input_ids=_ids(n=10), progress=False)
    assert result.report["holdout_windows"] == 2
    for b in result.report["blocks"]:
        assert b["mse_windows"] == "heldout"
        for k, rtn in b["rtn_mse"].items():
            assert b["calibrated_mse"][k] <= rtn * (1 + 1e-6)  # the guard holds on the held-out windows
        held = b["train_loss"]["stage2_heldout"]
        assert len(held) == cfg.epochs + 1 and all(h == h for h in held)  # start + one per epoch, finite
    with pytest.raises(ValueError, match="holdout=8"):
        calibrate(model, None, SPEC, TINY.with_overrides(holdout=8), input_ids=_ids(n=8), progress=False)


@pytest.mark.parametrize("low_forward", [False, True])
def test_bf16_gradients_match_float32(low_forward):
    """``matmul_t`` keeps the float32 forward (unless ``low_forward``) and gives gradients within bf16's
    rounding of autograd's."""
    from mbq_onnx.calibrate.matmul import matmul_t

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 64, 48, generator=gen, requires_grad=True)
    w = torch.randn(3, 32, 48, generator=gen, requires_grad=True)
    g = torch.randn(3, 64, 32, generator=gen)
    want = x @ w.transpose(1, 2)
    gx, gw = torch.autograd.grad(want, (x, w), g)
    got = matmul_t(x, w, torch.bfloat16, low_forward=low_forward)
    if low_forward:
        assert 0 < (got - want).norm() / want.norm() < 1e-2
    else:
        assert torch.equal(got, want)
    hx, hw = torch.autograd.grad(got, (x, w), g)
    for have, ref in ((hx, gx), (hw, gw)):
        assert have.dtype == torch.float32
        assert (have - ref).norm() / ref.norm() < 1e-2
        assert not torch.equal(have, ref)  # really computed in bfloat16
    w2 = torch.randn(32, 48, generator=gen, requires_grad=True)  # one weight for every leading row
    y2 = matmul_t(x, w2, torch.bfloat16)
    assert y2.shape == (3, 64, 32)
    (hw2,) = torch.autograd.grad(y2, (w2,), g)
    ref2 = torch.einsum("btn,btk->nk", g, x.detach())
    assert (hw2 - ref2).norm() / ref2.norm() < 1e-2
    with pytest.raises(ValueError, match="grad_dtype"):
        CalibConfig(grad_dtype="float16")
