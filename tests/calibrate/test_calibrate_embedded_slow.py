"""Calibration on the embedded SmolLM2 model, cut to its first two blocks to stay within minutes."""

from __future__ import annotations

import pytest
import torch

from mbq_onnx import assets
from mbq_onnx.calibrate import CalibConfig, calibrate, write_artifact
from mbq_onnx.model import build_model
from mbq_onnx.quant.spec import QuantSpec


@pytest.mark.slow
def test_two_real_blocks_calibrate_below_rtn(tmp_path):
    model, tokenizer = assets.load_model(None)
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    spec = QuantSpec((4, 2, 2), 128)  # K = 576 leaves a ragged last group
    cfg = CalibConfig(samples=4, seqlen=128, base_epochs=1, epochs=2, batch_size=2, lr_lwc=1e-2)
    result = calibrate(model, tokenizer, spec, cfg, progress=False)
    assert result.report["samples"] == [4, 128]
    gained = 0.0
    for b in result.report["blocks"]:
        for k, rtn in b["rtn_mse"].items():
            assert b["calibrated_mse"][k] <= rtn * (1 + 1e-6)
        gained = max(gained, 1 - b["calibrated_mse"]["1"] / b["rtn_mse"]["1"])
    assert gained > 0.01, "LWC did not improve the 4-bit block output on a real model"
    path = write_artifact(tmp_path / "art", model, result, tokenizer=tokenizer)
    built, ctx = build_model(path)
    ids = assets.heldout_ids(tokenizer, "sotu-2000+", max_tokens=64)[None]
    losses = {}
    for k in (1, 3):
        ctx.force_slices = k
        with torch.no_grad():
            losses[k] = built(input_ids=ids, labels=ids).loss.item()
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
