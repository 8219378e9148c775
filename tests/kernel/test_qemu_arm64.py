"""MixedBitMatMul (and RouterCounts) on linux-aarch64: the NEON kernels in the real arm64 ONNX Runtime,
under qemu-user.

Cross builds ``libmbq_ops.so`` and the ``mbq_run_model`` driver (``tools/build_ops.py --flavour
aarch64``), writes the kernel correctness cases (``cases.py``: every slice configuration and
count, mixed per-row counts, ragged K, leading dims; plus the golden vector and int8-activation
cases) as model + ``.npy`` inputs, runs them with ``qemu-aarch64`` against the arm64
``libonnxruntime.so`` of the ORT SDK and compares with the float64 NumPy reference.

qemu emulates a named CPU: ``cortex-a53`` (ARMv8.0, no dot product) runs the plain NEON table,
``max`` (every feature qemu knows, incl. DotProd) the ``neon_dotprod`` one. ``MBQ_KERNEL`` forces
a table; the library refuses a table the CPU cannot run, so a forced run is proof of the path.

ORT's cpuinfo crashes on the host's CPU topology under qemu, so each run happens in a private
mount namespace with a one-CPU ``/sys/devices/system/cpu`` (needs root, as in CI).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from cases import SLICE_CONFIGS, Case, Weights, make_model, standard_cases
from router_cases import assert_counts_match
from router_cases import fuzz_cases as router_fuzz_cases

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from qemu_arm64 import FAKE_CPU_SCRIPT, QEMU, SYSROOT, missing_requirement

from mbq_onnx.quant.reference import mixed_bit_matmul
from mbq_onnx.quant.spec import QuantSpec

pytestmark = pytest.mark.qemu

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN = REPO_ROOT / "tests" / "golden" / "packed_layout.json"
CPU_V80 = "cortex-a53"  # ARMv8.0-A: NEON, no DotProd
CPU_MAX = "max"  # all features qemu emulates, incl. DotProd
# onnx writes its newest IR version; the SDK's arm64 ORT (1.30) reads up to IR 13, opset 20 needs >= 9.
IR_VERSION = 10
FLOAT_TOL = 2e-5  # max abs error / output scale, float32 kernels vs float64 reference (as on x86)
Q8_TOL = 3e-2  # int8 activations vs the float64 reference


_REASON = missing_requirement()
if _REASON:
    pytest.skip(_REASON, allow_module_level=True)


@pytest.fixture(scope="module")
def arm64_build() -> tuple[Path, Path]:
    """(libmbq_ops.so, mbq_run_model) cross built for linux-aarch64."""
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "build_ops.py"), "--flavour", "aarch64"]
    lib = Path(
        subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
    )
    runner = lib.parent / "mbq_run_model"
    assert lib.is_file() and runner.is_file(), f"aarch64 build did not produce {lib} and {runner}"
    return lib, runner


def golden_cases() -> list[Case]:
    """The packed-layout golden vectors as cases: wire bytes and expected Y straight from the file."""
    cases = []
    for i, g in enumerate(json.loads(GOLDEN.read_text())["cases"]):
        spec = QuantSpec(tuple(g["slice_bits"]), g["group_size"])
        packed = np.frombuffer(bytes.fromhex(g["packed_hex"]), np.uint8)
        w = Weights(
            spec,
            g["N"],
            g["K"],
            packed,
            np.asarray(g["scales"], np.float32),
            np.asarray(g["zeros"], np.uint8),
        )
        feeds = {"A": np.asarray(g["A"], np.float32), "slice_count": np.asarray(g["slice_count"], np.int64)}
        cases.append(Case(f"golden{i}", make_model(w), feeds, np.asarray(g["Y"], np.float64)))
    return cases


def int8_cases(seed: int = 9) -> list[Case]:
    """accuracy_level=4 decode rows (int8 activations) for every slice configuration and count,
    groups of 16 (two groups per 32-value block) and 128, K=300 (ragged), N=70 (channel tail)."""
    rng = np.random.default_rng(seed)
    cases = []
    for bits in SLICE_CONFIGS:
        for group in (16, 128):
            spec = QuantSpec(bits, group)
            w = Weights.random(spec, 70, 300, rng)
            model = make_model(w, attrs={"accuracy_level": 4})
            a = rng.standard_normal((1, 300)).astype(np.float32)
            for count in range(1, spec.num_slices + 1):
                feeds = {"A": a, "slice_count": np.array([count], np.int64)}
                expected = mixed_bit_matmul(a, feeds["slice_count"], w.packed, w.scales, w.zeros, spec, 70)
                cases.append(
                    Case(f"q8_{'-'.join(map(str, bits))}_g{group}_count{count}", model, feeds, expected)
                )
    return cases


def write_cases(root: Path, cases: list[Case]) -> dict[str, tuple[Path, Case]]:
    """Serialize each case as ``<root>/<name>/model.onnx`` + ``inputs/<input>.npy``."""
    dirs = {}
    for case in cases:
        d = root / case.name
        (d / "inputs").mkdir(parents=True)
        model = onnx.ModelProto()
        model.CopyFrom(case.model)
        model.ir_version = min(model.ir_version, IR_VERSION)
        onnx.save(model, d / "model.onnx")
        for name, value in case.feeds.items():
            np.save(d / "inputs" / f"{name}.npy", value)
        dirs[case.name] = (d, case)
    return dirs


@pytest.fixture(scope="module")
def case_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Case]]:
    return write_cases(tmp_path_factory.mktemp("arm64_cases"), [*golden_cases(), *standard_cases(seed=1)])


@pytest.fixture(scope="module")
def q8_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Case]]:
    return write_cases(tmp_path_factory.mktemp("arm64_q8_cases"), int8_cases())


@pytest.fixture(scope="module")
def router_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Case]]:
    """RouterCounts fuzz cases (one feed per model: 54 cases)."""
    return write_cases(tmp_path_factory.mktemp("arm64_router_cases"), router_fuzz_cases(seed=1, per_model=1))


def run_arm64(
    build: tuple[Path, Path],
    dirs: list[Path],
    tmp_path: Path,
    *,
    kernel: str | None,
    cpu: str,
    threads: int = 1,
    outputs: str = "outputs",
) -> str:
    """Run ``mbq_run_model`` on ``dirs`` under ``qemu-aarch64 -cpu CPU`` in a private mount namespace,
    with ``MBQ_KERNEL=kernel`` (None: the library chooses); return the runner's stdout."""
    lib, runner = build
    fake_cpu = tmp_path / "fake_cpu"
    fake_cpu.mkdir(exist_ok=True)
    cmd = ["unshare", "-m", "--", "sh", "-c", FAKE_CPU_SCRIPT, "sh", str(fake_cpu)]
    cmd += [QEMU, "-L", SYSROOT, "-cpu", cpu, str(runner), "--ops", str(lib), "--threads", str(threads)]
    cmd += ["--outputs", outputs, *map(str, dirs)]
    env = {k: v for k, v in os.environ.items() if k != "MBQ_KERNEL"}
    if kernel:
        env["MBQ_KERNEL"] = kernel
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, (
        f"arm64 runner failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )
    return proc.stdout


def load_outputs(
    dirs: dict[str, tuple[Path, Case]], stdout: str, outputs: str = "outputs"
) -> dict[str, np.ndarray]:
    """Each case's ``Y``; fails listing every case the runner reported as an error."""
    errors = [
        f"{name}: {(d / outputs / 'error.txt').read_text().strip()}"
        for name, (d, _) in dirs.items()
        if f"{d}: ok" not in stdout
    ]
    assert not errors, "arm64 runs failed:\n" + "\n".join(errors)
    return {name: np.load(d / outputs / "Y.npy") for name, (d, _) in dirs.items()}


def relative_error(y: np.ndarray, expected: np.ndarray) -> float:
    assert y.shape == expected.shape and y.dtype == np.float32, (y.shape, y.dtype, expected.shape)
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-6)
    return float(np.abs(y.astype(np.float64) - expected).max(initial=0.0)) / scale


def assert_match_reference(dirs: dict[str, tuple[Path, Case]], stdout: str, tol: float = FLOAT_TOL) -> None:
    ys = load_outputs(dirs, stdout)
    errs = {name: relative_error(ys[name], case.expected) for name, (_, case) in dirs.items()}
    bad = [f"{name}: max error {e:.3g} of the output scale" for name, e in errs.items() if not e <= tol]
    assert not bad, "arm64 outputs differ from the NumPy reference:\n" + "\n".join(bad)


@pytest.mark.parametrize("threads", [1, 2])
def test_neon_matches_reference(arm64_build, case_dirs, tmp_path, threads):
    """Plain NEON (ARMv8.0 CPU, MBQ_KERNEL=neon) agrees with the reference on every case, on one
    thread and split over ORT's intra-op pool."""
    dirs = [d for d, _ in case_dirs.values()]
    stdout = run_arm64(arm64_build, dirs, tmp_path, kernel="neon", cpu=CPU_V80, threads=threads)
    assert_match_reference(case_dirs, stdout)


def test_dotprod_table_matches_reference(arm64_build, case_dirs, tmp_path):
    """The neon_dotprod table (DotProd CPU) agrees with the reference on every case."""
    stdout = run_arm64(
        arm64_build, [d for d, _ in case_dirs.values()], tmp_path, kernel="neon_dotprod", cpu=CPU_MAX
    )
    assert_match_reference(case_dirs, stdout)


@pytest.mark.parametrize("cpu", [CPU_V80, CPU_MAX])
def test_auto_dispatch(arm64_build, case_dirs, tmp_path, cpu):
    """Without MBQ_KERNEL the library picks the best table for the emulated CPU and still matches."""
    subset = {
        n: v for n, v in case_dirs.items() if n.startswith(("golden", "g16", "g128", "4-2-2", "2-2-2-2"))
    }
    stdout = run_arm64(arm64_build, [d for d, _ in subset.values()], tmp_path, kernel=None, cpu=cpu)
    assert_match_reference(subset, stdout)


def test_int8_activation_path(arm64_build, q8_dirs, tmp_path):
    """accuracy_level=4 decode: NEON (widening multiplies) and DotProd (SDOT) match the portable
    table on the same int8 activations, and all stay within activation-quantization error of the
    float64 reference (but are not the float result)."""
    dirs = [d for d, _ in q8_dirs.values()]
    runs = {"ref": CPU_V80, "neon": CPU_V80, "neon_dotprod": CPU_MAX}
    ys = {}
    for kernel, cpu in runs.items():
        stdout = run_arm64(arm64_build, dirs, tmp_path, kernel=kernel, cpu=cpu, outputs=f"out_{kernel}")
        ys[kernel] = load_outputs(q8_dirs, stdout, f"out_{kernel}")
    bad = []
    for name, (_, case) in q8_dirs.items():
        ref = ys["ref"][name]
        err_ref = relative_error(ref, case.expected)
        if not 1e-6 < err_ref <= Q8_TOL:
            bad.append(f"{name}: ref table error {err_ref:.3g} of the output scale")
        scale = max(float(np.abs(case.expected).max()), 1e-6)
        for kernel in ("neon", "neon_dotprod"):
            diff = float(np.abs(ys[kernel][name] - ref).max()) / scale
            if not diff <= FLOAT_TOL:
                bad.append(f"{name}: {kernel} differs from ref by {diff:.3g} of the output scale")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(("kernel", "cpu"), [("neon_dotprod", CPU_V80), ("avx2", CPU_MAX)])
def test_unavailable_kernel_is_refused(arm64_build, case_dirs, tmp_path, kernel, cpu):
    """MBQ_KERNEL naming a table this CPU cannot run fails clearly instead of running something else:
    DotProd is detected from the CPU (HWCAP), and x86 tables do not exist on arm64."""
    d, _ = case_dirs["golden0"]
    stdout = run_arm64(arm64_build, [d], tmp_path, kernel=kernel, cpu=cpu, outputs="out_refused")
    assert f"{d}: error:" in stdout, stdout
    message = (d / "out_refused" / "error.txt").read_text()
    assert "MixedBitMatMul: MBQ_KERNEL names a kernel that is not available" in message, message


@pytest.mark.parametrize("threads", [1, 2])
def test_router_counts_matches_reference(arm64_build, router_dirs, tmp_path, threads):
    """RouterCounts (portable row loop, NEON by auto-vectorisation) on arm64 agrees with the float64
    reference on every fuzz case, on one thread and split over ORT's intra-op pool."""
    stdout = run_arm64(
        arm64_build, [d for d, _ in router_dirs.values()], tmp_path, kernel=None, cpu=CPU_V80, threads=threads
    )
    errors = [
        f"{name}: {(d / 'outputs' / 'error.txt').read_text().strip()}"
        for name, (d, _) in router_dirs.items()
        if f"{d}: ok" not in stdout
    ]
    assert not errors, "arm64 runs failed:\n" + "\n".join(errors)
    for name, (d, case) in router_dirs.items():
        assert_counts_match(name, np.load(d / "outputs" / "counts.npy"), case)
