"""onnxscript translation of ``torch.ops.mbq.mixed_bit_matmul`` into one ``com.mbq::MixedBitMatMul`` node."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnxscript

from .schema import DOMAIN, OP_VERSION, register_schema

mbq = onnxscript.values.Opset(DOMAIN, OP_VERSION)
op = onnxscript.opset18


def mixed_bit_matmul(
    x: Any,
    slice_count: Any,
    packed: Any,
    scales: Any,
    zeros: Any,
    K: int,
    N: int,
    group_size: int,
    slice_bits: Sequence[int],
) -> Any:
    """A plain function on purpose: ``@onnxscript.script`` without a return annotation breaks the inliner."""
    return mbq.MixedBitMatMul(
        x,
        slice_count,
        packed,
        scales,
        zeros,
        K=K,
        N=N,
        group_size=group_size,
        slice_bits=[int(b) for b in slice_bits],
    )


def prims_prod(x: Any, dims: Sequence[int] | None = None, output_dtype: Any = None) -> Any:
    """``prims.prod`` (what ``torch.cumprod`` decomposes into, e.g. in the routers) as ``ReduceProd``."""
    if output_dtype is not None:
        raise NotImplementedError("prims.prod with output_dtype is not supported by the mbq exporter")
    if dims is None:
        return op.ReduceProd(x, keepdims=0)
    return op.ReduceProd(x, op.Constant(value_ints=[int(d) for d in dims]), keepdims=0)


def translation_table() -> dict[Any, Any]:
    """``custom_translation_table`` for ``torch.onnx.export``; registers the ONNX schema as a side effect."""
    import torch

    import mbq_onnx.model.ops  # noqa: F401  (defines torch.ops.mbq.mixed_bit_matmul)

    register_schema()
    return {
        torch.ops.mbq.mixed_bit_matmul.default: mixed_bit_matmul,
        torch.ops.prims.prod.default: prims_prod,
    }
