#!/usr/bin/env python3
"""Benchmark MixedBitMatMul against ORT's MatMulNBits and float32 MatMul (a benchmark, not a test).

In one process, for intra-op threads 1 and 2: MixedBitMatMul ([4,2,2] with 1/2/3 slices and mixed
per-row counts; [2,2,2,2] with 1..4 slices) vs ``com.microsoft::MatMulNBits`` (bits 4 and 8,
``accuracy_level`` 0 and 4) vs float32 MatMul, at LLaMA-like shapes and the embedded model's shapes,
M=1 (decode) and M=128 (prefill). Memory bandwidth is measured in the same run; each M=1
MixedBitMatMul case is reported as % of its bytes-read / bandwidth limit.

Writes ``reports/kernel_bench.json`` and ``reports/kernel_bench.png`` and prints a markdown table.

MixedBitMatMul runs the kernel table the library picks for this CPU (``MBQ_KERNEL`` or ``--kernel`` forces
one, e.g. ``avx2``); the report and table name it. ``accuracy_level=4`` rows (int8 activations) are
measured for M=1 and M=128; MatMulNBits is compared at its fastest ``accuracy_level`` per bit width.

Usage: ``python tools/bench_kernel.py [--quick] [--shapes 4096x4096,576x1536] [--kernel avx2]
[--out-dir reports]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm

from mbq_onnx import ops_lib
from mbq_onnx.atomic import replace_file, write_file
from mbq_onnx.quant.packing import pack
from mbq_onnx.quant.reference import mixed_bit_matmul
from mbq_onnx.quant.spec import QuantSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
GROUP = 128
LLAMA_SHAPES = [(2048, 2048), (2048, 8192), (4096, 4096), (4096, 14336)]
SMOLLM_SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576)]
SPECS = {"4-2-2": (4, 2, 2), "2-2-2-2": (2, 2, 2, 2)}
MIXED_COUNTS = {"4-2-2": (0.5, 0.3, 0.2), "2-2-2-2": (0.25, 0.25, 0.25, 0.25)}
IR_VERSION = 10


def _model(nodes: list, inputs: list, inits: list, domains: dict[str, int]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "bench", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits
    )
    opsets = [helper.make_opsetid("", 20)] + [helper.make_opsetid(d, v) for d, v in domains.items()]
    return helper.make_model(graph, ir_version=IR_VERSION, opset_imports=opsets)


def mbq_model(
    k: int, n: int, bits: tuple[int, ...], rng: np.random.Generator, accuracy_level: int = 0
) -> onnx.ModelProto:
    """MixedBitMatMul with random wire-format weights (content does not matter for speed)."""
    spec = QuantSpec(bits, GROUP)
    g = spec.num_groups(k)
    packed = rng.integers(0, 256, size=spec.packed_nbytes(n, k), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.01, size=(n, g)).astype(np.float32)
    zeros = rng.integers(0, 1 << spec.total_bits, size=(n, g), dtype=np.uint8)
    node = helper.make_node(
        "MixedBitMatMul",
        ["A", "C", "P", "S", "Z"],
        ["Y"],
        domain="com.mbq",
        K=k,
        N=n,
        group_size=GROUP,
        slice_bits=list(bits),
        accuracy_level=accuracy_level,
    )
    inputs = [
        helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k]),
        helper.make_tensor_value_info("C", TensorProto.INT64, ["M"]),
    ]
    inits = [
        numpy_helper.from_array(packed, "P"),
        numpy_helper.from_array(scales, "S"),
        numpy_helper.from_array(zeros, "Z"),
    ]
    return _model([node], inputs, inits, {"com.mbq": 1})


def nbits_model(k: int, n: int, bits: int, accuracy_level: int, rng: np.random.Generator) -> onnx.ModelProto:
    """MatMulNBits (asymmetric: with zero points, like MixedBitMatMul) with random weights."""
    blocks = -(-k // GROUP)
    b = rng.integers(0, 256, size=(n, blocks, GROUP * bits // 8), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.01, size=(n * blocks,)).astype(np.float32)
    zp = rng.integers(0, 256, size=(n * (-(-blocks * bits // 8)),), dtype=np.uint8)
    node = helper.make_node(
        "MatMulNBits",
        ["A", "B", "S", "Z"],
        ["Y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=bits,
        block_size=GROUP,
        accuracy_level=accuracy_level,
    )
    inputs = [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])]
    inits = [
        numpy_helper.from_array(b, "B"),
        numpy_helper.from_array(scales, "S"),
        numpy_helper.from_array(zp, "Z"),
    ]
    return _model([node], inputs, inits, {"com.microsoft": 1})


def float_model(k: int, n: int, rng: np.random.Generator) -> onnx.ModelProto:
    w = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
    inputs = [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])]
    return _model(
        [helper.make_node("MatMul", ["A", "W"], ["Y"])], inputs, [numpy_helper.from_array(w, "W")], {}
    )


def session(model: onnx.ModelProto, threads: int, custom: bool) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if custom:
        ops_lib.register(so)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def time_call(fn: Callable[[], object], budget_s: float, min_iters: int = 2) -> float:
    """Fastest seconds per call over ~budget_s (after one warm-up call).

    The minimum, not the median: the machine is shared, and other processes only ever add time."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or (time.perf_counter() - start < budget_s and len(times) < 2000):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.min(times))


def kernel_table() -> str:
    """Name of the MixedBitMatMul kernel table that runs (``MBQ_KERNEL`` or the best one on this CPU)."""
    forced = os.environ.get("MBQ_KERNEL")
    if forced:
        return forced
    model = mbq_model(32, 4, (4,), np.random.default_rng(0))
    for name in ("avx512_vnni", "avx2", "neon_dotprod", "neon"):
        os.environ["MBQ_KERNEL"] = name
        try:
            session(model, 1, custom=True)
            return name
        except Exception as e:  # ORT raises its own exception types
            if "not available" not in str(e):
                raise
        finally:
            del os.environ["MBQ_KERNEL"]
    return "ref"


def measure_bandwidth(threads: int, budget_s: float) -> dict[str, float]:
    """Bandwidth (GB/s): ORT ReduceSum read of 256 MiB with ``threads`` threads; numpy copy (read + write)."""
    n = 64 * 1024 * 1024
    x = np.random.default_rng(0).standard_normal(n, dtype=np.float32).reshape(1024, -1)
    node = helper.make_node("ReduceSum", ["X", "axes"], ["Y"], keepdims=0)
    model = _model(
        [node],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))],
        [numpy_helper.from_array(np.array([1], np.int64), "axes")],
        {},
    )
    sess = session(model, threads, custom=False)
    t_reduce = time_call(lambda: sess.run(None, {"X": x}), budget_s)
    dst = np.empty_like(x)
    t_copy = time_call(lambda: np.copyto(dst, x), budget_s)
    return {
        "ort_reducesum_read_gbs": x.nbytes / t_reduce / 1e9,
        "numpy_copy_gbs": 2 * x.nbytes / t_copy / 1e9,
    }


def int8_accuracy(rows: int = 20) -> list[dict]:
    """rel-RMS error vs the float64 reference of the float and int8 (accuracy_level=4) paths.

    K=576, N=1536 (an embedded-model shape), [4,2,2], group 128, random codes/scales/zero points;
    normal and heavy-tailed (Student-t, 3 dof) activations; decode (one row per call) and prefill."""
    rng = np.random.default_rng(1)
    k, n, bits = 576, 1536, SPECS["4-2-2"]
    spec = QuantSpec(bits, GROUP)
    g = spec.num_groups(k)
    codes = rng.integers(0, 1 << spec.total_bits, size=(n, k), dtype=np.uint8)
    packed = pack(codes, spec)
    scales = (rng.uniform(0.5, 1.5, size=(n, g)) / (1 << spec.total_bits) / np.sqrt(k)).astype(np.float32)
    zeros = rng.integers(0, 1 << spec.total_bits, size=(n, g), dtype=np.uint8)
    sessions = {}
    for acc in (0, 4):
        model = mbq_model(k, n, bits, rng, accuracy_level=acc)
        for init, arr in zip(model.graph.initializer, (packed, scales, zeros), strict=True):
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
        sessions[acc] = session(model, 1, custom=True)
    out = []
    for dist in ("normal", "student_t3"):
        a = rng.standard_normal((rows, k)) if dist == "normal" else rng.standard_t(3, (rows, k))
        a = a.astype(np.float32)
        for slices in range(1, len(bits) + 1):
            counts = np.full(rows, slices, np.int64)
            ref = mixed_bit_matmul(a, counts, packed, scales, zeros, spec, n)

            def rel(y: np.ndarray, ref: np.ndarray = ref) -> float:
                return float(np.sqrt(np.mean((y - ref) ** 2) / np.mean(ref**2)))

            decode = np.concatenate(
                [sessions[4].run(None, {"A": a[i : i + 1], "C": counts[i : i + 1]})[0] for i in range(rows)]
            )
            out.append(
                {
                    "activations": dist,
                    "slices": slices,
                    "float": rel(sessions[0].run(None, {"A": a, "C": counts})[0]),
                    "int8_decode": rel(decode),
                    "int8_prefill": rel(sessions[4].run(None, {"A": a, "C": counts})[0]),
                }
            )
    return out


def mbq_bytes_read(k: int, n: int, bits: tuple[int, ...], slices: int) -> int:
    """Bytes a decode (M=1) call must read: the first ``slices`` planes plus scales/zeros (float32 each)."""
    spec = QuantSpec(bits, GROUP)
    planes = sum(spec.plane_nbytes(j, n, k) for j in range(slices))
    return planes + n * spec.num_groups(k) * 8 + k * 4


def run(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(0)
    if args.shapes:
        shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes.split(",")]
    else:
        shapes = [(576, 576), (2048, 2048)] if args.quick else LLAMA_SHAPES + SMOLLM_SHAPES
    ms = [1, 128]
    threads_list = [1, 2]
    budget = 0.1 if args.quick else 0.4
    specs = {"4-2-2": SPECS["4-2-2"]} if args.quick else SPECS
    bandwidth = {t: measure_bandwidth(t, budget) for t in threads_list}
    results: list[dict] = []
    total = len(shapes) * len(threads_list)
    with tqdm(total=total, desc="bench", unit="shape") as bar:
        for k, n in shapes:
            models = {f"mbq-{name}": (mbq_model(k, n, bits, rng), True) for name, bits in specs.items()}
            models["mbq-4-2-2-int8"] = (mbq_model(k, n, SPECS["4-2-2"], rng, accuracy_level=4), True)
            for bits in (4, 8):
                for acc in (0, 4):
                    models[f"nbits{bits}-acc{acc}"] = (nbits_model(k, n, bits, acc, rng), False)
            models["fp32"] = (float_model(k, n, rng), False)
            for threads in threads_list:
                for name, (model, custom) in models.items():
                    sess = session(model, threads, custom)
                    for m in ms:
                        a = rng.standard_normal((m, k)).astype(np.float32)
                        if name.startswith("mbq-"):
                            key = name[4:].removesuffix("-int8")
                            op = f"mbq[{name[4:]}]"
                            bits = specs[key]
                            variants = [(str(s), np.full(m, s, np.int64)) for s in range(1, len(bits) + 1)]
                            if m > 1:
                                p = MIXED_COUNTS[key]
                                variants.append(
                                    ("mixed", rng.choice(np.arange(1, len(bits) + 1), size=m, p=p))
                                )
                            for label, counts in variants:
                                feeds = {"A": a, "C": counts.astype(np.int64)}
                                t = time_call(lambda s=sess, f=feeds: s.run(None, f), budget)
                                row = {
                                    "op": op,
                                    "slices": label,
                                    "K": k,
                                    "N": n,
                                    "M": m,
                                    "threads": threads,
                                    "ms": t * 1e3,
                                }
                                if m == 1:
                                    nbytes = mbq_bytes_read(k, n, bits, int(label))
                                    bw = max(bandwidth[threads].values()) * 1e9
                                    row["bytes_read"] = nbytes
                                    row["pct_of_bandwidth"] = 100.0 * (nbytes / bw) / t
                                results.append(row)
                        else:
                            t = time_call(lambda s=sess, x=a: s.run(None, {"A": x}), budget)
                            results.append(
                                {"op": name, "K": k, "N": n, "M": m, "threads": threads, "ms": t * 1e3}
                            )
                    del sess
                bar.update(1)
    return {
        "kernel": kernel_table(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "onnxruntime": ort.__version__,
        },
        "group_size": GROUP,
        "quick": bool(args.quick),
        "bandwidth_gbs": {str(t): v for t, v in bandwidth.items()},
        "int8_accuracy": int8_accuracy(),
        "results": results,
    }


def _find(results: list[dict], **kw) -> float | None:
    for r in results:
        if all(r.get(key) == v for key, v in kw.items()):
            return r["ms"]
    return None


def summary_rows(report: dict) -> list[dict]:
    """One row per (shape, M, threads): times and the speed ratios at matched bits."""
    res = report["results"]
    keys = sorted({(r["K"], r["N"], r["M"], r["threads"]) for r in res})
    rows = []
    for k, n, m, t in keys:
        q = {"K": k, "N": n, "M": m, "threads": t}
        mbq = {s: _find(res, op="mbq[4-2-2]", slices=s, **q) for s in ("1", "2", "3", "mixed")}
        int8 = {s: _find(res, op="mbq[4-2-2-int8]", slices=s, **q) for s in ("1", "3", "mixed")}
        best1 = min(x for x in (mbq["1"], int8["1"]) if x)
        best3 = min(x for x in (mbq["3"], int8["3"]) if x)
        nb4 = min(x for x in (_find(res, op="nbits4-acc0", **q), _find(res, op="nbits4-acc4", **q)) if x)
        nb8 = min(x for x in (_find(res, op="nbits8-acc0", **q), _find(res, op="nbits8-acc4", **q)) if x)

        def pct_bw(op: str, q: dict = q) -> float | None:
            return next(
                (
                    r.get("pct_of_bandwidth")
                    for r in res
                    if r["op"] == op and r.get("slices") == "1" and all(r[key] == v for key, v in q.items())
                ),
                None,
            )

        rows.append(
            {
                **q,
                "mbq1": mbq["1"],
                "mbq2": mbq["2"],
                "mbq3": mbq["3"],
                "mbq_mixed": mbq["mixed"],
                "mbq1_int8": int8["1"],
                "mbq3_int8": int8["3"],
                "mbq_mixed_int8": int8["mixed"],
                "nbits4_best": nb4,
                "nbits8_best": nb8,
                "fp32": _find(res, op="fp32", **q),
                "speedup_4bit": nb4 / mbq["1"],
                "speedup_8bit": nb8 / mbq["3"],
                "best_speedup_4bit": nb4 / best1,
                "best_speedup_8bit": nb8 / best3,
                "pct_bw_1slice": pct_bw("mbq[4-2-2]"),
                "pct_bw_1slice_int8": pct_bw("mbq[4-2-2-int8]"),
            }
        )
    return rows


def markdown(report: dict) -> str:
    def f(x: float | None, fmt: str = "{:.3f}") -> str:
        return "–" if x is None else fmt.format(x)

    lines = [
        "| K×N | M | thr | mbq 1 sl (4b) | 2 sl (6b) | 3 sl (8b) | mixed | int8-act 1 sl | int8-act 3 sl "
        "| MatMulNBits 4b | MatMulNBits 8b | fp32 | 4b speed× | 8b speed× | M=1 %BW float / int8 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary_rows(report):
        lines.append(
            f"| {r['K']}×{r['N']} | {r['M']} | {r['threads']} | {f(r['mbq1'])} | {f(r['mbq2'])} | "
            f"{f(r['mbq3'])} | {f(r['mbq_mixed'])} | {f(r['mbq1_int8'])} | {f(r['mbq3_int8'])} | "
            f"{f(r['nbits4_best'])} | {f(r['nbits8_best'])} | "
            f"{f(r['fp32'])} | {f(r['best_speedup_4bit'], '{:.2f}')} | "
            f"{f(r['best_speedup_8bit'], '{:.2f}')} | "
            f"{f(r['pct_bw_1slice'], '{:.0f}')} / {f(r['pct_bw_1slice_int8'], '{:.0f}')} |"
        )
    bw = ", ".join(
        f"{t} thr: ReduceSum read {v['ort_reducesum_read_gbs']:.1f} GB/s, numpy copy "
        f"{v['numpy_copy_gbs']:.1f} GB/s"
        for t, v in report["bandwidth_gbs"].items()
    )
    acc = "; ".join(
        f"{r['activations']} {r['slices']} sl: float {r['float']:.1e}, int8 decode {r['int8_decode']:.1e}, "
        f"prefill {r['int8_prefill']:.1e}"
        for r in report.get("int8_accuracy", [])
    )
    return (
        f"int8-activation accuracy (rel-RMS vs float64, 576×1536, [4,2,2]): {acc}.\n\n"
        f"MixedBitMatMul kernel table: {report.get('kernel', '?')}. "
        "Times in ms (fastest call; the machine is shared). MatMulNBits: fastest of accuracy_level 0/4. "
        "speed× = MatMulNBits time / MixedBitMatMul time at matched bits (4b: 1 slice, 8b: 3 slices), "
        "each at its fastest accuracy_level (>1: ours faster). "
        "%BW = bytes read / bandwidth / time for 1 slice, float and int8 paths (above 100 when the weights "
        "stay in cache). "
        f"Bandwidth: {bw}.\n\n" + "\n".join(lines)
    )


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary_rows(report) if r["threads"] == max(int(t) for t in report["bandwidth_gbs"])]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    series = [
        ("mbq1", "mbq 1 slice (4b)"),
        ("mbq2", "mbq 2 slices (6b)"),
        ("mbq3", "mbq 3 slices (8b)"),
        ("mbq1_int8", "mbq 1 slice int8-act"),
        ("mbq3_int8", "mbq 3 slices int8-act"),
        ("nbits4_best", "MatMulNBits 4b"),
        ("nbits8_best", "MatMulNBits 8b"),
        ("fp32", "fp32 MatMul"),
    ]
    for ax, m in zip(axes, (1, 128), strict=True):
        sub = [r for r in rows if r["M"] == m]
        x = np.arange(len(sub))
        width = 0.8 / len(series)
        for i, (key, label) in enumerate(series):
            ax.bar(x + i * width, [r[key] or 0 for r in sub], width, label=label)
        ax.set_xticks(x + 0.4 - width / 2, [f"{r['K']}×{r['N']}" for r in sub], rotation=30)
        ax.set_yscale("log")
        ax.set_ylabel("ms per call (log)")
        ax.set_title(f"M={m}, {sub[0]['threads'] if sub else ''} threads")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"MixedBitMatMul ({report.get('kernel', '?')} kernels) vs MatMulNBits vs fp32 MatMul (group 128)"
    )
    fig.tight_layout()
    with replace_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def write_json(obj: dict, path: Path) -> None:
    write_file(path, json.dumps(obj, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two small shapes, [4,2,2] only, short timing")
    parser.add_argument(
        "--shapes", help="comma-separated KxN list instead of the default shapes, e.g. 4096x4096"
    )
    parser.add_argument("--kernel", help="force a MixedBitMatMul kernel table (sets MBQ_KERNEL), e.g. avx2")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "reports")
    args = parser.parse_args()
    if args.kernel:
        os.environ["MBQ_KERNEL"] = args.kernel
    ops_lib.library_path()  # fail early with the build command
    args.out_dir.mkdir(parents=True, exist_ok=True)
    report = run(args)
    report["summary"] = summary_rows(report)
    write_json(report, args.out_dir / "kernel_bench.json")
    plot(report, args.out_dir / "kernel_bench.png")
    print(markdown(report))
    print(f"\nwrote {args.out_dir / 'kernel_bench.json'} and {args.out_dir / 'kernel_bench.png'}")


if __name__ == "__main__":
    main()
