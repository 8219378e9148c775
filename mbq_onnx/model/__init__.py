"""The mixed-bit PyTorch model: ``mbq::mixed_bit_matmul`` op, ``MixedBitLinear``, routers, artifact I/O."""

from .artifact import Artifact, ArtifactError, build_model, load_artifact, save_artifact
from .linear import (
    MixedBitLinear,
    decoder_linear_names,
    iter_mixed_bit_linears,
    quantize_model,
    set_weight_cache,
)
from .ops import mixed_bit_matmul
from .routing import OracleCounts, RandomCounts, RoutingContext, SliceRouter, slice_counts, slice_gates
from .surgery import capture_layer_inputs, decoder_layers, set_submodule

__all__ = [
    "Artifact",
    "ArtifactError",
    "MixedBitLinear",
    "OracleCounts",
    "RandomCounts",
    "RoutingContext",
    "SliceRouter",
    "build_model",
    "capture_layer_inputs",
    "decoder_layers",
    "decoder_linear_names",
    "iter_mixed_bit_linears",
    "load_artifact",
    "mixed_bit_matmul",
    "quantize_model",
    "save_artifact",
    "set_submodule",
    "set_weight_cache",
    "slice_counts",
    "slice_gates",
]
