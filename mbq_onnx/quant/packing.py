"""The packed slice-plane layout of MixedBitMatMul (the one Python place that knows bit order).

Normative description: ``custom_ops/README.md`` ("Packed layout"). Golden vector:
``tests/golden/packed_layout.json``, checked by the Python and the C++ side.
"""

from __future__ import annotations

import numpy as np

from .spec import QuantSpec


def split_slices(codes: np.ndarray, spec: QuantSpec) -> list[np.ndarray]:
    """Split B-bit codes into per-slice values: slice j holds bits [B - c_j, B - c_{j-1}) of the code."""
    codes = np.asarray(codes, dtype=np.uint8)
    b_total = spec.total_bits
    return [
        ((codes >> (b_total - c)) & (1 << b) - 1).astype(np.uint8)
        for b, c in zip(spec.slice_bits, spec.cum_bits, strict=True)
    ]


def _grouped(values: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """[N, K] -> [N, n_groups, group_size], zero-padding the ragged last group."""
    n, k = values.shape
    k_pad = spec.num_groups(k) * spec.group_size
    out = np.zeros((n, k_pad), dtype=np.uint8)
    out[:, :k] = values
    return out.reshape(n, -1, spec.group_size)


def pack(codes: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """Pack B-bit codes ``[N, K]`` into one 1-D uint8 buffer of contiguous slice planes.

    Plane j is ``[N, n_groups, group_size * b_j / 8]``: within a group, element i occupies
    bits ``[i*b_j, (i+1)*b_j)`` of a little-endian bit stream (LSB of byte 0 first).
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be [N, K], got shape {codes.shape}")
    if codes.size and int(codes.max()) >= 1 << spec.total_bits:
        raise ValueError(f"codes exceed {spec.total_bits} bits (max {int(codes.max())})")
    planes = []
    for b, values in zip(spec.slice_bits, split_slices(codes, spec), strict=True):
        g = _grouped(values, spec)
        bits = (g[..., None] >> np.arange(b, dtype=np.uint8)) & 1  # [N, G, gs, b], LSB first
        planes.append(np.packbits(bits.reshape(*g.shape[:2], -1), axis=-1, bitorder="little").ravel())
    return np.concatenate(planes)


def unpack(packed: np.ndarray, spec: QuantSpec, n: int, k: int, n_slices: int | None = None) -> np.ndarray:
    """Inverse of :func:`pack`: B-bit codes ``[N, K]`` with slices beyond ``n_slices`` left zero."""
    packed = np.asarray(packed, dtype=np.uint8).ravel()
    if packed.size != spec.packed_nbytes(n, k):
        raise ValueError(
            f"packed buffer has {packed.size} bytes, expected {spec.packed_nbytes(n, k)} for "
            f"N={n}, K={k}, slices={list(spec.slice_bits)}, group={spec.group_size}"
        )
    n_slices = spec.num_slices if n_slices is None else n_slices
    codes = np.zeros((n, k), dtype=np.uint8)
    offset = 0
    for j, (b, c) in enumerate(zip(spec.slice_bits, spec.cum_bits, strict=True)):
        nbytes = spec.plane_nbytes(j, n, k)
        if j < n_slices:
            plane = packed[offset : offset + nbytes].reshape(n, spec.num_groups(k), -1)
            bits = np.unpackbits(plane, axis=-1, bitorder="little").reshape(n, -1, spec.group_size, b)
            values = (bits << np.arange(b, dtype=np.uint8)).sum(-1, dtype=np.uint8).reshape(n, -1)[:, :k]
            codes |= values << (spec.total_bits - c)
        offset += nbytes
    return codes
