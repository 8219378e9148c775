"""RouterCounts test cases: random router weights as GroupedRouter builds them, one-node ONNX models built
with onnx.helper, feeds and the float64 reference.

Importable on its own (numpy + onnx + mbq_onnx.quant only), like ``cases.py``, so the qemu/aarch64 and
sanitizer runs can use the same models and inputs.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from cases import DOMAIN, Case, single_node_model
from onnx import TensorProto, helper, numpy_helper

from mbq_onnx.quant.reference import router_counts

WEIGHT_NAMES = ("W1", "B1", "W2", "B2")
#: float32 kernels may disagree with the float64 reference only where |logit - threshold| is below this.
MARGIN = 1e-4


def router_weights(
    k: int, h: int, members: int, s: int, rng: np.random.Generator, inf_columns: bool = True
) -> dict[str, np.ndarray]:
    """W1 ``[K+1, H]``, B1, W2 ``[H, M*(S+1)]``, B2 as ``GroupedRouter`` builds them (with ``inf_columns``:
    per member a ``+inf`` bias and zero weights in column 0, ``-inf`` in column S)."""
    w1 = rng.standard_normal((k + 1, h)).astype(np.float32)
    w1[-1] = 0.0
    b1 = (0.3 * rng.standard_normal(h)).astype(np.float32)
    w2 = (rng.standard_normal((h, members, s + 1)) / math.sqrt(h) * 2).astype(np.float32)
    b2 = (0.5 * rng.standard_normal((members, s + 1))).astype(np.float32)
    if inf_columns:
        w2[:, :, 0] = w2[:, :, s] = 0.0
        b2[:, 0], b2[:, s] = np.inf, -np.inf
    return {"W1": w1, "B1": b1, "W2": w2.reshape(h, -1), "B2": b2.reshape(-1)}


def thresholds(s: int, tau: float | None = None, force: int | None = None) -> np.ndarray:
    """``[0, t, …, t, 0]`` with ``t = logit(tau)``, or forced to ``force`` slices (``-inf``/``+inf``), as
    ``routing_thresholds`` builds them."""
    if force is not None and force > 0:
        inner = [-np.inf if j < force else np.inf for j in range(1, s)]
    else:
        inner = [math.log(tau) - math.log1p(-tau)] * (s - 1)
    return np.asarray([0.0, *inner, 0.0], np.float32)


def make_router_model(
    weights: dict[str, np.ndarray],
    *,
    pad: float,
    members: int,
    combine: int | None = 0,
    lead_rank: int = 1,
    attrs: dict | None = None,
    weights_as_inputs: bool = False,
    input_types: dict[str, int] | None = None,
    declare_shapes: bool = True,
) -> onnx.ModelProto:
    """One-node model ``counts = RouterCounts(X, thresholds, W1, B1, W2, B2)``; options as in
    ``cases.make_model`` (``combine=None`` leaves the attribute out; None values in ``attrs`` drop one)."""
    node_attrs = {"pad": float(pad), "members": members, "combine": combine}
    node_attrs.update(attrs or {})
    node_attrs = {key: v for key, v in node_attrs.items() if v is not None}
    types = {name: TensorProto.FLOAT for name in ("X", "thresholds", *WEIGHT_NAMES)}
    types.update(input_types or {})
    lead = [f"d{i}" for i in range(lead_rank)]
    inputs = [
        helper.make_tensor_value_info("X", types["X"], [*lead, None] if declare_shapes else None),
        helper.make_tensor_value_info("thresholds", types["thresholds"], [None] if declare_shapes else None),
    ]
    initializers = []
    for name in WEIGHT_NAMES:
        if weights_as_inputs:
            inputs.append(helper.make_tensor_value_info(name, types[name], None))
        else:
            initializers.append(numpy_helper.from_array(weights[name], name))
    node = helper.make_node(
        "RouterCounts", ["X", "thresholds", *WEIGHT_NAMES], ["counts"], domain=DOMAIN, **node_attrs
    )
    return single_node_model(node, inputs, ("counts", TensorProto.INT64), initializers)


def lead_shape(rows: int, rank: int, rng: np.random.Generator) -> tuple[int, ...]:
    """A leading shape of ``rank`` dims holding ``rows`` rows (0 rows: one dim is 0)."""
    if rank == 1:
        return (rows,)
    if rows == 0:
        dims = [int(d) for d in rng.integers(1, 4, size=rank)]
        dims[int(rng.integers(rank))] = 0
        return tuple(dims)
    divisors = [d for d in range(1, rows + 1) if rows % d == 0]
    first = int(rng.choice(divisors))
    return (first, *lead_shape(rows // first, rank - 1, rng))


def router_case(
    name: str,
    weights: dict[str, np.ndarray],
    x: np.ndarray,
    thr: np.ndarray,
    *,
    pad: float,
    members: int,
    combine: int = 0,
) -> Case:
    expected, margin = router_counts(x, thr, *(weights[n] for n in WEIGHT_NAMES), pad, members, combine)
    model = make_router_model(weights, pad=pad, members=members, combine=combine, lead_rank=x.ndim - 1)
    return Case(name, model, {"X": x, "thresholds": thr}, expected, {"margin": margin})


def fuzz_cases(seed: int = 0, per_model: int = 3) -> list[Case]:
    """K in {576, 64, 7} x H in {8, 16, 48} x M in {1, 2, 3}, each with a random S in 2..4, combine 0 and 1;
    per model ``per_model`` feeds of 0/1/5/130 rows, leading rank 1..3, thresholds from tau in (0, 1) or
    forced (±inf); one model in six has no ±inf bias columns (counts can then be 0)."""
    rng = np.random.default_rng(seed)
    cases: list[Case] = []
    i = 0
    for k in (576, 64, 7):
        for h in (8, 16, 48):
            for members in (1, 2, 3):
                s = int(rng.integers(2, 5))
                i += 1
                inf_columns = i % 6 != 0
                w = router_weights(k, h, members, s, rng, inf_columns)
                pad = float(math.sqrt(k * 1e-5)) if i % 2 else float(rng.uniform(0.0, 2.0))
                for combine in (0, 1):
                    for f in range(per_model):
                        rows = int(rng.choice([0, 1, 5, 130], p=[0.1, 0.35, 0.3, 0.25]))
                        lead = lead_shape(rows, int(rng.integers(1, 4)), rng)
                        x = (rng.standard_normal((*lead, k)) * rng.uniform(0.1, 10)).astype(np.float32)
                        force = int(rng.integers(1, s + 1)) if rng.random() < 0.3 else None
                        thr = thresholds(s, tau=float(rng.uniform(0.02, 0.98)), force=force)
                        tag = f"k{k}_h{h}_m{members}_s{s}_c{combine}_{f}_{'x'.join(map(str, lead))}"
                        cases.append(router_case(tag, w, x, thr, pad=pad, members=members, combine=combine))
    return cases


def assert_counts_match(name: str, y: np.ndarray, case: Case) -> None:
    """Same shape and dtype as the reference; values equal except where the reference margin is tiny."""
    assert y.dtype == np.int64, (name, y.dtype)
    assert y.shape == case.expected.shape, (name, y.shape, case.expected.shape)
    differ = y != case.expected
    close = case.extra["margin"] < MARGIN
    assert not (differ & ~close).any(), (
        f"{name}: {int((differ & ~close).sum())} counts differ from the reference away from a threshold"
    )
