#!/usr/bin/env python3
"""Dynamic instructions per weight of MixedBitMatMul's arm64 kernels vs ORT's MatMulNBits, under qemu-user.

There is no arm64 machine here, and qemu-user's wall time says nothing about an arm64 core's speed. What
qemu can say exactly is how many guest instructions a code path executes. This tool counts, in one qemu
run per shape, the AArch64 instructions executed by

- our ``MixedBitMatMul`` (``[4,2,2]``, group 128) at 1, 2 and 3 slices, ``accuracy_level`` 0 (float
  activations) and 4 (int8 activations: the SDOT GEMV on the ``neon_dotprod`` table), and
- ORT's own ``com.microsoft::MatMulNBits`` (MLAS, inside the arm64 ``libonnxruntime`` of the SDK;
  4 and 8 bits, block 128, with zero points like ours, ``accuracy_level`` 0 and 4),

for decode (M=1) and prefill (M=16) at the embedded model's shapes and one LLaMA shape, and reports
instructions per weight, per multiply-add and per output column, and the ratio ours / MatMulNBits at
matched bits (1 slice vs 4-bit, 3 slices vs 8-bit).

Method. ``custom_ops/tools/insn_count_plugin.c`` is a QEMU TCG plugin (Debian's qemu-user 7.2 loads
plugins but ships none): an inline 64-bit counter per translation block, summed as
(instructions in the block) x (entries) between marker system calls. ``mbq_run_model --repeat R --mark``
brackets every ``session.Run`` with those markers, so session creation, prepacking and file I/O are
outside the window. A window still holds ORT's per-run overhead, so every case runs as a model with the
op L = N and 2N times (independent weights, all nodes reading the same input): per-op cost =
(count(2N) - count(N)) / N. The first run of each session is a warm-up and not used; of the other runs the
fewest count is taken, among the windows in which every other guest thread stayed inside one system call
(the plugin checks that; ORT starts a helper thread, and the counters are shared). The counter is
checked first on loops of known length (``custom_ops/tools/insn_count_check.c``: N vs 2N iterations
must differ by exactly 3N and 4N instructions) and against qemu's own execution log (``-d
in_asm,exec,nochain``, a completely separate count) on that program.

MixedBitMatMul runs a forced kernel table (``MBQ_KERNEL``; the library refuses a table the emulated CPU
cannot run); MatMulNBits' path is identified from what it executed (SDOT/UDOT: MLAS's int8 dot-product
kernels; SMMLA: i8mm; else float FMAs), recorded per row.

Writes ``reports/arm_insn.json`` and ``reports/arm_insn.png`` (atomically) and prints a markdown table.
Needs Linux, root (a private mount namespace hides the host CPU topology from ORT's cpuinfo),
``qemu-user``, ``g++-aarch64-linux-gnu``, a host C compiler and ``cmake``; builds
``tools/build_ops.py --flavour aarch64`` itself.

Usage: ``python tools/bench_arm_insn.py [--quick] [--shapes 576x576,4096x4096] [--ms 1,16]
[--cpu cortex-a76] [--nodes 1,2] [--out-dir reports]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import qemu_arm64
from onnx import TensorProto, helper, numpy_helper
from qemu_arm64 import FAKE_CPU_SCRIPT, QEMU, SYSROOT

from mbq_onnx.atomic import replace_file, write_file
from mbq_onnx.quant.spec import QuantSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SRC = REPO_ROOT / "custom_ops" / "tools" / "insn_count_plugin.c"
CHECK_SRC = REPO_ROOT / "custom_ops" / "tools" / "insn_count_check.c"
CROSS_CC = "aarch64-linux-gnu-gcc"
GROUP = 128
BITS = (4, 2, 2)
SMOLLM_SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576)]
LLAMA_SHAPES = [(4096, 4096)]
QUICK_SHAPES = [(576, 192)]
IR_VERSION = 10  # the SDK's arm64 ORT (1.30) reads IR <= 13
# Our kernel table per emulated CPU (qemu -cpu names): DotProd from ARMv8.2 (Cortex-A76/Neoverse-N1 class).
CPU_KERNEL = {
    "cortex-a76": "neon_dotprod",
    "neoverse-n1": "neon_dotprod",
    "max": "neon_dotprod",
    "a64fx": "neon",
    "cortex-a72": "neon",
    "cortex-a57": "neon",
    "cortex-a53": "neon",
    "cortex-a35": "neon",
}
RERUNS = 2  # extra attempts for a case without an exclusive measured window
CHECK_CPU = "cortex-a76"  # the check program uses SDOT; the counter itself does not depend on the CPU model
DOT_FAMILY = ("sdot", "udot", "usdot", "sudot", "smmla", "ummla", "usmmla")


def missing_requirement() -> str | None:
    """Why this tool cannot run here, or None."""
    if (
        why := qemu_arm64.missing_requirement(((CROSS_CC, "gcc-aarch64-linux-gnu"), ("cc", "gcc")))
    ) is not None:
        return why
    if "-plugin" not in subprocess.run([QEMU, "-h"], capture_output=True, text=True).stdout:
        return f"{QEMU} was built without TCG plugin support"
    return None


# ---------------------------------------------------------------- build


@dataclass(frozen=True)
class Build:
    lib: Path  # aarch64 libmbq_ops.so
    runner: Path  # aarch64 mbq_run_model
    plugin: Path  # host libinsn_count.so
    check: Path  # aarch64 insn_count_check


def _compile_if_stale(cmd: list[str], src: Path, out: Path) -> None:
    if not out.is_file() or out.stat().st_mtime < src.stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([*cmd, "-o", str(out), str(src)], check=True)


def build_all() -> Build:
    """Cross build the op library + runner (tools/build_ops.py), compile the plugin and the check program."""
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "build_ops.py"), "--flavour", "aarch64"]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    lib = Path(proc.stdout.strip().splitlines()[-1])
    runner = lib.parent / "mbq_run_model"
    tools_dir = lib.parent / "insn_count"
    plugin, check = tools_dir / "libinsn_count.so", tools_dir / "insn_count_check"
    _compile_if_stale(["cc", "-O2", "-Wall", "-shared", "-fPIC"], PLUGIN_SRC, plugin)
    _compile_if_stale([CROSS_CC, "-O2", "-march=armv8.2-a+dotprod"], CHECK_SRC, check)
    for path in (lib, runner, plugin, check):
        if not path.is_file():
            raise SystemExit(f"bench_arm_insn: build did not produce {path}")
    return Build(lib, runner, plugin, check)


# ---------------------------------------------------------------- running under qemu


def qemu_command(cpu: str, plugin: Path, counts: Path, argv: list[str], log: Path | None = None) -> list[str]:
    cmd = [QEMU, "-L", SYSROOT, "-cpu", cpu, "-plugin", f"{plugin},out={counts}"]
    if log is not None:
        cmd += ["-d", "in_asm,exec,nochain", "-D", str(log)]
    return [*cmd, *argv]


def read_counts(path: Path) -> tuple[dict[int, dict], dict]:
    """The plugin's output: {tag: window record}, and the exit record."""
    windows, exit_record = {}, {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "tag" in rec:
            windows[rec["tag"]] = rec
        elif rec.get("exit"):
            exit_record = rec
    return windows, exit_record


def count_from_exec_log(log: Path) -> int:
    """Instructions executed according to qemu's own log (``-d in_asm,exec,nochain``): each translated
    block's instruction count from ``in_asm``, times its executions (``Trace`` lines, one per block entry,
    unchained)."""
    sizes: dict[int, int] = {}
    block: list[int] | None = None
    total = 0
    insn = re.compile(r"0x([0-9a-f]+):\s")
    trace = re.compile(r"Trace \d+: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/")
    with log.open() as f:
        for line in f:
            if line.startswith("IN:"):
                block = []
                continue
            m = insn.match(line) if block is not None else None
            if m:
                block.append(int(m.group(1), 16))
                continue
            if block:
                sizes[block[0]] = len(block)
            block = None
            t = trace.match(line)
            if t:
                total += sizes[int(t.group(1), 16)]
    return total


def check_counter(build: Build, cpu: str, work: Path, n: int) -> dict:
    """Count the known loops of insn_count_check.c at N and 2N iterations; and compare the plugin's total with
    qemu's execution log on a short run. Raises if the counter is not exact."""
    runs = {}
    for iters in (n, 2 * n):
        out = work / f"check_{iters}.jsonl"
        subprocess.run(
            qemu_command(cpu, build.plugin, out, [str(build.check), str(iters)]),
            check=True,
            capture_output=True,
        )
        runs[iters], _ = read_counts(out)
    empty = runs[n][1]["insns"]
    scalar = runs[2 * n][2]["insns"] - runs[n][2]["insns"]
    sdot_insns = runs[2 * n][3]["insns"] - runs[n][3]["insns"]
    sdot_count = runs[2 * n][3]["mnemonics"].get("sdot", 0) - runs[n][3]["mnemonics"].get("sdot", 0)
    # Independent count: qemu's own exec log, same run with the plugin loaded (same guest behaviour).
    small = 1000
    out, log = work / "check_log.jsonl", work / "check_exec.log"
    subprocess.run(
        qemu_command(cpu, build.plugin, out, [str(build.check), str(small)], log=log),
        check=True,
        capture_output=True,
    )
    _, exit_record = read_counts(out)
    from_log = count_from_exec_log(log)
    log.unlink()
    check = {
        "cpu": cpu,
        "iterations": [n, 2 * n],
        "empty_window_insns": empty,
        "scalar_loop_delta": {"expected": 3 * n, "counted": scalar},
        "sdot_loop_delta": {"expected": 4 * n, "counted": sdot_insns},
        "sdot_mnemonic_delta": {"expected": 2 * n, "counted": sdot_count},
        "whole_program_vs_qemu_exec_log": {
            "iterations": small,
            "plugin_total": exit_record.get("total_insns"),
            "exec_log_total": from_log,
        },
    }
    exact = (
        scalar == 3 * n
        and sdot_insns == 4 * n
        and sdot_count == 2 * n
        and exit_record.get("total_insns") == from_log
    )
    check["exact"] = exact
    if not exact:
        raise SystemExit(f"bench_arm_insn: the instruction counter failed its check: {json.dumps(check)}")
    return check


def exclusive_measured(windows: dict[int, dict], index: int) -> bool:
    """Whether case ``index`` has a measured (not warm-up) window that no other guest thread ran in."""
    return any(w.get("exclusive") for t, w in windows.items() if t >> 16 == index and t & 0xFFFF > 0)


def run_cases(
    build: Build, cpu: str, kernel: str, dirs: list[Path], counts: Path, repeat: int, work: Path, progress
) -> str:
    """Run ``mbq_run_model --mark`` on ``dirs`` under qemu with the plugin; stream progress; return stdout."""
    fake_cpu = work / "fake_cpu"
    fake_cpu.mkdir(exist_ok=True)
    argv = [str(build.runner), "--ops", str(build.lib), "--threads", "1", "--repeat", str(repeat), "--mark"]
    cmd = ["unshare", "-m", "--", "sh", "-c", FAKE_CPU_SCRIPT, "sh", str(fake_cpu)]
    cmd += qemu_command(cpu, build.plugin, counts, [*argv, *map(str, dirs)])
    env = {**os.environ, "MBQ_KERNEL": kernel}
    lines = []
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if ": ok" in line or ": error:" in line:
                progress()
        stderr = proc.stderr.read() if proc.stderr else ""
    stdout = "".join(lines)
    if proc.returncode != 0 or not re.search(r"^done: \d+ ok, 0 error$", stdout, re.M):
        raise SystemExit(f"bench_arm_insn: arm64 runner failed (exit {proc.returncode}):\n{stdout}\n{stderr}")
    return stdout


# ---------------------------------------------------------------- models and cases


@dataclass(frozen=True)
class Variant:
    op: str  # "mbq" or "matmulnbits"
    accuracy_level: int
    bits: int  # MatMulNBits bits; for mbq the total B of the format
    slices: int | None = None  # mbq only

    @property
    def name(self) -> str:
        if self.op == "mbq":
            return f"mbq-acc{self.accuracy_level}-s{self.slices}"
        return f"nbits{self.bits}-acc{self.accuracy_level}"

    @property
    def model_key(self) -> str:  # one model serves all slice counts (a run-time input)
        return self.name.rsplit("-s", 1)[0] if self.op == "mbq" else self.name


def variants() -> list[Variant]:
    out = [Variant("mbq", acc, sum(BITS), s) for acc in (0, 4) for s in range(1, len(BITS) + 1)]
    return out + [Variant("matmulnbits", acc, bits) for bits in (4, 8) for acc in (0, 4)]


def _graph_model(nodes: list, inputs: list, inits: list, n_out: int, domain: str) -> onnx.ModelProto:
    outputs = [helper.make_tensor_value_info(f"Y{i}", TensorProto.FLOAT, None) for i in range(n_out)]
    graph = helper.make_graph(nodes, "arm_insn", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", 20), helper.make_opsetid(domain, 1)]
    return helper.make_model(graph, ir_version=IR_VERSION, opset_imports=opsets)


def build_model(v: Variant, k: int, n: int, copies: int, rng: np.random.Generator) -> onnx.ModelProto:
    """``copies`` independent nodes of the op (own random weights, content irrelevant to the counts), all
    reading input A (and C), outputs Y0..Y{copies-1}."""
    nodes, inits = [], []
    inputs = [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])]
    if v.op == "mbq":
        spec = QuantSpec(BITS, GROUP)
        g = spec.num_groups(k)
        inputs.append(helper.make_tensor_value_info("C", TensorProto.INT64, ["M"]))
        for i in range(copies):
            inits += [
                numpy_helper.from_array(
                    rng.integers(0, 256, size=spec.packed_nbytes(n, k), dtype=np.uint8), f"P{i}"
                ),
                numpy_helper.from_array(rng.uniform(0.001, 0.01, size=(n, g)).astype(np.float32), f"S{i}"),
                numpy_helper.from_array(
                    rng.integers(0, 1 << spec.total_bits, size=(n, g), dtype=np.uint8), f"Z{i}"
                ),
            ]
            nodes.append(
                helper.make_node(
                    "MixedBitMatMul",
                    ["A", "C", f"P{i}", f"S{i}", f"Z{i}"],
                    [f"Y{i}"],
                    domain="com.mbq",
                    K=k,
                    N=n,
                    group_size=GROUP,
                    slice_bits=list(BITS),
                    accuracy_level=v.accuracy_level,
                )
            )
        return _graph_model(nodes, inputs, inits, copies, "com.mbq")
    blocks = -(-k // GROUP)
    for i in range(copies):
        inits += [
            numpy_helper.from_array(
                rng.integers(0, 256, size=(n, blocks, GROUP * v.bits // 8), dtype=np.uint8), f"B{i}"
            ),
            numpy_helper.from_array(rng.uniform(0.001, 0.01, size=(n * blocks,)).astype(np.float32), f"S{i}"),
            numpy_helper.from_array(
                rng.integers(0, 256, size=(n * (-(-blocks * v.bits // 8)),), dtype=np.uint8), f"Z{i}"
            ),
        ]
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                ["A", f"B{i}", f"S{i}", f"Z{i}"],
                [f"Y{i}"],
                domain="com.microsoft",
                K=k,
                N=n,
                bits=v.bits,
                block_size=GROUP,
                accuracy_level=v.accuracy_level,
            )
        )
    return _graph_model(nodes, inputs, inits, copies, "com.microsoft")


@dataclass(frozen=True)
class Case:
    variant: Variant
    k: int
    n: int
    m: int
    copies: int
    dir: Path


def write_cases(
    root: Path, k: int, n: int, ms: list[int], nodes: list[int], rng: np.random.Generator
) -> list[Case]:
    """Models (one per variant's model key and node count, shared by the M and slice cases through a
    symlink) and case directories."""
    cases = []
    models: dict[tuple[str, int], Path] = {}
    for v in variants():
        for copies in nodes:
            key = (v.model_key, copies)
            if key not in models:
                path = root / "models" / f"{v.model_key}_x{copies}.onnx"
                path.parent.mkdir(parents=True, exist_ok=True)
                onnx.save(build_model(v, k, n, copies, rng), path)
                models[key] = path
            for m in ms:
                d = root / f"{v.name}_x{copies}_m{m}"
                (d / "inputs").mkdir(parents=True)
                (d / "model.onnx").symlink_to(models[key])
                np.save(d / "inputs" / "A.npy", rng.standard_normal((m, k)).astype(np.float32))
                if v.op == "mbq":
                    np.save(d / "inputs" / "C.npy", np.full(m, v.slices, np.int64))
                cases.append(Case(v, k, n, m, copies, d))
    return cases


# ---------------------------------------------------------------- analysis


# Multiply-adds one instruction does (128-bit forms), for naming the inner loop that did the op's arithmetic.
MACS_PER_INSN = {
    "int8 dot product (DotProd: SDOT/UDOT)": (("sdot", "udot", "usdot", "sudot"), 16),
    "int8 matrix multiply-accumulate (i8mm: SMMLA/UMMLA)": (("smmla", "ummla", "usmmla"), 32),
    "int8 widening multiplies (SMULL/SADALP)": (("smull", "smull2"), 8),
    "float32 FMA (FMLA)": (("fmla",), 4),
}


def _path_of(mnemonics: dict[str, float], macs: int) -> str:
    """What kind of inner loop did the arithmetic: the instruction family whose count x lanes covers the most
    of the op's multiply-adds (at least a quarter of them), from the per-op instruction mix."""
    cover = {
        name: sum(mnemonics.get(x, 0) for x in family) * lanes
        for name, (family, lanes) in MACS_PER_INSN.items()
    }
    name = max(cover, key=cover.__getitem__)
    return name if cover[name] >= 0.25 * macs else "other"


def analyse(
    cases: list[Case], windows: dict[int, dict], cpu: str, kernel: str, nodes: list[int]
) -> list[dict]:
    """Per (variant, shape, M): per-op instruction counts from the node-count difference."""
    by_key: dict[tuple, dict[int, list[dict]]] = {}
    excluded: dict[tuple, int] = {}  # measured windows another guest thread may have run in
    for index, case in enumerate(cases):
        runs = [windows[t] for t in sorted(windows) if t >> 16 == index]
        if len(runs) < 2:
            raise SystemExit(f"bench_arm_insn: no measured runs for {case.dir.name}")
        key = (case.variant, case.k, case.n, case.m)
        by_key.setdefault(key, {})[case.copies] = runs[1:]  # runs[0]: warm-up
        excluded[key] = excluded.get(key, 0) + sum(not r.get("exclusive", False) for r in runs[1:])
    rows = []
    lo, hi = nodes[0], nodes[1]
    for (v, k, n, m), per_copies in by_key.items():
        # Only windows during which every other guest thread sat in a system call (the plugin's "exclusive"):
        # ORT starts a helper thread that wakes now and then, and the counters are shared by all threads.
        clean = {c: [r for r in runs if r.get("exclusive")] or runs for c, runs in per_copies.items()}

        def best(copies: int, clean: dict = clean) -> dict:
            return min(clean[copies], key=lambda rec: rec["insns"])

        def delta(a: dict, b: dict, per: int) -> dict:
            keys = set(a) | set(b)
            return {x: (b.get(x, 0) - a.get(x, 0)) / per for x in keys}

        r_lo, r_hi = best(lo), best(hi)
        per_op = (r_hi["insns"] - r_lo["insns"]) / (hi - lo)
        mnem = delta(r_lo["mnemonics"], r_hi["mnemonics"], hi - lo)
        ranges = delta(r_lo["ranges"], r_hi["ranges"], hi - lo)
        top = dict(sorted(((x, round(c)) for x, c in mnem.items() if c > 0), key=lambda t: -t[1])[:12])
        # Relative difference between the measured runs of one session (None with a single measured run).
        spread = (
            max(
                (max(r["insns"] for r in runs) - min(r["insns"] for r in runs))
                / min(r["insns"] for r in runs)
                for runs in clean.values()
            )
            if all(len(runs) > 1 for runs in clean.values())
            else None
        )
        row = {
            "cpu": cpu,
            "op": v.op,
            "variant": v.name,
            "accuracy_level": v.accuracy_level,
            "bits": v.bits if v.op == "matmulnbits" else sum(BITS[: v.slices]),
            "slices": v.slices,
            "K": k,
            "N": n,
            "M": m,
            "kernel": kernel if v.op == "mbq" else "MLAS (ORT built-in)",
            "path": _path_of(mnem, k * n * m),
            "counts_per_run": {str(c): best(c)["insns"] for c in sorted(per_copies)},
            "insns_per_call": per_op,
            "insns_per_weight": per_op / (k * n),
            "insns_per_mac": per_op / (k * n * m),
            "insns_per_column": per_op / n,
            "share_in_op_library": ranges.get("1", 0.0) / per_op if per_op else None,
            "share_in_onnxruntime": ranges.get("2", 0.0) / per_op if per_op else None,
            "dot_family_per_call": {x: round(mnem[x]) for x in DOT_FAMILY if mnem.get(x, 0) > 0},
            "top_mnemonics_per_call": top,
            "measured_runs": min(len(runs) for runs in per_copies.values()),
            "non_exclusive_runs": excluded[(v, k, n, m)],
            "exclusive": all(r.get("exclusive") for runs in clean.values() for r in runs),
            "run_spread": spread,
        }
        if len(nodes) > 2:
            # Linearity: the per-op cost between the 2nd and 3rd node counts over that between the first two.
            r3 = best(nodes[2])
            row["scaling"] = {
                "nodes": nodes[:3],
                "ratio": ((r3["insns"] - r_hi["insns"]) / (nodes[2] - hi)) / per_op if per_op else None,
            }
        rows.append(row)
    return rows


def _find(rows: list[dict], **kw) -> dict | None:
    return next((r for r in rows if all(r.get(key) == v for key, v in kw.items())), None)


def summary_rows(rows: list[dict]) -> list[dict]:
    """One row per (cpu, shape, M): instructions per weight and the ratios ours / MatMulNBits at matched bits
    (1 slice vs 4 bits, 3 slices vs 8 bits), at equal accuracy_level and each side at its fewest."""
    out = []
    for cpu, k, n, m in sorted({(r["cpu"], r["K"], r["N"], r["M"]) for r in rows}):
        q = {"cpu": cpu, "K": k, "N": n, "M": m}

        def ipw(q: dict = q, **kw) -> float | None:
            r = _find(rows, **q, **kw)
            return r["insns_per_weight"] if r else None

        s = {**q}
        for acc in (0, 4):
            for sl in (1, 2, 3):
                s[f"mbq{sl}_acc{acc}"] = ipw(op="mbq", slices=sl, accuracy_level=acc)
            for bits in (4, 8):
                s[f"nbits{bits}_acc{acc}"] = ipw(op="matmulnbits", bits=bits, accuracy_level=acc)
        for bits, sl in ((4, 1), (8, 3)):
            for acc in (0, 4):
                ours, theirs = s[f"mbq{sl}_acc{acc}"], s[f"nbits{bits}_acc{acc}"]
                s[f"ratio_{bits}b_acc{acc}"] = ours / theirs if ours and theirs else None
            ours_best = min(x for x in (s[f"mbq{sl}_acc0"], s[f"mbq{sl}_acc4"]) if x)
            theirs_best = min(x for x in (s[f"nbits{bits}_acc0"], s[f"nbits{bits}_acc4"]) if x)
            s[f"ratio_{bits}b_best"] = ours_best / theirs_best
        out.append(s)
    return out


def markdown(report: dict) -> str:
    def f(x: float | None, fmt: str = "{:.2f}") -> str:
        return "–" if x is None else fmt.format(x)

    lines = [
        "| cpu | K×N | M | ours float 1 / 2 / 3 sl | ours int8 1 / 2 / 3 sl | MatMulNBits 4b acc0 / acc4 "
        "| 8b acc0 / acc4 | ours/NBits 4b: acc0 / acc4 / best | 8b: acc0 / acc4 / best |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary_rows(report["results"]):
        lines.append(
            f"| {s['cpu']} | {s['K']}×{s['N']} | {s['M']} | "
            f"{f(s['mbq1_acc0'])} / {f(s['mbq2_acc0'])} / {f(s['mbq3_acc0'])} | "
            f"{f(s['mbq1_acc4'])} / {f(s['mbq2_acc4'])} / {f(s['mbq3_acc4'])} | "
            f"{f(s['nbits4_acc0'])} / {f(s['nbits4_acc4'])} | "
            f"{f(s['nbits8_acc0'])} / {f(s['nbits8_acc4'])} | "
            f"{f(s['ratio_4b_acc0'])} / {f(s['ratio_4b_acc4'])} / {f(s['ratio_4b_best'])} | "
            f"{f(s['ratio_8b_acc0'])} / {f(s['ratio_8b_acc4'])} / {f(s['ratio_8b_best'])} |"
        )
    paths = sorted(
        {(r["cpu"], r["variant"], r["M"], r["path"]) for r in report["results"] if r["op"] == "matmulnbits"}
    )
    path_text = "; ".join(f"{c} {v} M={m}: {p}" for c, v, m, p in paths if m == 1 or "acc4" in v)
    return (
        "Dynamic AArch64 instructions per weight (per call / (K·N)) under qemu-user, one thread; "
        f"MixedBitMatMul kernel table(s): {', '.join(sorted(set(report['kernels'].values())))}; "
        "ratio < 1: ours executes fewer instructions.\n"
        f"MatMulNBits paths seen: {path_text}.\n\n" + "\n".join(lines)
    )


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summary_rows(report["results"])
    cpus = report["cpus"]
    ms = sorted({s["M"] for s in summary})
    series = [
        ("mbq1_acc0", "ours float 1 sl"),
        ("mbq3_acc0", "ours float 3 sl"),
        ("mbq1_acc4", "ours int8 1 sl"),
        ("mbq2_acc4", "ours int8 2 sl"),
        ("mbq3_acc4", "ours int8 3 sl"),
        ("nbits4_acc0", "MatMulNBits 4b acc0"),
        ("nbits4_acc4", "MatMulNBits 4b acc4"),
        ("nbits8_acc0", "MatMulNBits 8b acc0"),
        ("nbits8_acc4", "MatMulNBits 8b acc4"),
    ]
    fig, axes = plt.subplots(len(cpus), len(ms), figsize=(7 * len(ms), 4.2 * len(cpus) + 1), squeeze=False)
    for row, cpu in zip(axes, cpus, strict=True):
        for ax, m in zip(row, ms, strict=True):
            sub = [s for s in summary if s["M"] == m and s["cpu"] == cpu]
            x = np.arange(len(sub))
            width = 0.8 / len(series)
            for i, (key, label) in enumerate(series):
                ax.bar(x + i * width, [s[key] or 0 for s in sub], width, label=label)
            ax.set_xticks(x + 0.4 - width / 2, [f"{s['K']}×{s['N']}" for s in sub], rotation=20)
            ax.set_yscale("log")
            ax.set_ylabel("instructions per weight (log)")
            ax.set_title(
                f"M={m} ({'decode' if m == 1 else 'prefill'}), qemu -cpu {cpu} ({report['kernels'][cpu]})"
            )
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8)
    fig.suptitle(
        "Dynamic instructions per weight under qemu-user: MixedBitMatMul [4,2,2] g128 vs MatMulNBits (MLAS)"
    )
    fig.tight_layout(rect=(0, 0.07 if len(cpus) == 1 else 0.04, 1, 1))
    with replace_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
    except OSError:
        return "?"
    return out.splitlines()[0] if out else "?"


def arm64_ort_version(build: Build) -> str:
    """The arm64 ORT the runner links: ``onnxruntime-node`` version from the SDK's sdk.json."""
    cache = (build.lib.parent / "CMakeCache.txt").read_text()
    m = re.search(r"^ORT_INCLUDE_DIR:\w+=(.*)$", cache, re.M)
    if m:
        sdk = Path(m.group(1)).parent / "sdk.json"
        if sdk.is_file():
            meta = json.loads(sdk.read_text())
            return f"{meta.get('onnxruntime-node', '?')} (npm onnxruntime-node, linux/arm64)"
    return "?"


def parse_shapes(text: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in (s.split("x") for s in text.split(","))]


def run(args: argparse.Namespace) -> dict:
    t_start = time.perf_counter()
    print(
        "bench_arm_insn: building (tools/build_ops.py --flavour aarch64, plugin, check program)", flush=True
    )
    build = build_all()
    shapes = (
        parse_shapes(args.shapes)
        if args.shapes
        else QUICK_SHAPES
        if args.quick
        else SMOLLM_SHAPES + LLAMA_SHAPES
    )
    ms = [int(x) for x in args.ms.split(",")] if args.ms else [1] if args.quick else [1, 16]
    nodes = [int(x) for x in args.nodes.split(",")] if args.nodes else [1, 2, 4] if args.quick else [1, 2]
    if len(nodes) < 2 or sorted(set(nodes)) != nodes or nodes[0] < 1:
        raise SystemExit("bench_arm_insn: --nodes needs at least two increasing counts, e.g. 1,2")
    cpus = args.cpu.split(",") if args.cpu else ["cortex-a76"] if args.quick else ["cortex-a76", "cortex-a53"]
    for cpu in cpus:
        if cpu not in CPU_KERNEL:
            raise SystemExit(f"bench_arm_insn: unknown --cpu {cpu} (one of {', '.join(CPU_KERNEL)})")
    rng = np.random.default_rng(0)
    reruns = 0
    results: list[dict] = []
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="arm_insn_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        check = check_counter(build, CHECK_CPU, work, 100_000)
        timings["counter_check"] = time.perf_counter() - t0
        print(
            f"bench_arm_insn: counter check exact (loop deltas {check['scalar_loop_delta']['counted']} = 3N, "
            f"{check['sdot_loop_delta']['counted']} = 4N; whole program "
            f"{check['whole_program_vs_qemu_exec_log']['plugin_total']} = qemu exec log "
            f"{check['whole_program_vs_qemu_exec_log']['exec_log_total']})",
            flush=True,
        )
        for cpu in cpus:
            for i, (k, n) in enumerate(shapes):
                t0 = time.perf_counter()
                root = work / f"{cpu}_{k}x{n}"
                cases = write_cases(root, k, n, ms, nodes, rng)
                done = [0]

                def progress(
                    done: list = done, total: int = len(cases), cpu: str = cpu, k: int = k, n: int = n
                ):
                    done[0] += 1
                    elapsed = time.perf_counter() - t_start
                    print(
                        f"  [{cpu} {k}x{n}] case {done[0]}/{total}  ({elapsed:.0f} s elapsed)",
                        file=sys.stderr,
                        flush=True,
                    )

                print(
                    f"bench_arm_insn: -cpu {cpu} shape {i + 1}/{len(shapes)} {k}x{n}: {len(cases)} cases, "
                    f"M={ms}, nodes={nodes}",
                    flush=True,
                )
                counts = root / "counts.jsonl"
                run_cases(
                    build, cpu, CPU_KERNEL[cpu], [c.dir for c in cases], counts, args.repeat, work, progress
                )
                windows, _ = read_counts(counts)
                for _ in range(RERUNS):
                    # Cases without one exclusive measured window (another guest thread woke up inside them
                    # every time) run once more, in a fresh process.
                    redo = [i for i in range(len(cases)) if not exclusive_measured(windows, i)]
                    if not redo:
                        break
                    print(f"  rerunning {len(redo)} case(s) without an exclusive window", file=sys.stderr)
                    reruns += len(redo)
                    again = root / f"counts_rerun{reruns}.jsonl"
                    dirs = [cases[i].dir for i in redo]
                    run_cases(build, cpu, CPU_KERNEL[cpu], dirs, again, args.repeat, work, lambda: None)
                    new, _ = read_counts(again)
                    for j, i in enumerate(redo):
                        for t in [t for t in windows if t >> 16 == i]:
                            del windows[t]
                        windows.update({(i << 16) | (t & 0xFFFF): w for t, w in new.items() if t >> 16 == j})
                results += analyse(cases, windows, cpu, CPU_KERNEL[cpu], nodes)
                timings[f"{cpu} {k}x{n}"] = time.perf_counter() - t0
                shutil.rmtree(root)
    return {
        "tool": "tools/bench_arm_insn.py",
        "what": "dynamic AArch64 instructions executed per call of one op node, counted under qemu-user",
        "method": (
            "QEMU TCG plugin (custom_ops/tools/insn_count_plugin.c): inline per-translation-block counters, "
            "summed between marker syscalls that mbq_run_model --mark puts around each session.Run; "
            f"per-op cost = (count with {nodes[1]} nodes - count with {nodes[0]}) / {nodes[1] - nodes[0]}, "
            "fewest of the measured runs (the first run of a session is a warm-up); one intra-op thread"
        ),
        "machine": {
            "host": platform.platform(),
            "host_processor": platform.processor() or platform.machine(),
            "qemu": _first_line([QEMU, "--version"]),
            "cross_compiler": _first_line(["aarch64-linux-gnu-g++", "--version"]),
            "arm64_onnxruntime": arm64_ort_version(build),
        },
        "cpus": cpus,
        "kernels": {cpu: CPU_KERNEL[cpu] for cpu in cpus},
        "group_size": GROUP,
        "slice_bits": list(BITS),
        "shapes": [list(s) for s in shapes],
        "ms": ms,
        "nodes": nodes,
        "repeat": args.repeat,
        "quick": bool(args.quick),
        "counter_check": check,
        "reruns": reruns,
        "results": results,
        "summary": summary_rows(results),
        "elapsed_s": {**timings, "total": time.perf_counter() - t_start},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="one shape (576x192), M=1, nodes 1,2,4 (< 1 min)"
    )
    parser.add_argument("--shapes", help="comma-separated KxN list instead of the default shapes")
    parser.add_argument("--ms", help="comma-separated row counts M (default 1,16; quick: 1)")
    parser.add_argument(
        "--cpu",
        help="qemu -cpu model(s), comma-separated (default cortex-a76,cortex-a53; quick: cortex-a76). "
        "cortex-a76: ARMv8.2 + DotProd, a phone big core; cortex-a53: ARMv8.0, no DotProd",
    )
    parser.add_argument("--nodes", help="op copies per model, increasing (default 1,2; quick: 1,2,4)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="session runs per case, the first a warm-up (default 3)"
    )
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "reports")
    args = parser.parse_args()
    if args.repeat < 2:
        raise SystemExit("bench_arm_insn: --repeat must be at least 2 (one warm-up run + measured runs)")
    reason = missing_requirement()
    if reason:
        raise SystemExit(f"bench_arm_insn: {reason}")
    report = run(args)
    write_file(args.out_dir / "arm_insn.json", json.dumps(report, indent=1) + "\n")
    plot(report, args.out_dir / "arm_insn.png")
    print(markdown(report))
    print(
        f"\nwrote {args.out_dir / 'arm_insn.json'} and {args.out_dir / 'arm_insn.png'} "
        f"({report['elapsed_s']['total']:.0f} s)"
    )


if __name__ == "__main__":
    main()
