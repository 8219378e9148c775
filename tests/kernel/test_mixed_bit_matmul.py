"""MixedBitMatMul in real ORT sessions vs the NumPy reference, plus the contract's error checks."""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cases import SLICE_CONFIGS, Weights, make_case, make_model, standard_cases

from mbq_onnx import ops_lib
from mbq_onnx.quant.reference import mixed_bit_matmul
from mbq_onnx.quant.spec import QuantSpec

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "packed_layout.json"
# Tables forced with MBQ_KERNEL (skipped where this CPU/build lacks them) and "auto", the one the dispatcher
# picks (AVX-512 VNNI, else AVX2 on x86-64). AVX2 stays tested on AVX-512 machines through MBQ_KERNEL.
KERNELS = ["ref", "avx2", "avx512_vnni", "auto"]
# Tables whose prefill (M > 1) with accuracy_level=4 uses int8 activations (others use the float GEMM).
INT8_PREFILL = {"ref", "avx512_vnni"}


@pytest.fixture(autouse=True)
def _library() -> None:
    try:
        ops_lib.library_path()
    except FileNotFoundError as e:
        pytest.fail(str(e))


@functools.cache
def kernel_available(kernel: str) -> bool:
    """Whether MBQ_KERNEL=kernel works on this CPU/build (the library refuses unavailable tables)."""
    if kernel == "auto":
        return True
    model = make_model(Weights.random(QuantSpec((4,), 32), 4, 32, np.random.default_rng(0)))
    so = ort.SessionOptions()
    ops_lib.register(so)
    old = os.environ.get("MBQ_KERNEL")
    os.environ["MBQ_KERNEL"] = kernel
    try:
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types
        if "not available" in str(e):
            return False
        raise
    finally:
        if old is None:
            del os.environ["MBQ_KERNEL"]
        else:
            os.environ["MBQ_KERNEL"] = old
    return True


def resolve(kernel: str) -> str:
    """The table name ``kernel`` runs ("auto": the best available x86 table, else "auto")."""
    if kernel != "auto":
        return kernel
    return next((k for k in ("avx512_vnni", "avx2") if kernel_available(k)), "auto")


def require(kernel: str) -> None:
    if not kernel_available(kernel):
        pytest.skip(f"kernel table {kernel!r} is not available on this CPU/build")


def session(
    model: onnx.ModelProto,
    threads: int = 1,
    kernel: str = "auto",
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> ort.InferenceSession:
    if monkeypatch is not None:
        if kernel == "auto":
            monkeypatch.delenv("MBQ_KERNEL", raising=False)
        else:
            monkeypatch.setenv("MBQ_KERNEL", kernel)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    ops_lib.register(so)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def assert_close(y: np.ndarray, expected: np.ndarray) -> None:
    assert y.shape == expected.shape, (y.shape, expected.shape)
    assert y.dtype == np.float32
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-6)
    err = float(np.abs(y.astype(np.float64) - expected).max(initial=0.0))
    assert err <= 2e-5 * scale, f"max error {err:.3g} vs output scale {scale:.3g}"


@pytest.mark.parametrize("kernel", KERNELS)
def test_golden_vector(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    require(kernel)
    golden = json.loads(GOLDEN.read_text())
    for case in golden["cases"]:
        spec = QuantSpec(tuple(case["slice_bits"]), case["group_size"])
        w = Weights(
            spec,
            case["N"],
            case["K"],
            np.frombuffer(bytes.fromhex(case["packed_hex"]), np.uint8),
            np.asarray(case["scales"], np.float32),
            np.asarray(case["zeros"], np.uint8),
        )
        sess = session(make_model(w), kernel=kernel, monkeypatch=monkeypatch)
        a = np.asarray(case["A"], np.float32)
        counts = np.asarray(case["slice_count"], np.int64)
        (y,) = sess.run(None, {"A": a, "slice_count": counts})
        assert_close(y, np.asarray(case["Y"]))
        # the same rows repeated past the GEMM threshold
        (y,) = sess.run(None, {"A": np.tile(a, (16, 1)), "slice_count": np.tile(counts, 16)})
        assert_close(y, np.tile(np.asarray(case["Y"]), (16, 1)))


ALL_CASES = standard_cases()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", ALL_CASES, ids=[c.name for c in ALL_CASES])
def test_matches_reference(case, kernel: str, threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    require(kernel)
    (y,) = session(case.model, threads, kernel, monkeypatch).run(None, case.feeds)
    assert_close(y, case.expected)


@pytest.mark.parametrize("threads", [1, 2])
def test_large_shape_mixed_counts(threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Enough work to go through the thread pool: 576 x 1536 (ragged groups of 128), decode and prefill."""
    rng = np.random.default_rng(7)
    spec = QuantSpec((4, 2, 2), 128)
    w = Weights.random(spec, 1536, 576, rng)
    sess = session(make_model(w, lead_rank=2), threads, monkeypatch=monkeypatch)
    for lead in [(1, 1), (2, 48)]:
        a = rng.standard_normal((*lead, 576)).astype(np.float32)
        counts = rng.integers(1, 4, size=lead)
        (y,) = sess.run(None, {"A": a, "slice_count": counts})
        assert_close(y, mixed_bit_matmul(a, counts, w.packed, w.scales, w.zeros, spec, 1536))


@pytest.mark.parametrize("bits", SLICE_CONFIGS[:4], ids=lambda b: "-".join(map(str, b)))
def test_count_changes_output_additively(bits: tuple[int, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of one call with different counts are independent; more slices change the result."""
    rng = np.random.default_rng(3)
    spec = QuantSpec(bits, 32)
    w = Weights.random(spec, 40, 100, rng)
    sess = session(make_model(w), monkeypatch=monkeypatch)
    a = np.repeat(rng.standard_normal((1, 100)).astype(np.float32), spec.num_slices, axis=0)
    counts = np.arange(1, spec.num_slices + 1, dtype=np.int64)
    (mixed,) = sess.run(None, {"A": a, "slice_count": counts})
    for r, c in enumerate(counts):
        (single,) = sess.run(None, {"A": a[r : r + 1], "slice_count": np.array([c])})
        np.testing.assert_allclose(mixed[r], single[0], rtol=1e-5, atol=1e-6)
    if spec.num_slices > 1:
        assert not np.allclose(mixed[0], mixed[-1])


def test_weights_as_graph_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Non-constant weights are validated and prepacked per call."""
    rng = np.random.default_rng(5)
    spec = QuantSpec((2, 2, 2, 2), 16)
    case = make_case("x", spec, 11, 50, (3,), rng)
    w = Weights.random(spec, 11, 50, rng)
    sess = session(make_model(w, weights_as_inputs=True), monkeypatch=monkeypatch)
    feeds = {**case.feeds, "packed": w.packed, "scales": w.scales, "zeros": w.zeros}
    (y,) = sess.run(None, feeds)
    assert_close(
        y, mixed_bit_matmul(case.feeds["A"], case.feeds["slice_count"], w.packed, w.scales, w.zeros, spec, 11)
    )
    with pytest.raises(Exception, match=r"MixedBitMatMul: packed has \d+ bytes, expected"):
        sess.run(None, {**feeds, "packed": w.packed[:-1]})


# ---------------------------------------------------------------------------------------------- errors

SPEC = QuantSpec((4, 2, 2), 16)
N, K = 6, 40


def good_weights() -> Weights:
    return Weights.random(SPEC, N, K, np.random.default_rng(11))


def good_feeds(rows: int = 3) -> dict[str, np.ndarray]:
    return {"A": np.ones((rows, K), np.float32), "slice_count": np.ones(rows, np.int64)}


def expect_error(model: onnx.ModelProto, feeds: dict[str, np.ndarray], pattern: str) -> None:
    """The failure may surface at session creation (constant weights, attributes) or at run time."""
    with pytest.raises(Exception) as info:
        session(model).run(None, feeds)
    msg = str(info.value)
    assert "MixedBitMatMul" in msg, msg
    assert re.search(pattern, msg), f"{pattern!r} not in {msg!r}"


def replace(w: Weights, **kw) -> Weights:
    return Weights(**{**w.__dict__, **kw})


@pytest.mark.parametrize(
    ("attrs", "pattern"),
    [
        ({"group_size": 24}, r"group_size is 24, expected a power of two >= 16"),
        ({"group_size": 8}, r"group_size is 8"),
        ({"slice_bits": [4, 4, 2]}, r"slice_bits sums to 10 bits"),
        ({"slice_bits": [4, 0]}, r"slice_bits has a width of 0 bits"),
        ({"slice_bits": [1] * 9}, r"slice_bits has 9 slices, at most 8"),
        ({"K": None}, r"attribute 'K'"),
        ({"N": 0}, r"attribute N is 0"),
        ({"N": 7}, r"packed has \d+ bytes, expected \d+ for N=7 K=40"),
    ],
)
def test_bad_attributes(attrs: dict, pattern: str) -> None:
    expect_error(make_model(good_weights(), attrs=attrs), good_feeds(), pattern)


def test_bad_weight_inputs() -> None:
    w = good_weights()
    expect_error(
        make_model(replace(w, packed=w.packed[:-3])),
        good_feeds(),
        rf"packed has {w.packed.size - 3} bytes, expected {w.packed.size} for N=6 K=40 group_size=16 "
        r"slice_bits=\[4,2,2\]",
    )
    expect_error(make_model(replace(w, packed=w.packed.reshape(2, -1))), good_feeds(), r"packed must be 1-D")
    expect_error(
        make_model(replace(w, packed=w.packed.astype(np.int8))), good_feeds(), r"packed must be uint8"
    )
    expect_error(
        make_model(replace(w, scales=w.scales[:, :2])),
        good_feeds(),
        r"scales has shape \[6, 2\], expected \[6, 3\]",
    )
    expect_error(
        make_model(replace(w, scales=w.scales.astype(np.float64))),
        good_feeds(),
        r"scales must be float32, got float64",
    )
    expect_error(make_model(replace(w, zeros=w.zeros[:5])), good_feeds(), r"zeros has shape \[5, 3\]")
    expect_error(make_model(replace(w, zeros=w.zeros.astype(np.int32))), good_feeds(), r"zeros must be uint8")
    spec5 = QuantSpec((3, 2), 16)
    w5 = Weights.random(spec5, N, K, np.random.default_rng(1))
    zeros = w5.zeros.copy()
    zeros[1, 2] = 40
    expect_error(
        make_model(replace(w5, zeros=zeros)),
        good_feeds(),
        r"zeros value 40 at channel 1 group 2 is outside 0..31",
    )


def test_bad_activations_and_counts() -> None:
    w = good_weights()
    model = make_model(w)
    feeds = good_feeds()
    expect_error(
        model,
        {**feeds, "A": np.ones((3, K + 1), np.float32)},
        rf"A has last dim {K + 1} but attribute K is {K}",
    )
    expect_error(
        model,
        {**feeds, "slice_count": np.ones(4, np.int64)},
        r"slice_count has shape \[4\] but A has shape \[3, 40\]",
    )
    for bad, row in [(0, 1), (4, 2), (-1, 0)]:
        counts = np.ones(3, np.int64)
        counts[row] = bad
        expect_error(
            model, {**feeds, "slice_count": counts}, rf"slice_count value {bad} at row {row} is outside 1..3"
        )
    model3 = make_model(w, lead_rank=2)
    expect_error(
        model3,
        {"A": np.ones((2, 3, K), np.float32), "slice_count": np.ones((3, 2), np.int64)},
        r"slice_count has shape \[3, 2\] but A has shape \[2, 3, 40\]",
    )
    expect_error(
        make_model(w, declare_shapes=False),
        {"A": np.ones((), np.float32).reshape(()), "slice_count": np.ones((), np.int64)},
        r"A must have rank >= 1",
    )
    # rank-1 A (a single row, scalar count) is valid
    (y,) = session(make_model(w, lead_rank=0)).run(
        None, {"A": np.ones(K, np.float32), "slice_count": np.array(2, np.int64)}
    )
    assert y.shape == (N,)


def test_bad_dtypes() -> None:
    w = good_weights()
    feeds = good_feeds()
    expect_error(
        make_model(w, input_types={"A": onnx.TensorProto.DOUBLE}),
        {**feeds, "A": feeds["A"].astype(np.float64)},
        r"A must be float32, got float64",
    )
    expect_error(
        make_model(w, input_types={"slice_count": onnx.TensorProto.INT32}),
        {**feeds, "slice_count": feeds["slice_count"].astype(np.int32)},
        r"slice_count must be int64, got int32",
    )


def test_forced_kernel_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MBQ_KERNEL", "no-such-isa")
    with pytest.raises(Exception, match=r"MixedBitMatMul: MBQ_KERNEL names a kernel that is not available"):
        session(make_model(good_weights()))


# ------------------------------------------------------------------------ int8 activations (opt-in)


@pytest.mark.parametrize("kernel", [k for k in KERNELS if k != "ref"])
@pytest.mark.parametrize("group", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("bits", SLICE_CONFIGS, ids=lambda b: "-".join(map(str, b)))
def test_int8_activation_path(
    bits: tuple[int, ...], group: int, kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """accuracy_level=4: rows use int8 activations (one scale per min(group, 128) values). The SIMD table
    matches the portable one on the same quantized activations, both stay within activation-quantization
    error of the float64 reference, and prefill (M > 1, mixed counts, 2 threads) runs int8 on tables with
    an int8 GEMM and the float GEMM on the others. K=300 is ragged for every group; N=70 leaves channel
    tails after 8- and 4-channel tiles."""
    require(kernel)
    rng = np.random.default_rng(9)
    spec = QuantSpec(bits, group)
    n, k = 70, 300
    w = Weights.random(spec, n, k, rng)
    model = make_model(w, attrs={"accuracy_level": 4})
    ref = session(model, kernel="ref", monkeypatch=monkeypatch)
    sess = session(model, threads=2, kernel=kernel, monkeypatch=monkeypatch)
    a = rng.standard_normal((1, k)).astype(np.float32)
    for count in range(1, spec.num_slices + 1):
        feeds = {"A": a, "slice_count": np.array([count])}
        expected = mixed_bit_matmul(a, feeds["slice_count"], w.packed, w.scales, w.zeros, spec, n)
        (y_ref,) = ref.run(None, feeds)
        (y,) = sess.run(None, feeds)
        scale = float(np.abs(expected).max())
        assert float(np.abs(y - y_ref).max()) <= 2e-5 * scale
        err = float(np.abs(y_ref - expected).max())
        assert 1e-6 * scale < err <= 3e-2 * scale  # quantized, not float, and still close
    a2 = rng.standard_normal((40, k)).astype(np.float32)
    counts = rng.integers(1, spec.num_slices + 1, size=40)
    feeds = {"A": a2, "slice_count": counts}
    expected = mixed_bit_matmul(a2, counts, w.packed, w.scales, w.zeros, spec, n)
    (y,) = sess.run(None, feeds)
    if resolve(kernel) in INT8_PREFILL:
        (y_ref,) = ref.run(None, feeds)
        scale = float(np.abs(expected).max())
        assert float(np.abs(y - y_ref).max()) <= 2e-5 * scale
        assert 1e-6 * scale < float(np.abs(y_ref - expected).max()) <= 3e-2 * scale
    else:  # float GEMM, except a bucket of one row (a decode row: int8 like the portable table)
        single = np.isin(counts, [c for c in set(counts.tolist()) if (counts == c).sum() == 1])
        assert_close(y[~single], expected[~single])
        if single.any():
            (y_ref,) = ref.run(None, feeds)
            scale = float(np.abs(expected).max())
            assert float(np.abs(y[single] - y_ref[single]).max()) <= 2e-5 * scale


def test_bad_accuracy_level() -> None:
    expect_error(
        make_model(good_weights(), attrs={"accuracy_level": 2}),
        good_feeds(),
        r"attribute accuracy_level is 2, expected 0 \(float\) or 4",
    )


def test_wrong_input_count() -> None:
    """ORT's schema check rejects it before the kernel runs; the message still names the op."""
    model = make_model(good_weights())
    del model.graph.node[0].input[4]
    expect_error(model, good_feeds(), r"input size 4 not in range \[min=5, max=5\]")
