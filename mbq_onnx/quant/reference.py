"""NumPy reference semantics of truncated dequantization and of the MixedBitMatMul op.

This is the correctness oracle for the C++ kernels and the ONNX export: float64,
dequantize-then-matmul, no cleverness.
"""

from __future__ import annotations

import numpy as np

from .packing import unpack
from .spec import QuantSpec


def truncation_offset(spec: QuantSpec, n_slices: int) -> float:
    """Midpoint of the dropped low bits, ``(2^(B-c) - 1) / 2`` for precision c of ``n_slices`` slices."""
    return ((1 << (spec.total_bits - spec.bits_at(n_slices))) - 1) / 2.0


def dequantize(
    codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, spec: QuantSpec, n_slices: int
) -> np.ndarray:
    """Weights ``[N, K]`` (float64) reconstructed from the first ``n_slices`` slices.

    ``w = scale * ((code >> (B-c)) * 2^(B-c) + (2^(B-c) - 1)/2 - zero)`` with c the precision in bits;
    scales/zeros are per (output channel, group) ``[N, n_groups]``.
    """
    codes = np.asarray(codes)
    _n, k = codes.shape
    shift = spec.total_bits - spec.bits_at(n_slices)
    q = ((codes.astype(np.int64) >> shift) << shift).astype(np.float64) + truncation_offset(spec, n_slices)
    group_of_col = np.arange(k) // spec.group_size
    s = np.asarray(scales, dtype=np.float64)[:, group_of_col]
    z = np.asarray(zeros, dtype=np.float64)[:, group_of_col]
    return s * (q - z)


def mixed_bit_matmul(
    a: np.ndarray,
    slice_count: np.ndarray,
    packed: np.ndarray,
    scales: np.ndarray,
    zeros: np.ndarray,
    spec: QuantSpec,
    n: int,
) -> np.ndarray:
    """MixedBitMatMul reference: row r of ``a [..., K]`` uses ``slice_count[r]`` slices."""
    a = np.asarray(a, dtype=np.float64)
    k = a.shape[-1]
    counts = np.asarray(slice_count).reshape(-1)
    rows = a.reshape(-1, k)
    codes = unpack(packed, spec, n, k)
    out = np.zeros((rows.shape[0], n))
    for count in np.unique(counts):
        sel = counts == count
        out[sel] = rows[sel] @ dequantize(codes, scales, zeros, spec, int(count)).T
    return out.reshape(*a.shape[:-1], n)
