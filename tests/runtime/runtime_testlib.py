"""The small exported mixed-bit model of the runtime tests, importable without pytest.

Used by ``tests/runtime/conftest.py`` (the ``exported_model`` fixture) and by
``tools/make_android_fixture.py`` (which loads this file by path). Bigger than the 2-layer toy of
tests/conftest.py (hidden 512) so that the slice count visibly changes step latency — the budget
controller needs a τ → latency curve with a slope to act on.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SLICES = (4, 2, 2)


def _tiny_models():
    """``tests/tiny_models.py`` (the shared tiny-model factories), loaded by path: this file is also loaded
    by path from ``tools/``, where ``tests/`` is not importable."""
    spec = importlib.util.spec_from_file_location("tiny_models", Path(__file__).parents[1] / "tiny_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_exported_model(
    root: Path,
    hidden: int = 512,
    layers: int = 2,
    seed: int = 0,
    max_positions: int = 1024,
    source_model: str = "random-llama",
) -> Path:
    """Random LLaMA (byte-level vocab 256) → RTN mixed-bit artifact with spread random routers →
    exported model dir ``root/model`` (artifact and tokenizer are written beside it in ``root``)."""
    from mbq_onnx.export import export_artifact
    from mbq_onnx.model import quantize_model, save_artifact
    from mbq_onnx.quant.spec import QuantSpec

    tiny = _tiny_models()
    model = tiny.make_tiny_decoder(
        "llama",
        seed,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
    )
    spec = QuantSpec(SLICES, 64)
    quantize_model(model, spec, granularity="linear", router_hidden=8, seed=seed)
    tiny.make_router_spread(model, seed)  # different tokens and τ pick different slice counts
    tok_dir = root / "tokenizer"
    tiny.write_byte_tokenizer(tok_dir)
    artifact = save_artifact(
        root / "artifact",
        model,
        spec,
        tau_table=[{"tau": 0.5, "avg_slices": 2.0, "avg_bits": 6.0}],
        source={"model": source_model, "seed": seed},
        tokenizer=tok_dir,
    )
    return Path(export_artifact(artifact, root / "model", progress=False))
