"""The whole pipeline on other decoder families: a tiny random Qwen2 (q/k/v biases; sliding-window
attention on its second layer via ``layer_types``) and Mistral (sliding window on every layer), both with
a window shorter than the test sequences. Each goes transformers folder → real calibration → artifact →
export (KV cache) → ORT (``MbqSession``, real op library) and is checked against the PyTorch mixed-bit
model: logits, slice decisions, cached greedy decoding and perplexity. Unsupported types are refused."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from export_testlib import TINY_LOGITS_ATOL, OrtLM, torch_forward
from tiny_models import make_tiny_decoder, write_byte_tokenizer

from mbq_onnx.assets import load_model
from mbq_onnx.calibrate import CalibConfig, calibrate, write_artifact
from mbq_onnx.eval.perplexity import perplexity, torch_logits_fn
from mbq_onnx.export import ExportError, export_artifact, export_float_model
from mbq_onnx.export.wrapper import attention_windows
from mbq_onnx.model import build_model, load_artifact, quantize_model, save_artifact
from mbq_onnx.quant.spec import QuantSpec
from mbq_onnx.runtime import MbqSession

WINDOW = 6  # sliding window (tokens), shorter than every test sequence below
FAMILIES = {
    "qwen2": dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
    "mistral": dict(sliding_window=WINDOW),
}
EXPECTED_WINDOWS = {"qwen2": [None, WINDOW], "mistral": [WINDOW, WINDOW]}
SPEC = QuantSpec((4, 2, 2), 16)
CALIB = CalibConfig(samples=4, seqlen=16, base_epochs=1, epochs=1, batch_size=2, router_hidden=8)
PPL_RTOL = 1e-3


@dataclass
class Pipeline:
    family: str
    hf_dir: Path
    artifact: Path
    model_dir: Path
    model: torch.nn.Module  # the artifact's PyTorch mixed-bit model
    ctx: object
    session: MbqSession

    @property
    def lm(self) -> OrtLM:
        """The same ORT session, fed with full-sequence inputs (all logits, not only the last)."""
        return OrtLM(self.session.session, json.loads((self.model_dir / "mbq_config.json").read_text()))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pipeline(request, tmp_path_factory) -> Pipeline:
    from transformers import PreTrainedTokenizerFast

    family = request.param
    root = tmp_path_factory.mktemp(family)
    hf_dir = root / "hf"
    make_tiny_decoder(family, seed=0, **FAMILIES[family]).save_pretrained(hf_dir)
    write_byte_tokenizer(root / "tok")
    PreTrainedTokenizerFast(tokenizer_file=str(root / "tok" / "tokenizer.json")).save_pretrained(hf_dir)
    model, tokenizer = load_model(hf_dir)
    ids = torch.randint(0, 256, (CALIB.samples, CALIB.seqlen), generator=torch.Generator().manual_seed(0))
    result = calibrate(model, tokenizer, SPEC, CALIB, input_ids=ids, progress=False)
    artifact = write_artifact(root / "artifact", model, result, tokenizer=tokenizer)
    model_dir = export_artifact(artifact, root / "model", progress=False)
    mixed, ctx = build_model(load_artifact(artifact))
    return Pipeline(family, hf_dir, artifact, model_dir, mixed, ctx, MbqSession(model_dir, threads=1))


def _ids(batch: int, seq: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, seq), dtype=np.int64)


def test_artifact_rebuilds_the_family_and_the_graph_keeps_biases(pipeline):
    model = pipeline.model
    assert model.config.model_type == pipeline.family
    assert attention_windows(model) == EXPECTED_WINDOWS[pipeline.family]
    quantized = load_artifact(pipeline.artifact).quantized
    assert len(quantized) == 14
    biased = sorted(name for name, info in quantized.items() if info["bias"])
    if pipeline.family == "qwen2":
        assert biased == sorted(f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qkv")
        assert model.get_submodule("model.layers.0.self_attn.q_proj").bias.abs().max() > 0
    else:
        assert biased == []
    proto = onnx.load(str(pipeline.model_dir / "model.onnx"))
    inits = {i.name for i in proto.graph.initializer}
    matmul_of = {
        n.output[0]: n.input[2].removesuffix(".packed")
        for n in proto.graph.node
        if n.op_type == "MixedBitMatMul"
    }
    assert sorted(matmul_of.values()) == sorted(quantized)
    bias_adds = sorted(
        matmul_of[a]
        for n in proto.graph.node
        if n.op_type == "Add"
        for a, b in (n.input, n.input[::-1])
        if a in matmul_of and b == f"{matmul_of[a]}.bias" and b in inits
    )
    assert bias_adds == biased  # MixedBitMatMul → Add(bias), exactly for the linears with a bias


@pytest.mark.parametrize(("tau", "force"), [(0.7, 0), (0.3, 0), (0.85, 0), (0.5, 1), (0.5, 3)])
def test_prefill_logits_and_slice_decisions_match_torch(pipeline, tau, force):
    ids = _ids(2, 3 * WINDOW)
    out = pipeline.lm.run(ids, tau=tau, force=force)
    ref_logits, ref_counts, _ = torch_forward(pipeline.model, pipeline.ctx, ids, tau=tau, force=force)
    diff = np.abs(out["logits"] - ref_logits).max()
    assert diff <= TINY_LOGITS_ATOL, f"max |Δlogits| {diff}"
    np.testing.assert_array_equal(out["slice_counts"], ref_counts)
    if force:
        assert set(np.unique(out["slice_counts"]).tolist()) == {force}


def test_routers_spread_over_tau(pipeline):
    """The calibrated routers do route: τ from low to high lowers the slice counts (same in ORT and torch,
    checked above), so the parity tests compare real per-token decisions."""
    ids = _ids(1, 16, seed=4)
    means = [pipeline.lm.run(ids, tau=t)["slice_counts"].mean() for t in (0.05, 0.5, 0.95)]
    assert means[0] > means[2] and means == sorted(means, reverse=True)


def test_cached_greedy_decoding_matches_full_forward(pipeline):
    """Greedy steps with the KV cache (past the sliding window) give the logits of a cache-free forward
    over the whole sequence, in ORT and in PyTorch."""
    session, tau = pipeline.session, 0.7
    seq = _ids(1, WINDOW + 2, seed=2)[0].tolist()
    out = session.run(np.array([seq], np.int64), session.empty_cache(), tau=tau)
    for _ in range(4):
        seq.append(int(np.argmax(out.logits[0])))
        out = session.run(np.array([seq[-1:]], np.int64), out.present, tau=tau)
        full = pipeline.lm.run(np.array([seq], np.int64), tau=tau)
        ref_logits, ref_counts, _ = torch_forward(pipeline.model, pipeline.ctx, np.array([seq]), tau=tau)
        np.testing.assert_allclose(out.logits, full["logits"][:, -1], atol=TINY_LOGITS_ATOL, rtol=0)
        np.testing.assert_allclose(out.logits, ref_logits[:, -1], atol=TINY_LOGITS_ATOL, rtol=0)
        np.testing.assert_array_equal(out.slice_counts, ref_counts[:, :, -1:])
    assert out.present[0].shape[2] == len(seq)


def test_perplexity_through_ort_matches_torch(pipeline):
    ids = _ids(1, 96, seed=5)[0]
    tau = 0.7
    pipeline.ctx.tau = tau
    lm = pipeline.lm
    ort_res = perplexity(lambda w: lm.run(w, tau=tau)["logits"], ids, window=32, progress=False)
    torch_res = perplexity(torch_logits_fn(pipeline.model), ids, window=32, progress=False)
    assert ort_res.windows == torch_res.windows == 3
    assert ort_res.ppl == pytest.approx(torch_res.ppl, rel=PPL_RTOL)


def test_calibration_and_gptq_give_each_block_its_own_mask(pipeline):
    """The block arguments captured for calibration (and GPTQ) reproduce the model's own forward through
    every block, also across a sliding-window layer."""
    from mbq_onnx.calibrate.engine import capture_block_inputs, decoder_blocks
    from mbq_onnx.model.surgery import capture_layer_inputs

    model, _ = load_model(pipeline.hf_dir)
    _, blocks = decoder_blocks(model)
    ids = torch.as_tensor(_ids(2, 3 * WINDOW, seed=6))
    seen = []
    handle = blocks[-1].register_forward_hook(lambda _m, _a, out: seen.append(out))
    with torch.no_grad():
        for row in ids:
            model(input_ids=row[None], use_cache=False)
    handle.remove()
    expected = torch.cat(seen)
    hidden, per_block = capture_block_inputs(model, ids)
    g_hidden, g_kwargs = capture_layer_inputs(model, [row[None] for row in ids])  # as GPTQ captures
    with torch.no_grad():
        for i, block in enumerate(blocks):
            hidden = block(hidden, **per_block[i])
            g_hidden = [block(h, **kw[i]) for h, kw in zip(g_hidden, g_kwargs, strict=True)]
    torch.testing.assert_close(hidden, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.cat(g_hidden), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("family", "overrides", "expected"),
    [
        ("llama", {}, [None, None]),
        ("qwen2", {}, [None, None]),  # use_sliding_window=False (the default)
        ("qwen2", {"use_sliding_window": True, "sliding_window": 9, "max_window_layers": 0}, [9, 9]),
        ("mistral", {}, [4096, 4096]),  # transformers' default window
        ("mistral", {"sliding_window": None}, [None, None]),
    ],
)
def test_attention_windows_follow_the_config(family, overrides, expected):
    assert attention_windows(make_tiny_decoder(family, **overrides)) == expected


def test_unsupported_model_type_is_refused(tmp_path):
    """A GPT-NeoX (nn.Linear decoder layers: it quantizes and saves) is refused at export, naming its type."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    model = GPTNeoXForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "hf")
    quantize_model(model, SPEC, granularity="none")
    artifact = save_artifact(tmp_path / "artifact", model, SPEC)
    for export, source in ((export_artifact, artifact), (export_float_model, tmp_path / "hf")):
        with pytest.raises(ExportError, match=r"unsupported architecture 'gpt_neox'.*llama, mistral, qwen2"):
            export(source, tmp_path / "out", progress=False)
        assert not (tmp_path / "out").exists()
