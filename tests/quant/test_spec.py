"""Slice-layout validation: clear errors for layouts the op cannot run."""

from __future__ import annotations

import pytest

from mbq_onnx.quant.spec import QuantSpec


@pytest.mark.parametrize(
    ("bits", "group", "match"),
    [
        ((4, 4, 2), 128, "sum to 10 bits"),
        ((4, 0, 2), 128, "0-bit slice"),
        ((), 128, "empty"),
        ((9,), 128, "1..8 bits"),
        ((4, 2, 2), 24, "power of two"),
        ((4, 2, 2), 8, ">= 16"),
        ((4, 2, 2), 0, "power of two"),
    ],
)
def test_invalid_specs_raise(bits: tuple[int, ...], group: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        QuantSpec(bits, group)


def test_parse_and_derived_sizes() -> None:
    spec = QuantSpec.parse("4,2,2", 128)
    assert spec == QuantSpec((4, 2, 2), 128)
    assert spec.cum_bits == (4, 6, 8) and spec.total_bits == 8 and spec.num_slices == 3
    assert spec.num_groups(576) == 5  # ragged last group
    assert spec.packed_nbytes(10, 576) == 10 * 5 * 128 * 8 // 8
    with pytest.raises(ValueError, match="comma-separated"):
        QuantSpec.parse("4;2")
    with pytest.raises(ValueError, match="out of range"):
        spec.bits_at(4)
