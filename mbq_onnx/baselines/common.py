"""What the baselines quantize (the decoder's linears) and how large the result is."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mbq_onnx.model.linear import decoder_linear_names
from mbq_onnx.quant.spec import QuantSpec

MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class BaselineSpec:
    """A bit-specific setting: ``bits`` per weight, asymmetric, groups of ``group_size`` along K."""

    bits: int = 4
    group_size: int = 128

    def __post_init__(self) -> None:
        if not MIN_BITS <= int(self.bits) <= MAX_BITS:
            raise ValueError(f"bits {self.bits} out of range {MIN_BITS}..{MAX_BITS}")
        self.quant_spec()  # validates the group size

    def quant_spec(self) -> QuantSpec:
        """The one-slice :class:`QuantSpec` whose grid is plain b-bit min/max RTN."""
        return QuantSpec((int(self.bits),), int(self.group_size))


def decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` inside the decoder blocks, by full module name — the same set MoBiQuant
    quantizes (:func:`mbq_onnx.model.linear.decoder_linear_names`); embeddings and lm_head stay float."""
    out = {name: model.get_submodule(name) for name in decoder_linear_names(model)}
    if not out:
        raise ValueError(f"{type(model).__name__}: no linear layers found in its decoder blocks")
    return out


def float_model_bytes(model: nn.Module) -> int:
    """Bytes of all parameters as float32 (tied weights counted once)."""
    return sum(p.numel() * 4 for p in model.parameters())


def quantized_model_bytes(model: nn.Module, bits: float, group_size: int) -> int:
    """Stored bytes when every decoder linear holds ``bits``-bit codes (padded ragged last group) plus a
    float32 scale and a uint8 zero point per (output channel, group); everything else stays float32."""
    linears = decoder_linears(model)
    quantized = {id(m.weight) for m in linears.values()}
    total = sum(p.numel() * 4 for p in model.parameters() if id(p) not in quantized)
    for m in linears.values():
        n, k = m.weight.shape
        groups = -(-k // group_size)
        total += int(n * groups * group_size * bits // 8) + n * groups * 5
    return total
