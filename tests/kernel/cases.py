"""MixedBitMatMul test cases: random quantized weights, ONNX models built with onnx.helper, feeds.

Importable on its own (numpy + onnx + mbq_onnx.quant only), so other runners (the qemu/aarch64
runner, the sanitizer build) can serialize the same models and inputs and compare outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mbq_onnx.quant.packing import pack
from mbq_onnx.quant.reference import mixed_bit_matmul
from mbq_onnx.quant.spec import QuantSpec

DOMAIN = "com.mbq"
OPSET = 20
IR_VERSION = 10


@dataclass
class Weights:
    """Random quantized weights of an N x K linear in the wire format."""

    spec: QuantSpec
    n: int
    k: int
    packed: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray

    @classmethod
    def random(cls, spec: QuantSpec, n: int, k: int, rng: np.random.Generator) -> Weights:
        codes = rng.integers(0, 1 << spec.total_bits, size=(n, k), dtype=np.uint8)
        g = spec.num_groups(k)
        scales = (rng.uniform(0.5, 1.5, size=(n, g)) / (1 << spec.total_bits) / np.sqrt(k)).astype(np.float32)
        zeros = rng.integers(0, 1 << spec.total_bits, size=(n, g), dtype=np.uint8)
        return cls(spec, n, k, pack(codes, spec), scales, zeros)


def single_node_model(node, inputs, output: tuple[str, int], initializers) -> onnx.ModelProto:
    """A one-node model of a ``com.mbq`` op (``output`` = (name, element type)) for the kernel tests.
    IR 10 (ORT >= 1.17 reads it): the arm64/Android runtimes are older than the PyPI one."""
    outputs = [helper.make_tensor_value_info(output[0], output[1], None)]
    graph = helper.make_graph([node], node.op_type, inputs, outputs, initializers)
    return helper.make_model(
        graph,
        ir_version=IR_VERSION,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)],
    )


def make_model(
    w: Weights,
    *,
    lead_rank: int = 1,
    attrs: dict | None = None,
    weights_as_inputs: bool = False,
    input_types: dict[str, int] | None = None,
    declare_shapes: bool = True,
) -> onnx.ModelProto:
    """One-node model ``Y = MixedBitMatMul(A, slice_count, packed, scales, zeros)``.

    ``attrs`` overrides/extends the node attributes (None values drop one); ``weights_as_inputs`` makes
    packed/scales/zeros graph inputs instead of initializers; ``input_types`` overrides declared dtypes;
    ``declare_shapes=False`` leaves the input shapes undeclared (so ORT lets any rank through to the op).
    """
    node_attrs = {"K": w.k, "N": w.n, "group_size": w.spec.group_size, "slice_bits": list(w.spec.slice_bits)}
    node_attrs.update(attrs or {})
    node_attrs = {key: v for key, v in node_attrs.items() if v is not None}
    types = {
        "A": TensorProto.FLOAT,
        "slice_count": TensorProto.INT64,
        "packed": TensorProto.UINT8,
        "scales": TensorProto.FLOAT,
        "zeros": TensorProto.UINT8,
    }
    types.update(input_types or {})
    lead = [f"d{i}" for i in range(lead_rank)]
    inputs = [
        helper.make_tensor_value_info("A", types["A"], [*lead, None] if declare_shapes else None),
        helper.make_tensor_value_info("slice_count", types["slice_count"], lead if declare_shapes else None),
    ]
    weights = {"packed": w.packed, "scales": w.scales, "zeros": w.zeros}
    initializers = []
    for name, arr in weights.items():
        if weights_as_inputs:
            inputs.append(helper.make_tensor_value_info(name, types[name], None))
        else:
            initializers.append(numpy_helper.from_array(arr, name))
    node = helper.make_node(
        "MixedBitMatMul",
        ["A", "slice_count", "packed", "scales", "zeros"],
        ["Y"],
        domain=DOMAIN,
        **node_attrs,
    )
    return single_node_model(node, inputs, ("Y", TensorProto.FLOAT), initializers)


@dataclass
class Case:
    """A model plus feeds and the float64 reference output."""

    name: str
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    expected: np.ndarray
    extra: dict = field(default_factory=dict)


def make_case(
    name: str,
    spec: QuantSpec,
    n: int,
    k: int,
    lead: tuple[int, ...],
    rng: np.random.Generator,
    counts: np.ndarray | None = None,
) -> Case:
    """Random weights/activations; ``counts`` defaults to random per-row slice counts in 1..S."""
    w = Weights.random(spec, n, k, rng)
    a = rng.standard_normal((*lead, k)).astype(np.float32)
    if counts is None:
        counts = rng.integers(1, spec.num_slices + 1, size=lead, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64).reshape(lead)
    expected = mixed_bit_matmul(a, counts, w.packed, w.scales, w.zeros, spec, n)
    return Case(name, make_model(w, lead_rank=len(lead)), {"A": a, "slice_count": counts}, expected)


SLICE_CONFIGS: list[tuple[int, ...]] = [
    (4, 2, 2),
    (2, 2, 2, 2),
    (3, 2),
    (8,),
    (4, 4),
    (2, 2, 4),
    (1, 1, 1, 1, 1, 1, 1, 1),
    (5, 3),
    (7,),
    (6, 1),
    (4,),
]


def standard_cases(seed: int = 0) -> list[Case]:
    """Every slice config x every count, mixed counts, odd shapes, leading dims, M=1 and M>=32."""
    rng = np.random.default_rng(seed)
    cases: list[Case] = []
    for bits in SLICE_CONFIGS:
        spec = QuantSpec(bits, 32)
        for count in range(1, spec.num_slices + 1):
            tag = "-".join(map(str, bits))
            cases.append(make_case(f"{tag}_count{count}_m1", spec, 37, 96, (1,), rng, np.full(1, count)))
            cases.append(make_case(f"{tag}_count{count}_m33", spec, 21, 80, (33,), rng, np.full(33, count)))
        cases.append(make_case(f"{'-'.join(map(str, bits))}_mixed_m40", spec, 19, 72, (40,), rng))
    for gs in (16, 32, 64, 128):
        spec = QuantSpec((4, 2, 2), gs)
        cases.append(make_case(f"g{gs}_k200_n13_m1", spec, 13, 200, (1,), rng))
        cases.append(make_case(f"g{gs}_k200_n13_m5", spec, 13, 200, (5,), rng))
        cases.append(make_case(f"g{gs}_k576_n67_b2x36", spec, 67, 576, (2, 36), rng))
    spec = QuantSpec((2, 2, 2, 2), 64)
    cases.append(make_case("lead3_2x3x4", spec, 9, 130, (2, 3, 4), rng))
    cases.append(make_case("k1_n1", QuantSpec((4, 2, 2), 16), 1, 1, (3,), rng))
    cases.append(make_case("m0", QuantSpec((4, 2, 2), 16), 5, 33, (0,), rng, np.zeros(0, np.int64)))
    return cases
