"""Learnable equivalent transformation (OmniQuant LET) for weight-only quantization.

A per-channel scale ``s > 0`` sits between a *producer* and the linears that consume its output:
the consumers compute ``(x / s) · (W·diag(s))ᵀ``, which equals ``x·Wᵀ`` in float, but their weights
are quantized after the scaling, so ``s`` moves quantization error between input channels (AWQ's
idea, learned here jointly with the clipping on the block-output loss). Once a block is trained the
scale is folded into the producer and the model is plain again: a norm's weight (and bias) divided
by ``s``, or a producer linear's output rows divided by ``s`` — exact, since its per-row groups
scale with their row.

Each scale starts activation-aware (AWQ: ``s ∝ mean|x|^α``, α searched per pair on the block loss,
α = 0 — no transformation — among the candidates) and is then trained with the clipping.

The pairs of a LLaMA-style decoder block (LLaMA, Mistral, Qwen2, SmolLM):

- ``input_layernorm`` → ``self_attn.{q,k,v}_proj``
- ``post_attention_layernorm`` → ``mlp.{gate,up}_proj``
- ``self_attn.v_proj`` → ``self_attn.o_proj`` (one scale per value channel, repeated over the query
  heads that share it under grouped-query attention)
- ``mlp.up_proj`` → ``mlp.down_proj`` (``act(gate)·up`` is linear in ``up``)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

#: The exponents α tried for each pair's activation-aware start (0: no transformation).
ALPHA_GRID = (0.0, 0.25, 0.5, 0.75)

#: ``(producer, consumers)`` relative to a decoder block; a producer ending in ``norm`` is a norm module.
LLAMA_PAIRS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    ("self_attn.v_proj", ("self_attn.o_proj",)),
    ("mlp.up_proj", ("mlp.down_proj",)),
)


class EquivalentScale(nn.Module):
    """One learnable scale ``s = exp(log_s)`` ``[C]`` between ``producer`` and ``consumers``.

    ``index`` ``[K]`` maps each consumer input channel to its scale channel (``None``: one to one).
    Starts at ``s = 1``, the untransformed block.
    """

    def __init__(self, producer: str, consumers: tuple[str, ...], channels: int, index: Tensor | None = None):
        super().__init__()
        self.producer, self.consumers = producer, consumers
        self.log_s = nn.Parameter(torch.zeros(channels))
        self.register_buffer("index", index, persistent=False)

    @property
    def from_norm(self) -> bool:
        """The producer is a norm (folded into its weight); else a linear (folded into its output rows)."""
        return self.producer.rsplit(".", 1)[-1].endswith("norm")

    def scale(self) -> Tensor:
        """``s`` ``[C]``, one per producer output channel."""
        return self.log_s.exp()

    def input_scale(self) -> Tensor:
        """``s`` per consumer input channel ``[K]``."""
        s = self.scale()
        return s if self.index is None else s[self.index]

    @torch.no_grad()
    def reset(self) -> None:
        """Back to ``s = 1`` (no transformation)."""
        self.log_s.zero_()

    @torch.no_grad()
    def set_activation_aware(self, input_magnitude: Tensor, alpha: float) -> None:
        """AWQ's scale ``s ∝ mean|x|^α`` from the consumers' summed input magnitude per channel ``[K]``
        (averaged over the channels a scale serves; a common factor cancels), normalised to
        ``sqrt(max·min) = 1``; α = 0 is ``s = 1``."""
        m = input_magnitude.float()
        if self.index is not None:
            zeros = torch.zeros_like(self.log_s)
            m = zeros.index_add(0, self.index, m) / zeros.index_add(0, self.index, torch.ones_like(m))
        log_s = alpha * m.clamp(min=1e-8).log()
        self.log_s.copy_(log_s - (log_s.max() + log_s.min()) / 2)


@dataclass
class LinearLet:
    """The scales a :class:`~mbq_onnx.calibrate.trainable.CalibLinear` sees: ``consumer`` multiplies its
    weight's columns (and, from a norm, divides its input), ``producer`` divides its weight's rows."""

    consumer: EquivalentScale | None = None
    producer: EquivalentScale | None = None

    def weight(self, w: Tensor) -> Tensor:
        """The transformed weight ``diag(1/s_out)·W·diag(s_in)``."""
        if self.consumer is not None:
            w = w * self.consumer.input_scale()
        if self.producer is not None:
            w = w / self.producer.scale()[:, None]
        return w

    def bias(self, b: Tensor | None) -> Tensor | None:
        if b is None or self.producer is None:
            return b
        return b / self.producer.scale()

    def inputs(self, x: Tensor) -> Tensor:
        """``x / s`` where the producer is a norm outside the linears (a producer linear already divided)."""
        if self.consumer is not None and self.consumer.from_norm:
            return x / self.consumer.input_scale()
        return x


def _o_proj_index(block: nn.Module, v_out: int, o_in: int) -> Tensor | None:
    """Value channel of each ``o_proj`` input channel under grouped-query attention."""
    if v_out == o_in:
        return None
    attn = block.get_submodule("self_attn")
    head_dim = getattr(attn, "head_dim", None)
    if not head_dim or o_in % v_out or v_out % head_dim:
        raise ValueError(f"LET: cannot map o_proj's {o_in} inputs onto v_proj's {v_out} outputs")
    groups = o_in // v_out
    col = torch.arange(o_in)
    return (col // head_dim // groups) * head_dim + col % head_dim


def block_scales(block: nn.Module, linears: dict[str, nn.Linear]) -> list[EquivalentScale]:
    """The LET scales of one decoder block (:data:`LLAMA_PAIRS`); a clear error for other block types."""
    names = dict(block.named_modules())
    missing = [n for p, cs in LLAMA_PAIRS for n in (p, *cs) if n not in names]
    if missing:
        raise ValueError(
            f"LET knows LLaMA-style decoder blocks; {type(block).__name__} has no {', '.join(missing)}"
        )
    scales = []
    for producer, consumers in LLAMA_PAIRS:
        k = linears[consumers[0]].in_features
        if producer in linears:
            c = linears[producer].out_features
            index = _o_proj_index(block, c, k) if consumers == ("self_attn.o_proj",) else None
            if index is None and c != k:
                raise ValueError(f"LET: {producer} gives {c} channels, {consumers[0]} takes {k}")
        else:
            c, index = k, None
        scales.append(EquivalentScale(producer, consumers, c, index))
    return scales


@torch.no_grad()
def fold_into_norm(norm: nn.Module, s: Tensor) -> dict[str, Tensor]:
    """Divide a norm's weight (and bias) by ``s`` in place; returns the original tensors by attribute."""
    original = {}
    for attr in ("weight", "bias"):
        t = getattr(norm, attr, None)
        if isinstance(t, Tensor):
            original[attr] = t.detach().clone()
            t.div_(s.to(t.dtype))
    if "weight" not in original:
        raise ValueError(f"LET: {type(norm).__name__} has no weight to fold the scale into")
    return original
