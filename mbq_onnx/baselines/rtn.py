"""Round-to-nearest (RTN): plain asymmetric b-bit min/max quantization per (output channel, group)."""

from __future__ import annotations

import torch
from torch import nn

from mbq_onnx.quant import residual

from .common import BaselineSpec, decoder_linears


@torch.no_grad()
def rtn_quantize_weight(w: torch.Tensor, spec: BaselineSpec) -> torch.Tensor:
    """Fake-quantized ``w [N, K]``: own b-bit grid from each group's min/max (ragged last group)."""
    qspec = spec.quant_spec()
    w32 = w.detach().float()
    scale, zero = residual.minmax_params(w32, qspec)
    return residual.fake_quant(w32, scale, zero, qspec, 1).to(w.dtype)


@torch.no_grad()
def rtn_quantize_model(model: nn.Module, spec: BaselineSpec) -> nn.Module:
    """Replace every decoder linear's weight by its RTN fake-quantized value, in place; returns ``model``."""
    for linear in decoder_linears(model).values():
        linear.weight.copy_(rtn_quantize_weight(linear.weight, spec))
    return model
