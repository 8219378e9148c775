"""RouterCounts in real ORT sessions vs the float64 NumPy reference and the former standard-op chain, plus the
contract's error checks and the ONNX schema."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from router_cases import (
    WEIGHT_NAMES,
    assert_counts_match,
    fuzz_cases,
    make_router_model,
    router_case,
    router_weights,
    thresholds,
)

from mbq_onnx import ops_lib
from mbq_onnx.export.schema import register_schema
from mbq_onnx.quant.reference import router_counts

from cases import DOMAIN, IR_VERSION, OPSET  # isort: skip

FUZZ = fuzz_cases()
# Portable row kernel (MBQ_KERNEL=ref) and the automatic choice (AVX2+FMA row kernel on x86-64 with AVX2).
KERNELS = ["ref", "auto"]


@pytest.fixture(autouse=True)
def _library() -> None:
    try:
        ops_lib.library_path()
    except FileNotFoundError as e:
        pytest.fail(str(e))


def session(model: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    ops_lib.register(so)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _kernel(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if kernel == "auto":
        monkeypatch.delenv("MBQ_KERNEL", raising=False)
    else:
        monkeypatch.setenv("MBQ_KERNEL", kernel)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kernel", KERNELS)
def test_fuzz_matches_reference(kernel: str, threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fuzz case (shapes, members, slices, rows 0/1/5/130, leading rank 1..3, tau and forced thresholds,
    combine 0/1): same shape, dtype and counts as the float64 reference away from a threshold."""
    _kernel(kernel, monkeypatch)
    sessions: dict[int, ort.InferenceSession] = {}
    for case in FUZZ:
        sess = sessions.setdefault(id(case.model), session(case.model, threads))
        (y,) = sess.run(None, case.feeds)
        assert_counts_match(case.name, y, case)
    seen = np.unique(np.concatenate([c.expected.ravel() for c in FUZZ]))
    assert set(seen.tolist()) >= {0, 1, 2, 3, 4}


def chain_model(weights: dict[str, np.ndarray], *, pad: float, members: int) -> onnx.ModelProto:
    """The standard-op subgraph the exporter emitted before RouterCounts (X rank 2)."""
    c = helper.make_node
    nodes = [
        c("Constant", [], ["pads"], value_ints=[0, 1]),
        c("Constant", [], ["padv"], value_float=float(pad)),
        c("Constant", [], ["axes"], value_ints=[-1]),
        c("Pad", ["X", "pads", "padv", "axes"], ["xp"]),
        c("LpNormalization", ["xp"], ["xn"], axis=-1, p=2),
        c("MatMul", ["xn", "W1"], ["mm1"]),
        c("Add", ["mm1", "B1"], ["pre"]),
        c("Sigmoid", ["pre"], ["sig"]),
        c("Mul", ["pre", "sig"], ["h"]),
        c("MatMul", ["h", "W2"], ["mm2"]),
        c("Add", ["mm2", "B2"], ["logits"]),
    ]
    last = "logits"
    if members > 1:
        nodes += [
            c("Constant", [], ["shape"], value_ints=[0, members, -1]),
            c("Reshape", ["logits", "shape"], ["logits3"]),
        ]
        last = "logits3"
    nodes += [
        c("Greater", [last, "thresholds"], ["gt"]),
        c("Cast", ["gt"], ["on"], to=TensorProto.UINT8),
        c("ArgMin", ["on"], ["counts"], axis=-1, keepdims=0, select_last_index=0),
    ]
    graph = helper.make_graph(
        nodes,
        "router_chain",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, ["rows", None]),
            helper.make_tensor_value_info("thresholds", TensorProto.FLOAT, [None]),
        ],
        [helper.make_tensor_value_info("counts", TensorProto.INT64, None)],
        [numpy_helper.from_array(weights[n], n) for n in WEIGHT_NAMES],
    )
    return helper.make_model(graph, ir_version=IR_VERSION, opset_imports=[helper.make_opsetid("", OPSET)])


@pytest.mark.parametrize(("k", "h", "members", "s"), [(576, 48, 3, 3), (576, 16, 1, 3), (64, 32, 2, 4)])
def test_same_as_standard_op_chain(k: int, h: int, members: int, s: int) -> None:
    """The fused node and the former 12-op chain agree (up to float rounding near a threshold)."""
    rng = np.random.default_rng(k + h + members)
    w = router_weights(k, h, members, s, rng)
    pad = float(np.sqrt(k * 1e-5))
    fused = session(make_router_model(w, pad=pad, members=members))
    chain = session(chain_model(w, pad=pad, members=members))
    for rows, tau, force in [(1, 0.5, None), (7, 0.3, None), (200, 0.7, None), (3, 0.5, 2), (3, 0.5, 1)]:
        x = rng.standard_normal((rows, k)).astype(np.float32)
        thr = thresholds(s, tau=tau, force=force)
        case = router_case("chain", w, x, thr, pad=pad, members=members)
        (a,) = fused.run(None, case.feeds)
        (b,) = chain.run(None, case.feeds)
        assert_counts_match("fused", a, case)
        assert_counts_match("chain", b, case)
        assert (a != b).sum() <= (case.extra["margin"] < 1e-4).sum()


def test_combine_is_max_over_members() -> None:
    rng = np.random.default_rng(3)
    w = router_weights(40, 24, 3, 3, rng)
    x = rng.standard_normal((50, 40)).astype(np.float32)
    thr = thresholds(3, tau=0.5)
    per, _ = router_counts(x, thr, *(w[n] for n in WEIGHT_NAMES), 0.1, 3)
    feeds = {"X": x, "thresholds": thr}
    (y0,) = session(make_router_model(w, pad=0.1, members=3)).run(None, feeds)
    (y1,) = session(make_router_model(w, pad=0.1, members=3, combine=1)).run(None, feeds)
    (yd,) = session(make_router_model(w, pad=0.1, members=3, combine=None)).run(None, feeds)
    assert y0.shape == (50, 3) and y1.shape == (50,)
    np.testing.assert_array_equal(y1, y0.max(-1))
    np.testing.assert_array_equal(yd, y0)  # combine defaults to 0
    assert (per.max(-1) != per.min(-1)).any()  # the members do disagree somewhere


@pytest.mark.parametrize(
    ("tau", "force", "want"), [(None, 1, 1), (None, 2, 2), (None, 4, 4), (0.0, 0, 4), (1.0, 0, 1)]
)
@pytest.mark.parametrize("framed", [True, False])
def test_thresholds_alone_decide_forced_and_extreme_tau(tau, force, want, framed) -> None:
    """custom_ops/README.md, "Decided by the thresholds": framed weights + ±inf thresholds give the count
    without the MLP (a NaN row keeps it); unframed weights are evaluated as before."""
    rng = np.random.default_rng(7)
    w = router_weights(24, 16, 2, 4, rng, inf_columns=framed)
    x = rng.standard_normal((6, 24)).astype(np.float32)
    if framed:
        x[2] = np.nan
    if tau is None:
        thr = thresholds(4, force=force)
    else:  # as the graph computes it: log(τ) − log(1 − τ) = ∓inf at τ = 0 / 1
        with np.errstate(divide="ignore"):
            t = np.log(np.float32(tau)) - np.log(np.float32(1.0 - tau))
        thr = np.asarray([0.0, t, t, t, 0.0], np.float32)
    ref, _ = router_counts(x, thr, *(w[n] for n in WEIGHT_NAMES), 0.1, 2)
    (y,) = session(make_router_model(w, pad=0.1, members=2)).run(None, {"X": x, "thresholds": thr})
    np.testing.assert_array_equal(y, ref)
    if framed:
        assert (y == want).all()
    else:  # column 0 is no longer on by construction: rows differ
        assert len(np.unique(y)) > 1


@pytest.mark.parametrize("threads", [1, 2])
def test_weights_as_graph_inputs(threads: int) -> None:
    """Non-constant W1..B2 are checked and used per call (same counts as initializers)."""
    rng = np.random.default_rng(5)
    w = router_weights(64, 16, 2, 3, rng)
    x = rng.standard_normal((4, 33, 64)).astype(np.float32)
    thr = thresholds(3, tau=0.4)
    case = router_case("inputs", w, x, thr, pad=0.2, members=2)
    model = make_router_model(w, pad=0.2, members=2, lead_rank=2, weights_as_inputs=True)
    (y,) = session(model, threads).run(None, {**case.feeds, **w})
    assert_counts_match("inputs", y, case)
    bad = {**w, "B2": w["B2"][:-1]}
    with pytest.raises(Exception, match=r"RouterCounts: B2 has shape \[7\], expected \[8\]"):
        session(model, threads).run(None, {**case.feeds, **bad})


def test_zero_rows() -> None:
    w = router_weights(7, 8, 2, 2, np.random.default_rng(0))
    sess = session(make_router_model(w, pad=0.0, members=2, lead_rank=2))
    (y,) = sess.run(None, {"X": np.zeros((3, 0, 7), np.float32), "thresholds": thresholds(2, tau=0.5)})
    assert y.shape == (3, 0, 2) and y.dtype == np.int64


def test_zero_norm_row_is_defined() -> None:
    """x = 0 with pad 0: xn = 0 (as ORT's LpNormalization), no NaN."""
    w = router_weights(5, 8, 1, 3, np.random.default_rng(1))
    x = np.zeros((2, 5), np.float32)
    case = router_case("zero", w, x, thresholds(3, tau=0.5), pad=0.0, members=1)
    (y,) = session(case.model).run(None, case.feeds)
    assert_counts_match("zero", y, case)


def _expect_error(model: onnx.ModelProto, feeds: dict[str, np.ndarray], pattern: str) -> None:
    with pytest.raises(Exception, match=pattern) as info:
        session(model).run(None, feeds)
    assert "RouterCounts:" in str(info.value)


W = router_weights(16, 8, 2, 3, np.random.default_rng(2))
X = np.random.default_rng(3).standard_normal((3, 16)).astype(np.float32)
THR = thresholds(3, tau=0.5)


@pytest.mark.parametrize(
    ("attrs", "pattern"),
    [
        ({"members": 0}, r"RouterCounts: attribute members is 0, expected >= 1"),
        ({"members": None}, r"RouterCounts: missing or non-integer attribute 'members'"),
        ({"pad": None}, r"RouterCounts: missing or non-float attribute 'pad'"),
        ({"combine": 2}, r"RouterCounts: attribute combine is 2, expected 0"),
        ({"members": 3}, r"RouterCounts: W2 has width 8, expected a positive multiple of members=3"),
    ],
)
def test_bad_attributes(attrs: dict, pattern: str) -> None:
    _expect_error(make_router_model(W, pad=0.1, members=2, attrs=attrs), {"X": X, "thresholds": THR}, pattern)


def _with(**changes: np.ndarray) -> dict[str, np.ndarray]:
    return {**W, **changes}


@pytest.mark.parametrize(
    ("weights", "pattern"),
    [
        (_with(W1=W["W1"][:, :, None]), r"RouterCounts: W1 must have rank 2, got shape \[17, 8, 1\]"),
        (_with(B1=W["B1"][:5]), r"RouterCounts: B1 has shape \[5\], expected \[8\]"),
        (_with(W2=W["W2"][:6]), r"RouterCounts: W2 has shape \[6, 8\], expected 8 rows"),
        (_with(W2=W["W2"][:, :7]), r"RouterCounts: W2 has width 7, expected a positive multiple"),
        (_with(B2=W["B2"][:6]), r"RouterCounts: B2 has shape \[6\], expected \[8\]"),
        (_with(B1=W["B1"].astype(np.float64)), r"RouterCounts: B1 must be float32, got float64"),
        (_with(W1=W["W1"][:0]), r"RouterCounts: W1 has shape \[0, 8\], expected \[K\+1, H\]"),
    ],
)
def test_bad_weights(weights: dict[str, np.ndarray], pattern: str) -> None:
    _expect_error(make_router_model(weights, pad=0.1, members=2), {"X": X, "thresholds": THR}, pattern)


@pytest.mark.parametrize(
    ("feeds", "pattern"),
    [
        ({"X": X[:, :15], "thresholds": THR}, r"RouterCounts: X has last dim 15 but W1 has 17 rows"),
        ({"X": X, "thresholds": THR[:3]}, r"RouterCounts: thresholds has shape \[3\], expected \[4\]"),
        ({"X": X, "thresholds": THR[None]}, r"RouterCounts: thresholds must have rank 1, got shape \[1, 4\]"),
        ({"X": np.array(1.0, np.float32), "thresholds": THR}, r"RouterCounts: X must have rank >= 1"),
        ({"X": X.astype(np.float64), "thresholds": THR}, r"RouterCounts: X must be float32, got float64"),
        ({"X": X, "thresholds": THR.astype(np.int64)}, r"RouterCounts: thresholds must be float32"),
    ],
)
def test_bad_runtime_inputs(feeds: dict[str, np.ndarray], pattern: str) -> None:
    types = {n: helper.np_dtype_to_tensor_dtype(v.dtype) for n, v in feeds.items()}
    model = make_router_model(W, pad=0.1, members=2, input_types=types, declare_shapes=False)
    _expect_error(model, feeds, pattern)


def test_wrong_input_count() -> None:
    model = make_router_model(W, pad=0.1, members=2)
    del model.graph.node[0].input[-1]
    del model.graph.initializer[-1]
    # ORT checks the input count against the registered op first; its message names the op too.
    with pytest.raises(Exception, match=r"RouterCounts.*input size 5"):
        session(model).run(None, {"X": X, "thresholds": THR})


@pytest.mark.parametrize(
    ("members", "combine", "tail"), [(3, 0, [3]), (3, 1, []), (1, 0, []), (2, None, [2])]
)
def test_schema_check_and_shape_inference(members: int, combine: int | None, tail: list[int]) -> None:
    register_schema()
    w = router_weights(16, 9, members, 2, np.random.default_rng(0))
    model = make_router_model(w, pad=0.1, members=members, combine=combine, lead_rank=2)
    # RouterCounts -> Identity -> graph output: the inferred shape shows on the intermediate value.
    model.graph.node[0].output[0] = "raw"
    model.graph.node.append(helper.make_node("Identity", ["raw"], ["counts"]))
    declared = helper.make_tensor_value_info("counts", TensorProto.INT64, ["d0", "d1", *tail])
    model.graph.output[0].CopyFrom(declared)
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    (raw,) = [v for v in inferred.graph.value_info if v.name == "raw"]
    assert raw.type.tensor_type.elem_type == TensorProto.INT64
    dims = [d.dim_param or d.dim_value for d in raw.type.tensor_type.shape.dim]
    assert dims == ["d0", "d1", *tail]
    assert model.opset_import[1].domain == DOMAIN
