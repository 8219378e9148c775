"""The small exported mixed-bit model of the runtime tests, importable without pytest.

Used by ``tests/runtime/conftest.py`` (the ``exported_model`` fixture) and by
``tools/make_android_fixture.py`` (which loads this file by path). Bigger than the 2-layer toy of
tests/conftest.py (hidden 512) so that the slice count visibly changes step latency — the budget
controller needs a τ → latency curve with a slope to act on.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SLICES = (4, 2, 2)


def write_byte_tokenizer(folder: Path) -> None:
    """A byte-level tokenizer.json with exactly 256 tokens (one per byte), no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))


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
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mbq_onnx.export import export_artifact
    from mbq_onnx.model import SliceRouter, quantize_model, save_artifact
    from mbq_onnx.quant.spec import QuantSpec

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():  # HF init is tiny; widen it so logits and routing vary between tokens
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.08)
    spec = QuantSpec(SLICES, 64)
    quantize_model(model, spec, granularity="linear", router_hidden=8, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # routers with large logits: different tokens and τ pick different slice counts
        for m in model.modules():
            if isinstance(m, SliceRouter):
                m.fc1.weight.normal_(0, 3.0 / m.in_features**0.5, generator=g)
                m.fc2.weight.normal_(0, 2.0, generator=g)
                m.fc2.bias.normal_(0, 1.0, generator=g)
    tok_dir = root / "tokenizer"
    write_byte_tokenizer(tok_dir)
    artifact = save_artifact(
        root / "artifact",
        model,
        spec,
        tau_table=[{"tau": 0.5, "avg_slices": 2.0, "avg_bits": 6.0}],
        source={"model": source_model, "seed": seed},
        tokenizer=tok_dir,
    )
    return Path(export_artifact(artifact, root / "model", progress=False))
