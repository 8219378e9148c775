"""Tiny seeded random models and artifacts for tests (imported as ``tiny_models``; the fixtures in
``tests/conftest.py`` wrap these). A module of its own: importing ``conftest`` by name is ambiguous
when several test folders have one."""

from __future__ import annotations

from pathlib import Path

#: The tiny decoder shape shared by every family: hidden 72 (not a multiple of 16/32 → ragged groups),
#: MLP 104, 6 heads / 2 KV heads (GQA), vocab 256, 2 layers.
TINY_DECODER = dict(
    vocab_size=256,
    hidden_size=72,
    intermediate_size=104,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
)


#: Overrides for graphs built on ORT's GroupQueryAttention (the lean export), whose CPU kernel needs a head
#: size that is a multiple of 16: hidden 80 = 5 heads × 16, one KV head (GQA 5:1). With groups of 32 the
#: hidden size (2.5 groups) and the MLP (104 = 3.25 groups) still end in ragged groups.
LEAN_HEADS = dict(hidden_size=80, num_attention_heads=5, num_key_value_heads=1)
LEAN_GROUP = 32


def make_tiny_decoder(family: str = "llama", seed: int = 0, tie_word_embeddings: bool = True, **overrides):
    """A tiny seeded random causal LM of a transformers ``model_type`` (``llama``, ``mistral``, ``qwen2``…)
    built from its config (:data:`TINY_DECODER` + ``overrides``), float32, eval mode."""
    import torch
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = CONFIG_MAPPING[family](
        **{**TINY_DECODER, "tie_word_embeddings": tie_word_embeddings, **overrides}
    )
    torch.manual_seed(seed)
    model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config).float().eval()
    with torch.no_grad():  # HF init is tiny (std 0.02) and zero biases; widen so logits and routing vary
        for name, p in model.named_parameters():
            if p.ndim == 2 or name.endswith(".bias"):
                p.normal_(0.0, 0.08)
    return model


def make_tiny_llama(seed: int = 0, tie_word_embeddings: bool = True, **overrides):
    """The tiny decoder (:func:`make_tiny_decoder`) as a LlamaForCausalLM."""
    return make_tiny_decoder("llama", seed, tie_word_embeddings, **overrides)


def make_router_spread(model, seed: int = 0) -> None:
    """Give every SliceRouter random weights with large logits so different tokens/τ pick different counts."""
    import torch

    from mbq_onnx.model.routing import SliceRouter

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SliceRouter):
                m.fc1.weight.normal_(0, 1.0 / m.in_features**0.5 * 3, generator=g)
                m.fc2.weight.normal_(0, 2.0, generator=g)
                m.fc2.bias.normal_(0, 1.0, generator=g)


def make_tiny_artifact(
    out: Path,
    slices=(4, 2, 2),
    group: int = 16,
    granularity: str = "linear",
    seed: int = 0,
    tie_word_embeddings: bool = True,
    router_hidden: int = 8,
    tokenizer_dir: Path | None = None,
    **overrides,
) -> Path:
    """An artifact at ``out`` from the tiny LLaMA (config ``overrides``) with RTN parameters and random
    (spread) routers."""
    from mbq_onnx.model import quantize_model, save_artifact
    from mbq_onnx.quant.spec import QuantSpec

    spec = QuantSpec(tuple(slices), group)
    model = make_tiny_llama(seed, tie_word_embeddings, **overrides)
    quantize_model(model, spec, granularity=granularity, router_hidden=router_hidden, seed=seed)
    make_router_spread(model, seed)
    return save_artifact(
        out,
        model,
        spec,
        tau_table=[{"tau": 0.5, "avg_slices": 2.0, "avg_bits": 6.0}],
        source={"model": "tiny-random-llama", "seed": seed},
        tokenizer=tokenizer_dir,
    )


def write_byte_tokenizer(folder: Path) -> None:
    """A byte-level tokenizer.json with exactly 256 tokens (one per byte), no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))


def make_tiny_pair(root: Path, tau_key: str = "avg_bits_per_call", **overrides) -> tuple[Path, Path]:
    """``(float model folder, artifact)`` under ``root``: the tiny LLaMA (config ``overrides``) with SmolLM2's
    49,152-token vocabulary and tokenizer, saved as a transformers folder, and its RTN artifact ([4,2,2],
    groups of 16) with spread random routers. ``tau_key``: the τ-table key (the pre-rename ``avg_bits``
    still loads)."""
    from mbq_onnx import assets
    from mbq_onnx.export.exporter import copy_tokenizer_files
    from mbq_onnx.model import quantize_model, save_artifact
    from mbq_onnx.quant.spec import QuantSpec

    tokenizer_dir = assets.embedded_model_dir()
    shape = {"vocab_size": 49152, **overrides}
    model_dir = root / "tiny-llama"
    make_tiny_llama(0, **shape).save_pretrained(model_dir)
    copy_tokenizer_files(tokenizer_dir, model_dir)
    model = make_tiny_llama(0, **shape)
    spec = QuantSpec((4, 2, 2), 16)
    quantize_model(model, spec, granularity="linear", router_hidden=8, seed=0)
    make_router_spread(model, 0)
    artifact = save_artifact(
        root / "tiny-art",
        model,
        spec,
        tau_table=[{"tau": 0.5, "avg_slices": 2.0, tau_key: 6.0}],
        source={"model": model_dir.name},
        tokenizer=tokenizer_dir,
    )
    return model_dir, artifact
