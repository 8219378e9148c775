"""ONNX schemas of ``com.mbq::MixedBitMatMul`` and ``com.mbq::RouterCounts`` (contract:
``custom_ops/README.md``).

ONNX's checker, shape inference and onnxscript's translation need the schemas registered in the
process; :func:`register_schema` does that once (idempotent).
"""

from __future__ import annotations

import onnx
from onnx import defs

DOMAIN = "com.mbq"
OP_NAME = "MixedBitMatMul"
OP_VERSION = 1
ROUTER_OP_NAME = "RouterCounts"

_P = defs.OpSchema.FormalParameter
_A = defs.OpSchema.Attribute
_T = defs.OpSchema.AttrType


def _infer(ctx) -> None:
    """Y = float32 ``A.shape[:-1] + [N]``."""
    a_type = ctx.get_input_type(0)
    n = ctx.get_attribute("N")
    out = onnx.TypeProto()
    out.tensor_type.elem_type = onnx.TensorProto.FLOAT
    if a_type is not None and a_type.tensor_type.HasField("shape"):
        dims = list(a_type.tensor_type.shape.dim)
        shape = out.tensor_type.shape
        for d in dims[:-1]:
            shape.dim.add().CopyFrom(d)
        last = shape.dim.add()
        if n is not None:
            last.dim_value = n.i
    ctx.set_output_type(0, out)


def build_schema() -> defs.OpSchema:
    """The ``MixedBitMatMul`` v1 schema: inputs A, slice_count, packed, scales, zeros; attributes K, N,
    group_size, slice_bits (+ optional accuracy_level)."""
    schema = defs.OpSchema(
        OP_NAME,
        DOMAIN,
        OP_VERSION,
        doc="Y = A @ W_k^T where row r uses the first slice_count[r] bit slices of a packed "
        "truncation-ready weight (see custom_ops/README.md).",
        inputs=[
            _P("A", "T", "activations [..., K]"),
            _P("slice_count", "tensor(int64)", "slices per row, shape A.shape[:-1], 1..S"),
            _P("packed", "tensor(uint8)", "concatenated slice planes (1-D)"),
            _P("scales", "T", "per (output channel, group) scale [N, G]"),
            _P("zeros", "tensor(uint8)", "per (output channel, group) zero point [N, G]"),
        ],
        outputs=[_P("Y", "T", "output [..., N]")],
        type_constraints=[("T", ["tensor(float)"], "float32 activations and scales")],
        attributes=[
            _A("K", _T.INT, "in_features"),
            _A("N", _T.INT, "out_features"),
            _A("group_size", _T.INT, "group size along K (power of two >= 16)"),
            _A("slice_bits", _T.INTS, "slice bit widths, base slice first"),
            _A("accuracy_level", _T.INT, "0 (default): float; 4: int8 activations", required=False),
        ],
    )
    schema.set_type_and_shape_inference_function(_infer)
    return schema


def _infer_router(ctx) -> None:
    """counts = int64 ``X.shape[:-1]`` (+ ``[members]`` when ``combine`` is 0 and ``members`` > 1)."""
    x_type = ctx.get_input_type(0)
    members = ctx.get_attribute("members")
    combine = ctx.get_attribute("combine")
    m = members.i if members is not None else None
    per_member = combine is None or combine.i == 0
    out = onnx.TypeProto()
    out.tensor_type.elem_type = onnx.TensorProto.INT64
    if x_type is not None and x_type.tensor_type.HasField("shape") and m is not None:
        shape = out.tensor_type.shape
        for d in list(x_type.tensor_type.shape.dim)[:-1]:
            shape.dim.add().CopyFrom(d)
        if per_member and m > 1:
            shape.dim.add().dim_value = m
    ctx.set_output_type(0, out)


def build_router_schema() -> defs.OpSchema:
    """The ``RouterCounts`` v1 schema: inputs X, thresholds, W1, B1, W2, B2; attributes pad, members
    (+ optional combine)."""
    schema = defs.OpSchema(
        ROUTER_OP_NAME,
        DOMAIN,
        OP_VERSION,
        doc="Slice counts of a group of routers: silu(([x, pad]/||[x, pad]||) @ W1 + B1) @ W2 + B2 "
        "per member [S+1] logits, count = first index where logit > threshold is false "
        "(see custom_ops/README.md).",
        inputs=[
            _P("X", "T", "router input [..., K]"),
            _P("thresholds", "T", "per-column thresholds [S+1] (runtime: from tau / force_slices)"),
            _P("W1", "T", "fc1 of all members [K+1, H]"),
            _P("B1", "T", "fc1 bias [H]"),
            _P("W2", "T", "fc2, members side by side [H, members*(S+1)]"),
            _P("B2", "T", "fc2 bias [members*(S+1)]"),
        ],
        outputs=[_P("counts", "tensor(int64)", "[..., members] (combine=0, members>1) or [...]")],
        type_constraints=[("T", ["tensor(float)"], "float32 inputs")],
        attributes=[
            _A("pad", _T.FLOAT, "value appended to x before normalizing"),
            _A("members", _T.INT, "routers in the group (>= 1)"),
            _A("combine", _T.INT, "0 (default): a count per member; 1: the max over members", required=False),
        ],
    )
    schema.set_type_and_shape_inference_function(_infer_router)
    return schema


def register_schema() -> None:
    """Register both schemas with ONNX (no-op for one that is already registered)."""
    if not defs.has(OP_NAME, OP_VERSION, DOMAIN):
        defs.register_schema(build_schema())
    if not defs.has(ROUTER_OP_NAME, OP_VERSION, DOMAIN):
        defs.register_schema(build_router_schema())
