"""The slice layout of a truncation-ready residual quantizer: bit widths and group size."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

MAX_TOTAL_BITS = 8


@dataclass(frozen=True)
class QuantSpec:
    """Slice bit widths (base slice first) and the group size along K.

    ``QuantSpec((4, 2, 2), 128)`` stores each weight as an 8-bit code split into a 4-bit
    base slice and two 2-bit residual slices: precisions 4/6/8 bits.
    """

    slice_bits: tuple[int, ...] = (4, 2, 2)
    group_size: int = 128

    def __post_init__(self) -> None:
        bits = tuple(int(b) for b in self.slice_bits)
        object.__setattr__(self, "slice_bits", bits)
        if not bits:
            raise ValueError("slice_bits is empty: give at least one slice width, e.g. 4,2,2")
        if any(b < 1 or b > MAX_TOTAL_BITS for b in bits):
            raise ValueError(
                f"slice_bits {list(bits)}: every slice needs 1..8 bits (a 0-bit slice is not a slice)"
            )
        if sum(bits) > MAX_TOTAL_BITS:
            raise ValueError(
                f"slice_bits {list(bits)} sum to {sum(bits)} bits; at most {MAX_TOTAL_BITS} are supported"
            )
        g = int(self.group_size)
        object.__setattr__(self, "group_size", g)
        if g < 16 or g & (g - 1):
            raise ValueError(f"group_size {g} must be a power of two >= 16")

    @property
    def num_slices(self) -> int:
        return len(self.slice_bits)

    @property
    def total_bits(self) -> int:
        """B: bits of the full-precision code."""
        return sum(self.slice_bits)

    @property
    def cum_bits(self) -> tuple[int, ...]:
        """Precision in bits when the first k slices are used, for k = 1..num_slices."""
        return tuple(accumulate(self.slice_bits))

    def bits_at(self, n_slices: int) -> int:
        """Precision (bits) of a weight reconstructed from its first ``n_slices`` slices."""
        if not 1 <= n_slices <= self.num_slices:
            raise ValueError(f"n_slices {n_slices} out of range 1..{self.num_slices}")
        return self.cum_bits[n_slices - 1]

    def num_groups(self, k: int) -> int:
        """Groups per output channel; the last is ragged (zero-padded) when group_size does not divide K."""
        return -(-k // self.group_size)

    def plane_nbytes(self, slice_index: int, n: int, k: int) -> int:
        """Bytes of slice plane ``slice_index`` (0-based) for an N x K weight."""
        return n * self.num_groups(k) * self.group_size * self.slice_bits[slice_index] // 8

    def packed_nbytes(self, n: int, k: int) -> int:
        return sum(self.plane_nbytes(j, n, k) for j in range(self.num_slices))

    @classmethod
    def parse(cls, slices: str, group_size: int = 128) -> QuantSpec:
        """Build from a CLI string such as ``"4,2,2"``."""
        try:
            bits = tuple(int(s) for s in slices.split(","))
        except ValueError:
            raise ValueError(
                f"--slices {slices!r}: expected comma-separated integers such as 4,2,2"
            ) from None
        return cls(bits, group_size)
