"""ONNX schema of ``com.mbq::MixedBitMatMul`` (contract: ``custom_ops/README.md``).

ONNX's checker, shape inference and onnxscript's translation need the schema registered in the
process; :func:`register_schema` does that once (idempotent).
"""

from __future__ import annotations

import onnx
from onnx import defs

DOMAIN = "com.mbq"
OP_NAME = "MixedBitMatMul"
OP_VERSION = 1

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


def register_schema() -> None:
    """Register the schema with ONNX (no-op when it is already registered)."""
    if defs.has(OP_NAME, OP_VERSION, DOMAIN):
        return
    defs.register_schema(build_schema())
