"""onnxscript translations: ``torch.ops.mbq.mixed_bit_matmul`` into one ``com.mbq::MixedBitMatMul`` node, the
export-time ``torch.ops.mbq.router_counts`` (``routers.py``) into one ``com.mbq::RouterCounts`` node."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import onnxscript

from .schema import DOMAIN, OP_VERSION, register_schema

mbq = onnxscript.values.Opset(DOMAIN, OP_VERSION)
op = onnxscript.opset18


#: ``accuracy_level`` values of MixedBitMatMul (custom_ops/README.md): 0 float, 4 int8 activations.
ACCURACY_LEVELS = (0, 4)


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
    accuracy_level: int = 0,
) -> Any:
    """A plain function on purpose: ``@onnxscript.script`` without a return annotation breaks the inliner.
    ``accuracy_level`` 0 (the op's default) is not written."""
    extra = {"accuracy_level": accuracy_level} if accuracy_level else {}
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
        **extra,
    )


def router_counts(
    x: Any,
    thresholds: Any,
    w1: Any,
    b1: Any,
    w2: Any,
    b2: Any,
    pad: float,
    members: int,
    combine: int = 0,
) -> Any:
    """``mbq::router_counts`` (see ``routers.py``) as one ``com.mbq::RouterCounts`` node
    (custom_ops/README.md); ``combine`` 0 (the op's default) is not written."""
    extra = {"combine": int(combine)} if combine else {}
    return mbq.RouterCounts(x, thresholds, w1, b1, w2, b2, pad=float(pad), members=int(members), **extra)


def prims_prod(x: Any, dims: Sequence[int] | None = None, output_dtype: Any = None) -> Any:
    """``prims.prod`` (what ``torch.cumprod`` decomposes into) as ``ReduceProd``; the exported routers no
    longer use it (``routers.py``), kept for model code that does."""
    if output_dtype is not None:
        raise NotImplementedError("prims.prod with output_dtype is not supported by the mbq exporter")
    if dims is None:
        return op.ReduceProd(x, keepdims=0)
    return op.ReduceProd(x, op.Constant(value_ints=[int(d) for d in dims]), keepdims=0)


def translation_table(accuracy_level: int = 0) -> dict[Any, Any]:
    """``custom_translation_table`` for ``torch.onnx.export``; registers the ONNX schema as a side effect.
    ``accuracy_level`` goes on every MixedBitMatMul node."""
    import torch

    import mbq_onnx.model.ops  # noqa: F401  (defines torch.ops.mbq.mixed_bit_matmul)

    from . import routers  # noqa: F401  (defines torch.ops.mbq.router_counts)

    if accuracy_level not in ACCURACY_LEVELS:
        raise ValueError(f"accuracy_level {accuracy_level!r}: expected one of {ACCURACY_LEVELS}")
    register_schema()

    return {
        torch.ops.mbq.mixed_bit_matmul.default: functools.partial(
            mixed_bit_matmul, accuracy_level=accuracy_level
        ),
        torch.ops.mbq.router_counts.default: router_counts,
        torch.ops.prims.prod.default: prims_prod,
    }
