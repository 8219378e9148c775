"""The eager ``mbq::mixed_bit_matmul`` op against the NumPy reference and the golden vector."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mbq_onnx.model.ops import mixed_bit_matmul, unpack_codes
from mbq_onnx.quant import reference
from mbq_onnx.quant.packing import pack
from mbq_onnx.quant.spec import QuantSpec

GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / "packed_layout.json").read_text())["cases"]


def _random_layer(spec: QuantSpec, n: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 1 << spec.total_bits, size=(n, k), dtype=np.uint8)
    scales = rng.uniform(0.01, 0.1, size=(n, spec.num_groups(k))).astype(np.float32)
    zeros = rng.integers(0, 1 << spec.total_bits, size=(n, spec.num_groups(k)), dtype=np.uint8)
    return codes, pack(codes, spec), scales, zeros


def _call(x, counts, packed, scales, zeros, spec: QuantSpec, n: int) -> torch.Tensor:
    return torch.ops.mbq.mixed_bit_matmul(
        torch.as_tensor(x),
        torch.as_tensor(counts),
        torch.as_tensor(packed),
        torch.as_tensor(scales),
        torch.as_tensor(zeros),
        x.shape[-1],
        n,
        spec.group_size,
        list(spec.slice_bits),
    )


@pytest.mark.parametrize(
    ("bits", "group", "n", "k"),
    [((4, 2, 2), 16, 24, 72), ((2, 2, 2, 2), 32, 10, 100), ((3, 2), 16, 7, 48), ((8,), 64, 5, 64)],
)
def test_eager_op_matches_reference_for_mixed_counts(bits, group, n, k) -> None:
    spec = QuantSpec(bits, group)
    codes, packed, scales, zeros = _random_layer(spec, n, k)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 7, k)).astype(np.float32)
    counts = rng.integers(1, spec.num_slices + 1, size=(2, 7))
    y = _call(x, counts, packed, scales, zeros, spec, n).numpy()
    ref = reference.mixed_bit_matmul(x, counts, packed, scales, zeros, spec, n)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(unpack_codes(torch.from_numpy(packed), spec, n, k).numpy(), codes)


@pytest.mark.parametrize("case", GOLDEN, ids=lambda c: f"{c['slice_bits']}_{c['N']}x{c['K']}")
def test_eager_op_matches_golden(case: dict) -> None:
    spec = QuantSpec(tuple(case["slice_bits"]), case["group_size"])
    packed = np.frombuffer(bytes.fromhex(case["packed_hex"]), dtype=np.uint8).copy()
    y = _call(
        np.array(case["A"], np.float32),
        np.array(case["slice_count"]),
        packed,
        np.array(case["scales"], np.float32),
        np.array(case["zeros"], np.uint8),
        spec,
        case["N"],
    )
    np.testing.assert_allclose(y.numpy(), np.array(case["Y"]), rtol=1e-5, atol=1e-5)


def test_op_registration_passes_opcheck() -> None:
    spec = QuantSpec((4, 2, 2), 16)
    _, packed, scales, zeros = _random_layer(spec, 6, 40)
    x = torch.randn(3, 40)
    counts = torch.tensor([1, 2, 3])
    args = (
        x,
        counts,
        torch.from_numpy(packed),
        torch.from_numpy(scales),
        torch.from_numpy(zeros),
        40,
        6,
        16,
        [4, 2, 2],
    )
    torch.library.opcheck(mixed_bit_matmul, args, test_utils=("test_schema", "test_faketensor"))


def test_op_rejects_bad_input() -> None:
    spec = QuantSpec((4, 2, 2), 16)
    _, packed, scales, zeros = _random_layer(spec, 6, 40)
    x = np.zeros((3, 40), np.float32)
    with pytest.raises(ValueError, match=r"outside 1\.\.3"):
        _call(x, np.array([1, 4, 2]), packed, scales, zeros, spec, 6)
    with pytest.raises(ValueError, match="slice_count shape"):
        _call(x, np.array([1, 2]), packed, scales, zeros, spec, 6)
    with pytest.raises(ValueError, match="packed has 287 bytes, expected 288"):
        _call(x, np.array([1, 2, 3]), packed[:-1], scales, zeros, spec, 6)
    with pytest.raises(ValueError, match="scales has shape"):
        _call(x, np.array([1, 2, 3]), packed, scales[:, :2], zeros, spec, 6)
