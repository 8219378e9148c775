"""The packed layout against the shared golden vector (byte-exact) and pack/unpack round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mbq_onnx.quant.packing import pack, split_slices, unpack
from mbq_onnx.quant.reference import mixed_bit_matmul
from mbq_onnx.quant.spec import QuantSpec

GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / "packed_layout.json").read_text())
CASES = GOLDEN["cases"]


def _case_id(c: dict) -> str:
    return f"{'-'.join(map(str, c['slice_bits']))}_g{c['group_size']}_{c['N']}x{c['K']}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_golden_packed_bytes(case: dict) -> None:
    spec = QuantSpec(tuple(case["slice_bits"]), case["group_size"])
    codes = np.array(case["codes"], dtype=np.uint8)
    assert pack(codes, spec).tobytes().hex() == case["packed_hex"]


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_golden_reference_output(case: dict) -> None:
    spec = QuantSpec(tuple(case["slice_bits"]), case["group_size"])
    packed = np.frombuffer(bytes.fromhex(case["packed_hex"]), dtype=np.uint8)
    np.testing.assert_array_equal(unpack(packed, spec, case["N"], case["K"]), np.array(case["codes"]))
    y = mixed_bit_matmul(
        np.array(case["A"], np.float32),
        np.array(case["slice_count"]),
        packed,
        np.array(case["scales"], np.float32),
        np.array(case["zeros"], np.uint8),
        spec,
        case["N"],
    )
    np.testing.assert_allclose(y, np.array(case["Y"]), rtol=1e-12, atol=1e-12)


def test_golden_covers_ragged_groups_and_all_counts() -> None:
    assert any(c["K"] % c["group_size"] for c in CASES)
    for c in CASES:
        assert set(c["slice_count"]) == set(range(1, len(c["slice_bits"]) + 1))


@pytest.mark.parametrize("bits", [(4, 2, 2), (2, 2, 2, 2), (3, 2), (3, 3, 2), (5, 3), (1, 1, 1), (8,), (7,)])
@pytest.mark.parametrize("k", [16, 40, 72, 130])
def test_pack_unpack_round_trip_and_truncation(bits: tuple[int, ...], k: int) -> None:
    spec = QuantSpec(bits, 16 if k < 100 else 32)
    rng = np.random.default_rng(k)
    codes = rng.integers(0, 1 << spec.total_bits, size=(5, k), dtype=np.uint8)
    packed = pack(codes, spec)
    assert packed.size == spec.packed_nbytes(5, k)
    np.testing.assert_array_equal(unpack(packed, spec, 5, k), codes)
    for n_slices in range(1, spec.num_slices + 1):
        shift = spec.total_bits - spec.bits_at(n_slices)
        np.testing.assert_array_equal(unpack(packed, spec, 5, k, n_slices), (codes >> shift) << shift)


def test_planes_are_contiguous_per_slice() -> None:
    """A row using k slices reads only the first k planes: changing a low slice keeps earlier planes."""
    spec = QuantSpec((4, 2, 2), 16)
    codes = np.random.default_rng(0).integers(0, 256, size=(3, 40), dtype=np.uint8)
    flipped = codes ^ 0b11  # change only the last 2-bit slice
    a, b = pack(codes, spec), pack(flipped, spec)
    base_and_mid = spec.plane_nbytes(0, 3, 40) + spec.plane_nbytes(1, 3, 40)
    np.testing.assert_array_equal(a[:base_and_mid], b[:base_and_mid])
    assert not np.array_equal(a[base_and_mid:], b[base_and_mid:])
    slices = split_slices(codes, spec)
    np.testing.assert_array_equal((slices[0].astype(int) << 4) | (slices[1] << 2) | slices[2], codes)


def test_pack_rejects_bad_input() -> None:
    spec = QuantSpec((2, 2), 16)
    with pytest.raises(ValueError, match="exceed 4 bits"):
        pack(np.full((2, 16), 16, np.uint8), spec)
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        pack(np.zeros(16, np.uint8), spec)
    with pytest.raises(ValueError, match="expected"):
        unpack(np.zeros(3, np.uint8), spec, 2, 16)
