"""Bit-specific baselines for comparison: RTN, GPTQ, and our calibration run for one precision only.

Each baseline turns a float model into a *fake-quantized* float model (weights replaced by their
dequantized b-bit values) so the same perplexity code evaluates all of them.
"""

from .common import BaselineSpec, decoder_linears, float_model_bytes, quantized_model_bytes
from .gptq import gptq_quantize_model, gptq_quantize_weight
from .rtn import rtn_quantize_model, rtn_quantize_weight

__all__ = [
    "BaselineSpec",
    "decoder_linears",
    "float_model_bytes",
    "gptq_quantize_model",
    "gptq_quantize_weight",
    "quantized_model_bytes",
    "rtn_quantize_model",
    "rtn_quantize_weight",
]
