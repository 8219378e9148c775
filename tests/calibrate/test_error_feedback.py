"""GPTQ-style error feedback for the truncation-ready code (:mod:`mbq_onnx.calibrate.error_feedback`)."""

from __future__ import annotations

import pytest
import torch
from calib_checks import assert_artifact_runs_like_fake_quant

from mbq_onnx.calibrate import CalibConfig, calibrate, write_artifact
from mbq_onnx.calibrate.__main__ import main as calibrate_main
from mbq_onnx.calibrate.error_feedback import error_feedback_weight
from mbq_onnx.quant import residual
from mbq_onnx.quant.spec import QuantSpec

SPEC = QuantSpec((4, 2, 2), 16)


def _problem(seed: int = 0, n: int = 24, k: int = 48, rows: int = 256):
    """A weight and the Hessian of correlated inputs (GPTQ has something to compensate then)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    mix = torch.randn(k, k, generator=g) / k**0.5 + torch.eye(k)
    x = torch.randn(rows, k, generator=g) @ mix
    scale, zero = residual.minmax_params(w, SPEC)
    return w, x.T @ x, scale, zero


def _err(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    d = (w - q).double()
    return float(torch.einsum("nk,kl,nl->", d, h.double(), d))


def _codes_err(w, wq, h, scale, zero, n_slices):
    codes = residual.quantize_codes(wq, scale, zero, SPEC)
    return _err(w, residual.dequantize_codes(codes, scale, zero, SPEC, n_slices), h)


def test_the_returned_weight_lies_on_the_grid():
    w, h, scale, zero = _problem()
    wq = error_feedback_weight(w, h, scale, zero, SPEC, (1.0, 16.0, 256.0))
    codes = residual.quantize_codes(wq, scale, zero, SPEC)
    torch.testing.assert_close(wq, residual.dequantize_codes(codes, scale, zero, SPEC, 3), rtol=0, atol=1e-6)


def test_without_input_correlation_it_is_rounding():
    """H = I leaves nothing to compensate: the codes are the RTN codes of the weighted precision."""
    w, _, scale, zero = _problem()
    wq = error_feedback_weight(w, torch.eye(w.shape[1]), scale, zero, SPEC, (0.0, 0.0, 1.0))
    assert torch.equal(
        residual.quantize_codes(wq, scale, zero, SPEC), residual.quantize_codes(w, scale, zero, SPEC)
    )


def test_base_slice_alone_is_gptq_and_beats_rounding():
    w, h, scale, zero = _problem()
    wq = error_feedback_weight(w, h, scale, zero, SPEC, (1.0, 0.0, 0.0))
    assert _codes_err(w, wq, h, scale, zero, 1) < 0.8 * _codes_err(w, w, h, scale, zero, 1)


def test_relative_weights_improve_the_weighted_objective():
    w, h, scale, zero = _problem(1)
    lam = (1.0, 16.0, 256.0)
    wq = error_feedback_weight(w, [h, h, h], scale, zero, SPEC, lam)
    objective = [sum(lam[k - 1] * _codes_err(w, v, h, scale, zero, k) for k in (1, 2, 3)) for v in (wq, w)]
    assert objective[0] < objective[1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision_weights": (1.0, 1.0)}, "precision_weights"),
        ({"precision_weights": (0.0, 0.0, 0.0)}, "precision_weights"),
        ({"precision_weights": (1.0, -1.0, 1.0)}, "precision_weights"),
        ({"hessian": torch.eye(5)}, "hessian"),
        ({"damp": 0.0}, "damp"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    w, h, scale, zero = _problem()
    args = {"hessian": h, "precision_weights": (1.0, 1.0, 1.0)} | kwargs
    with pytest.raises(ValueError, match=match):
        error_feedback_weight(
            w, args.pop("hessian"), scale, zero, SPEC, args.pop("precision_weights"), **args
        )


def test_calibration_keeps_error_feedback_only_where_it_measures_better(tiny_llama, tmp_path):
    cfg = CalibConfig(
        samples=8, seqlen=32, base_epochs=1, epochs=1, batch_size=4, holdout=4, error_feedback=(0.5, 1.0)
    )
    model = tiny_llama(seed=0)
    ids = torch.randint(0, 256, (12, 32), generator=torch.Generator().manual_seed(0))
    result = calibrate(model, None, SPEC, cfg, input_ids=ids, progress=False)
    for block in result.report["blocks"]:
        fb = block["error_feedback"]
        assert set(fb["objective"]) == {"none", "0.5", "1.0"}
        kept = fb["exponent"]
        assert fb["objective"]["none" if kept is None else str(kept)] <= fb["objective"]["none"]
        assert all(block["calibrated_mse"][k] <= block["rtn_mse"][k] for k in block["rtn_mse"])
        changed = [n for n in result.weights if n.startswith(block["block"] + ".")]
        assert bool(changed) == (kept is not None)
    # the artifact stores the chosen codes: it runs like the fake-quantized model built from them
    artifact = write_artifact(tmp_path / "art", model, result)
    assert_artifact_runs_like_fake_quant(artifact, model, result, ids[:2], (1, 3))


def test_config_and_cli_reject_bad_exponents(tmp_path, capsys):
    with pytest.raises(ValueError, match="error_feedback"):
        CalibConfig(error_feedback=(3.0,))
    assert calibrate_main(["--output", str(tmp_path / "a"), "--error-feedback", "x"]) == 2
    assert "--error-feedback" in capsys.readouterr().err
