#!/usr/bin/env python3
"""Interleaved decode (M=1) timing: MixedBitMatMul builds vs MatMulNBits (a benchmark, not a test).

For each shape: one session per op library given (``--libs``, e.g. a saved copy of the previous build and
the current one) at 1 and S slices with ``accuracy_level=4``, and MatMulNBits 4-bit and 8-bit at
``accuracy_level=4``, all in one process. Rounds visit the sessions in a fresh random order and time a
batch of calls each, so load from other processes on a shared machine hits every variant alike. Prints
the fastest batch mean per call and speed× = MatMulNBits time / ours (fastest and median batches), with
4 bits ↔ 1 slice and 8 bits ↔ S slices.

Usage: ``python tools/bench_decode_ab.py [--libs OLD.so,NEW.so] [--shapes 576x576,576x1536]
[--groups 128,64] [--threads 1] [--bits 4,2,2] [--rounds 30] [--batch 40]``
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_kernel as bk

from mbq_onnx import ops_lib

SHAPES = "576x576,576x192,576x1536,1536x576,576x960,576x3072,576x49152"


def _session(model: object, threads: int, lib: str | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if lib:
        so.register_custom_ops_library(lib)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--libs", default=str(ops_lib.library_path()), help="comma-separated op libraries")
    p.add_argument("--shapes", default=SHAPES)
    p.add_argument("--groups", default="128")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bits", default="4,2,2", help="slice widths of MixedBitMatMul")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--batch", type=int, default=40, help="calls per timed batch")
    a = p.parse_args()
    libs = a.libs.split(",")
    bits = tuple(int(x) for x in a.bits.split(","))
    top = len(bits)
    rng = np.random.default_rng(0)
    for gs in (int(g) for g in a.groups.split(",")):
        bk.GROUP = gs
        for shape in a.shapes.split(","):
            k, n = map(int, shape.split("x"))
            x = rng.standard_normal((1, k)).astype(np.float32)
            runs: dict[str, Callable[[], object]] = {}
            model = bk.mbq_model(k, n, bits, rng, accuracy_level=4)
            for li, lib in enumerate(libs):
                s = _session(model, a.threads, lib)
                for c in sorted({1, top}):
                    feed = {"A": x, "C": np.array([c], np.int64)}
                    runs[f"L{li}_{c}"] = lambda s=s, feed=feed: s.run(None, feed)
            for b in (4, 8):
                s = _session(bk.nbits_model(k, n, b, 4, rng), a.threads)
                runs[f"nb{b}"] = lambda s=s, x=x: s.run(None, {"A": x})
            times: dict[str, list[float]] = {key: [] for key in runs}
            for f in runs.values():
                for _ in range(10):
                    f()
            keys = list(runs)
            for _ in range(a.rounds):
                random.shuffle(keys)
                for key in keys:
                    t0 = time.perf_counter()
                    for _ in range(a.batch):
                        runs[key]()
                    times[key].append((time.perf_counter() - t0) / a.batch * 1e6)
            mn = {key: float(np.min(v)) for key, v in times.items()}
            md = {key: float(np.median(v)) for key, v in times.items()}
            line = f"g{gs} {k}x{n} t{a.threads}: MatMulNBits 4b {mn['nb4']:.1f} 8b {mn['nb8']:.1f} us |"
            for li in range(len(libs)):
                for c, ref in ((1, "nb4"), (top, "nb8")):
                    key = f"L{li}_{c}"
                    ratio, med = mn[ref] / mn[key], md[ref] / md[key]
                    line += f" L{li} {c}sl {mn[key]:.1f} ({ratio:.2f}x, med {med:.2f}x)"
                line += " |"
            print(line, flush=True)


if __name__ == "__main__":
    main()
