"""A cache-as-tensors view of a LLaMA-style causal LM that plain ``torch.onnx.export(dynamo=True)`` traces.

transformers' ``DynamicCache`` does not survive ``run_decompositions`` in torch 2.13, so the wrapper
takes the past keys/values as explicit tensors, runs the model's own embedding, rotary embedding,
decoder layers, norm and head, and returns the concatenated keys/values as explicit outputs.
Its inputs and outputs follow optimum's ``text-generation-with-past`` convention, plus the
mixed-bit controls ``tau`` and ``force_slices`` and the per-token ``slice_counts`` output.

Families: LLaMA, Mistral and Qwen2 decoders share the layer call and the cache ``update``; they
differ in q/k/v biases (inside the layers) and in sliding-window attention, which the wrapper's own
mask reproduces per layer (:func:`attention_windows`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


class TensorKVCache:
    """The one method the attention of these decoders calls on a cache: ``update`` appends and returns the
    full K/V (all past tokens; a sliding window is applied by the mask, not by trimming the cache)."""

    def __init__(self, past: list[tuple[torch.Tensor, torch.Tensor]] | None) -> None:
        self.past = past
        self.present: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.past is not None:
            past_key, past_value = self.past[layer_idx]
            key = torch.cat([past_key, key], dim=-2)
            value = torch.cat([past_value, value], dim=-2)
        self.present[layer_idx] = (key, value)
        return key, value


def causal_padding_mask(
    attention_mask: torch.Tensor, query_len: int, dtype: torch.dtype, window: int | None = None
) -> torch.Tensor:
    """Additive mask ``[b, 1, q, past+q]``: 0 where query i (at absolute position past+i) may attend key j
    (j <= past+i, ``attention_mask[b, j] == 1`` and, with a sliding ``window``, j > past+i-window, as in
    transformers' ``sliding_window_overlay``), the dtype's minimum elsewhere."""
    total = attention_mask.shape[-1]
    key_pos = torch.arange(total, device=attention_mask.device)
    query_pos = torch.arange(query_len, device=attention_mask.device) + (total - query_len)
    visible = key_pos[None, :] <= query_pos[:, None]
    if window is not None:
        visible = visible & (key_pos[None, :] > query_pos[:, None] - window)
    allowed = visible[None, None] & attention_mask[:, None, None, :].bool()
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def attention_windows(model: nn.Module) -> list[int | None]:
    """Per decoder layer, the sliding-window length of its attention, ``None`` for full causal attention.

    Follows the modeling code: an attention module with a ``sliding_window`` attribute (Qwen2: set from
    ``config.layer_types``, ``None`` on full-attention layers) decides for its layer; otherwise
    ``config.sliding_window`` applies to every layer (Mistral; absent or ``None`` for LLaMA).
    """
    config = model.config
    default = getattr(config, "sliding_window", None)
    windows = []
    for i, layer in enumerate(model.model.layers[: config.num_hidden_layers]):
        window = getattr(getattr(layer, "self_attn", None), "sliding_window", default)
        if window is not None and (not isinstance(window, int) or window < 1):
            raise ValueError(f"layer {i}: sliding window {window!r} is not a positive number of tokens")
        windows.append(window)
    return windows


class CausalLMWithTensorCache(nn.Module):
    """``forward(input_ids, attention_mask, position_ids, past_key_values, tau, force_slices)``.

    ``past_key_values`` is a tuple ``(key_0, value_0, key_1, value_1, ...)`` of
    ``[batch, kv_heads, past, head_dim]`` tensors (``None`` for the no-past graph). Returns
    ``(logits, key_0', value_0', ..., slice_counts)``; ``slice_counts`` (only when ``mixed_bit``) stacks
    the routing decisions recorded in ``ctx`` (``[num_routed, batch, seq]``, int64). A float model
    (``mixed_bit=False``, ``ctx=None``) takes no ``tau``/``force_slices``.
    """

    def __init__(self, model: nn.Module, ctx: Any, with_past: bool = True, mixed_bit: bool = True) -> None:
        super().__init__()
        model_type = getattr(model.config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported architecture {model_type!r}: the exporter handles "
                f"{', '.join(SUPPORTED_MODEL_TYPES)} causal LMs"
            )
        self.model = model
        self.ctx = ctx
        self.with_past = with_past
        self.mixed_bit = mixed_bit
        if mixed_bit and ctx is None:
            raise ValueError("a mixed-bit export needs the model's RoutingContext")
        self.num_layers = model.config.num_hidden_layers
        self.windows = attention_windows(model)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values: tuple[torch.Tensor, ...] | None = None,
        tau: torch.Tensor | None = None,
        force_slices: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        past = None
        if self.with_past:
            past = [(past_key_values[2 * i], past_key_values[2 * i + 1]) for i in range(self.num_layers)]
        cache = TensorKVCache(past)
        if not self.mixed_bit:
            return (self._decode(input_ids, attention_mask, position_ids, cache), *self._present(cache))
        saved = (self.ctx.tau, self.ctx.force_slices, self.ctx.record, self.ctx.records)
        self.ctx.tau, self.ctx.force_slices, self.ctx.record, self.ctx.records = tau, force_slices, True, []
        try:
            logits = self._decode(input_ids, attention_mask, position_ids, cache)
            records = list(self.ctx.records)
        finally:
            self.ctx.tau, self.ctx.force_slices, self.ctx.record, self.ctx.records = saved
        if records:
            slice_counts = torch.stack([r.expand(input_ids.shape) for r in records])
        else:
            slice_counts = torch.zeros((0, *input_ids.shape), dtype=torch.int64)
        return (logits, *self._present(cache), slice_counts)

    def _decode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: TensorKVCache,
    ) -> torch.Tensor:
        decoder = self.model.model
        hidden = decoder.embed_tokens(input_ids)
        masks = {
            w: causal_padding_mask(attention_mask, input_ids.shape[1], hidden.dtype, w)
            for w in dict.fromkeys(self.windows)
        }
        position_embeddings = decoder.rotary_emb(hidden, position_ids=position_ids)
        for layer, window in zip(decoder.layers[: self.num_layers], self.windows, strict=True):
            hidden = layer(
                hidden,
                attention_mask=masks[window],
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
            )
        return self.model.lm_head(decoder.norm(hidden))

    def _present(self, cache: TensorKVCache) -> list[torch.Tensor]:
        if not self.with_past:
            return []
        return [t for i in range(self.num_layers) for t in cache.present[i]]
