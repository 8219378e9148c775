"""Write tests/golden/packed_layout.json: the shared golden vector of the packed slice layout.

Run once when the layout changes (it must not change silently): ``python tools/make_golden.py``.
Both the Python packer tests and the C++ kernel tests check against this file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mbq_onnx.quant.packing import pack
from mbq_onnx.quant.reference import mixed_bit_matmul
from mbq_onnx.quant.spec import QuantSpec

OUT = Path(__file__).resolve().parents[1] / "tests" / "golden" / "packed_layout.json"
CASES = [((4, 2, 2), 16, 3, 40), ((2, 2, 2, 2), 16, 2, 32), ((3, 2), 16, 3, 20), ((8,), 16, 2, 16)]


def make_case(bits: tuple[int, ...], group: int, n: int, k: int, rng: np.random.Generator) -> dict:
    spec = QuantSpec(bits, group)
    codes = rng.integers(0, 1 << spec.total_bits, size=(n, k), dtype=np.uint8)
    n_groups = spec.num_groups(k)
    scales = np.round(rng.uniform(0.01, 0.1, size=(n, n_groups)), 4).astype(np.float32)
    zeros = rng.integers(0, 1 << spec.total_bits, size=(n, n_groups), dtype=np.uint8)
    rows = spec.num_slices + 1
    a = np.round(rng.normal(size=(rows, k)), 3).astype(np.float32)
    counts = np.array([1 + r % spec.num_slices for r in range(rows)], dtype=np.int64)
    y = mixed_bit_matmul(a, counts, pack(codes, spec), scales, zeros, spec, n)
    return {
        "slice_bits": list(bits),
        "group_size": group,
        "N": n,
        "K": k,
        "codes": codes.tolist(),
        "scales": scales.tolist(),
        "zeros": zeros.tolist(),
        "packed_hex": pack(codes, spec).tobytes().hex(),
        "A": a.tolist(),
        "slice_count": counts.tolist(),
        "Y": y.tolist(),
    }


def main() -> None:
    rng = np.random.default_rng(20260220)
    cases = [make_case(*c, rng) for c in CASES]
    OUT.write_text(json.dumps({"layout_version": 1, "cases": cases}, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
