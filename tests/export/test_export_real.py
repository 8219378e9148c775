"""Exporter on the embedded SmolLM2-135M (30 layers, GQA, ragged groups of 128 over K=576): an RTN
artifact with per-linear routers, exported with KV cache, checked against PyTorch for a few steps."""

from __future__ import annotations

import numpy as np
import pytest
from export_testlib import OrtLM, open_lm, torch_forward

#: Max |logits_ORT - logits_torch| on the real model (|logits| ~ 20, 30 layers of float32 accumulation).
REAL_LOGITS_ATOL = 2e-3


def _rtn_artifact(tmp_path):
    """The embedded model as an RTN [4,2,2] g128 artifact with spread per-linear routers."""
    import torch

    from mbq_onnx.assets import load_model
    from mbq_onnx.model import quantize_model, save_artifact
    from mbq_onnx.model.routing import SliceRouter
    from mbq_onnx.quant.spec import QuantSpec

    model, tokenizer = load_model()
    spec = QuantSpec((4, 2, 2), 128)  # K = 576 = 4.5 groups: ragged last group
    quantize_model(model, spec, granularity="linear")
    with torch.no_grad():  # untrained routers sit near sigmoid = 0.5; spread them so mid τ mixes counts
        for m in model.modules():
            if isinstance(m, SliceRouter):
                m.fc2.bias.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(0))
    art = save_artifact(tmp_path / "artifact", model, spec, tokenizer=tokenizer, source={"method": "rtn"})
    return art, tokenizer


@pytest.mark.slow
def test_embedded_model_lean_export_parity(tmp_path):
    """The default (lean) export of the embedded model against the PyTorch model routed the lean way."""
    import torch

    from mbq_onnx.export import export_artifact
    from mbq_onnx.export.routers import grouped_routers
    from mbq_onnx.model import build_model
    from mbq_onnx.runtime import MbqSession

    art, tokenizer = _rtn_artifact(tmp_path)
    out_dir = export_artifact(art, tmp_path / "lean", progress=False)
    session = MbqSession(out_dir)
    assert session.shared_kv and session.config.raw["graph"] == "lean"
    model, ctx = build_model(art, cache_weights=True)
    ids = np.array([tokenizer("The capital of France is")["input_ids"]], np.int64)
    for tau, force in ((0.5, 1), (0.5, 3), (0.25, 0)):
        out = session.run(ids, session.empty_cache(), tau=tau, force_slices=force, all_positions=True)
        ctx.tau, ctx.force_slices = tau, (force or None)
        with torch.no_grad(), grouped_routers(model, ctx, combine_max=True):
            ref = model(torch.from_numpy(ids)).logits.numpy()
        assert np.abs(out.logits - ref).max() <= REAL_LOGITS_ATOL
    assert len(np.unique(out.slice_counts)) >= 2, "the spread routers should mix slice counts at τ=0.25"
    cache, tokens = session.empty_cache(), []
    out = session.run(ids, cache, force_slices=3)
    for _ in range(6):
        tokens.append(int(out.logits[0].argmax()))
        out = session.run(np.array([[tokens[-1]]], np.int64), out.present, force_slices=3)
    assert "Paris" in tokenizer.decode(tokens)


@pytest.mark.slow
def test_embedded_model_export_parity(tmp_path):
    """The traced (dynamo) export of the embedded model, fed optimum-style, against transformers' forward."""
    from mbq_onnx.export import export_artifact
    from mbq_onnx.model import build_model

    art, tokenizer = _rtn_artifact(tmp_path)
    out_dir = export_artifact(art, tmp_path / "model", graph="dynamo", progress=False)
    assert (out_dir / "tokenizer.json").is_file()
    model, ctx = build_model(art, cache_weights=True)
    lm = open_lm(out_dir)
    ids = np.array([tokenizer("The capital of France is")["input_ids"]], np.int64)
    for tau, force in ((0.5, 1), (0.5, 3), (0.25, 0)):
        out = lm.run(ids, tau=tau, force=force)
        ref_logits, ref_counts, _ = torch_forward(model, ctx, ids, tau=tau, force=force)
        assert np.abs(out["logits"] - ref_logits).max() <= REAL_LOGITS_ATOL
        np.testing.assert_array_equal(out["slice_counts"], ref_counts)
    assert len(np.unique(out["slice_counts"])) >= 2, "the spread routers should mix slice counts at τ=0.25"
    # a few greedy steps with the KV cache, at all slices (≈ 8-bit): same tokens as PyTorch, sensible text
    out = lm.run(ids, force=3)
    ref_logits, _, cache = torch_forward(model, ctx, ids, force=3)
    tokens = []
    for _ in range(6):
        token = int(out["logits"][0, -1].argmax())
        assert token == int(ref_logits[0, -1].argmax())
        tokens.append(token)
        step = np.array([[token]], np.int64)
        out = lm.run(step, past=OrtLM.present_as_past(out), force=3)
        ref_logits, _, cache = torch_forward(model, ctx, step, cache=cache, force=3)
        assert np.abs(out["logits"] - ref_logits).max() <= REAL_LOGITS_ATOL
    assert "Paris" in tokenizer.decode(tokens)
