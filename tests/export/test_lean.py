"""The lean graph (GenAI builder layout + MixedBitMatMul/RouterCounts): structure, parity with the PyTorch
model (one routing decision per fused group), the shared KV cache, the 8-bit LM head, and bad options."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from export_testlib import TINY_LOGITS_ATOL
from tiny_models import LEAN_GROUP, LEAN_HEADS, make_tiny_artifact, write_byte_tokenizer

from mbq_onnx.export.exporter import ExportError, export_artifact
from mbq_onnx.export.routers import grouped_routers
from mbq_onnx.model import build_model
from mbq_onnx.runtime.session import MbqSession, SharedKVCache

LAYERS = 2


@pytest.fixture(scope="module")
def lean_models(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """granularity → (artifact, lean model dir), exported once for the module."""
    root = tmp_path_factory.mktemp("lean")
    tok = root / "tok"
    write_byte_tokenizer(tok)
    out = {}
    for gran in ("linear", "block", "none"):
        art = make_tiny_artifact(root / f"art-{gran}", group=LEAN_GROUP, granularity=gran, tokenizer_dir=tok,
                                 **LEAN_HEADS)  # fmt: skip
        out[gran] = (art, export_artifact(art, root / f"lean-{gran}", progress=False))
    return out


def _torch_logits(art: Path, ids: np.ndarray, tau: float, force: int) -> tuple[np.ndarray, list]:
    model, ctx = build_model(art)
    ctx.tau, ctx.force_slices, ctx.record = tau, (force or None), True
    with torch.no_grad(), grouped_routers(model, ctx, combine_max=True):
        logits = model(torch.from_numpy(ids)).logits.numpy()
    return logits, [r.numpy() for r in ctx.records]


def test_default_export_is_lean_with_fused_ops(lean_models):
    _, model_dir = lean_models["linear"]
    cfg = json.loads((model_dir / "mbq_config.json").read_text())
    assert cfg["graph"] == "lean" and cfg["kv_cache"] == "shared-buffer"
    import onnx

    ops = collections.Counter(n.op_type for n in onnx.load(str(model_dir / "model.onnx")).graph.node)
    assert ops["GroupQueryAttention"] == LAYERS
    assert ops["MixedBitMatMul"] == 4 * LAYERS  # q/k/v fused, o, gate/up fused, down
    assert ops["RouterCounts"] == 4 * LAYERS  # one per group
    assert ops["MatMul"] == 1  # only the float LM head
    assert not {"Softmax", "Pow", "ReduceMean", "Cos", "Sin", "Transpose"} & set(ops)  # all fused
    assert ops["Concat"] <= 3  # thresholds and slice_counts, once per graph (no Concat-grown cache)
    assert [g["linears"] for g in cfg["router_groups"][:2]] == [
        [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"],
        ["model.layers.0.self_attn.o_proj"],
    ]


@pytest.mark.parametrize("gran", ["linear", "block", "none"])
@pytest.mark.parametrize(("tau", "force"), [(0.7, 0), (0.2, 0), (0.8, 0), (0.5, 1), (0.5, 3)])
def test_logits_and_decisions_match_torch(lean_models, gran, tau, force):
    art, model_dir = lean_models[gran]
    session = MbqSession(model_dir)
    ids = np.random.RandomState(1).randint(0, 256, (1, 12))
    out = session.run(ids, session.empty_cache(), tau=tau, force_slices=force, all_positions=True)
    want, records = _torch_logits(art, ids, tau, force)
    assert np.abs(out.logits - want).max() < TINY_LOGITS_ATOL
    if gran == "linear":  # torch records one entry per routed linear, the graph one per group
        groups = session.config.raw["router_groups"]
        per_linear = [out.slice_counts[i] for i, g in enumerate(groups) for _ in g["linears"]]
        np.testing.assert_array_equal(np.stack(per_linear), np.stack(records))
    elif gran == "block":
        np.testing.assert_array_equal(out.slice_counts, np.stack(records))
    if force:
        assert set(np.unique(out.slice_counts)) == {force}


def test_routing_varies_with_tau(lean_models):
    _, model_dir = lean_models["linear"]
    session = MbqSession(model_dir)
    ids = np.random.RandomState(2).randint(0, 256, (1, 32))
    bits = [
        session.average_bits(session.run(ids, session.empty_cache(), tau=t, all_positions=True).slice_counts)
        for t in (0.05, 0.5, 0.95)
    ]
    assert bits[0] > bits[1] > bits[2]


def test_cached_decode_equals_full_prefill_and_grows_the_buffer(lean_models):
    _, model_dir = lean_models["linear"]
    session = MbqSession(model_dir, threads=1)
    ids = np.random.RandomState(3).randint(0, 256, (1, 20))
    full = session.run(ids, session.empty_cache(), tau=0.7, all_positions=True).logits
    cache = session.empty_cache(capacity=4)
    out = session.run(ids[:, :7], cache, tau=0.7)
    assert out.present is cache and cache.length == 7 and cache.capacity >= 7
    np.testing.assert_allclose(out.logits[0], full[0, 6], atol=TINY_LOGITS_ATOL)
    for t in range(7, 20):
        out = session.run(ids[:, t : t + 1], out.present, tau=0.7)
        np.testing.assert_allclose(out.logits[0], full[0, t], atol=TINY_LOGITS_ATOL)
    assert cache.length == 20 and cache.capacity >= 20
    assert cache.arrays()[0].shape == (1, LEAN_HEADS["num_key_value_heads"], 20, 16)


def test_greedy_generation_matches_torch(lean_models):
    from mbq_onnx.runtime.controller import FixedController
    from mbq_onnx.runtime.generate import generate

    art, model_dir = lean_models["linear"]
    session = MbqSession(model_dir)
    prompt = [5, 17, 99, 3]
    result = generate(session, prompt, FixedController(tau=0.7), max_new_tokens=10, stop_token_ids=[])
    model, ctx = build_model(art)
    ctx.tau = 0.5
    seq = list(prompt)
    with torch.no_grad(), grouped_routers(model, ctx, combine_max=True):
        for _ in range(10):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert result.token_ids == seq[len(prompt) :]


def test_wrong_cache_is_a_clear_error(lean_models):
    _, model_dir = lean_models["none"]
    session = MbqSession(model_dir)
    with pytest.raises(ValueError, match="batch"):
        session.run(np.zeros((2, 3), np.int64), session.empty_cache(batch=1))
    with pytest.raises(TypeError, match="shared buffers"):
        session.run(np.zeros((1, 3), np.int64), [np.zeros((1, 1, 0, 16), np.float32)] * 2 * LAYERS)
    with pytest.raises(ValueError, match="capacity"):
        SharedKVCache(LAYERS, 1, 1, 16, capacity=0)


def test_8bit_lm_head(lean_models, tmp_path):
    art, float_dir = lean_models["none"]
    q8 = export_artifact(art, tmp_path / "q8", lm_head="8bit", progress=False)
    assert json.loads((q8 / "mbq_config.json").read_text())["lm_head"] == "8bit"
    ids = np.random.RandomState(4).randint(0, 256, (1, 16))
    a, b = (MbqSession(d) for d in (float_dir, q8))
    la = a.run(ids, a.empty_cache(), all_positions=True).logits
    lb = b.run(ids, b.empty_cache(), all_positions=True).logits
    rel = np.linalg.norm(la - lb) / np.linalg.norm(la)
    assert 0 < rel < 1e-2  # 8-bit RTN of the head: close, but really quantized
    assert (q8 / "model.onnx").stat().st_size < (float_dir / "model.onnx").stat().st_size


def test_ort_format(lean_models, tmp_path):
    art, model_dir = lean_models["linear"]
    ort_dir = export_artifact(art, tmp_path / "ort", ort_format=True, progress=False)
    ids = np.random.RandomState(5).randint(0, 256, (1, 9))
    a = MbqSession(model_dir)
    b = MbqSession(ort_dir)
    assert b.model_path.name == "model.ort"
    ra, rb = (s.run(ids, s.empty_cache(), tau=0.7, all_positions=True) for s in (a, b))
    np.testing.assert_allclose(ra.logits, rb.logits, atol=TINY_LOGITS_ATOL)
    np.testing.assert_array_equal(ra.slice_counts, rb.slice_counts)


def test_bad_options(lean_models, tmp_path):
    art, _ = lean_models["none"]
    with pytest.raises(ExportError, match="--no-past"):
        export_artifact(art, tmp_path / "a", graph="lean", with_past=False, progress=False)
    with pytest.raises(ExportError, match="lean graph"):
        export_artifact(art, tmp_path / "b", graph="dynamo", lm_head="8bit", progress=False)
    with pytest.raises(ExportError, match="--lm-head"):
        export_artifact(art, tmp_path / "c", lm_head="4bit", progress=False)
    odd = make_tiny_artifact(tmp_path / "odd", granularity="none")  # head size 12
    with pytest.raises(ExportError, match="multiple of 16"):
        export_artifact(odd, tmp_path / "d", graph="lean", progress=False)
    auto = export_artifact(odd, tmp_path / "e", progress=False)  # auto: falls back to the traced graph
    assert json.loads((auto / "mbq_config.json").read_text())["graph"] == "dynamo"


def test_mixed_lm_head_follows_each_tokens_precision(lean_models, tmp_path):
    from mbq_onnx.quant.residual import dequantize_codes, minmax_params, quantize_codes

    art, _ = lean_models["linear"]
    mixed = export_artifact(art, tmp_path / "mixed", lm_head="mixed", progress=False)
    session = MbqSession(mixed)
    model, ctx = build_model(art)
    spec = model.mbq_spec
    w = model.lm_head.weight.detach()
    scale, zero = minmax_params(w, spec)
    codes = quantize_codes(w, scale, zero, spec)
    heads = {k: dequantize_codes(codes, scale, zero, spec, k) for k in range(1, spec.num_slices + 1)}
    ids = np.random.RandomState(6).randint(0, 256, (1, 14))
    for tau, force in ((0.7, 0), (0.5, 1), (0.5, 3), (0.2, 0)):
        out = session.run(ids, session.empty_cache(), tau=tau, force_slices=force, all_positions=True)
        ctx.tau, ctx.force_slices = tau, (force or None)
        with torch.no_grad(), grouped_routers(model, ctx, combine_max=True):
            hidden = model.model(torch.from_numpy(ids)).last_hidden_state[0]
        per_row = np.rint(out.slice_counts[:, 0].mean(0)).astype(int)
        if force:
            assert set(per_row) == {force}
        want = torch.stack([hidden[t] @ heads[int(k)].T for t, k in enumerate(per_row)]).numpy()
        np.testing.assert_allclose(out.logits[0], want, atol=TINY_LOGITS_ATOL)
