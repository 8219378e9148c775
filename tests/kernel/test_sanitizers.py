"""The kernel test suite again, against the AddressSanitizer + UndefinedBehaviorSanitizer build.

Builds ``tools/build_ops.py --flavour asan`` (``-fsanitize=address,undefined``, no recovery) and
runs ``pytest tests/kernel`` (minus the qemu and sanitizer modules) in a child Python with the
ASan runtime preloaded and ``MBQ_OPS_LIB`` pointing at the sanitized library. Any sanitizer
report aborts the child, so the test fails with the report in its message.

Run it by hand the same way::

    python tools/build_ops.py --flavour asan
    LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so.6)" \\
        ASAN_OPTIONS=detect_leaks=0 MBQ_OPS_LIB=build-asan/libmbq_ops.so \\
        python -m pytest tests/kernel -m "not qemu" --capture=sys -p no:faulthandler
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
KERNEL_TESTS = Path(__file__).resolve().parent
# Set in the child run so that this module does not recurse into itself.
CHILD_FLAG = "MBQ_SANITIZER_CHILD"

if os.environ.get(CHILD_FLAG):
    pytest.skip("already running inside the sanitizer child run", allow_module_level=True)
if not sys.platform.startswith("linux") or shutil.which("cmake") is None:
    pytest.skip("needs Linux with cmake and a GCC/Clang toolchain", allow_module_level=True)


def _cmake_cxx(build_dir: Path) -> str:
    """The C++ compiler CMake used for ``build_dir`` (its ASan runtime is the one to preload)."""
    for line in (build_dir / "CMakeCache.txt").read_text().splitlines():
        if line.startswith("CMAKE_CXX_COMPILER:"):
            return line.split("=", 1)[1]
    return "c++"


def sanitizer_preload(build_dir: Path) -> str:
    """``LD_PRELOAD`` value for a Python that loads a library from ``build_dir``: the ASan runtime of the
    compiler that built it, and its libstdc++ (Python does not link libstdc++; without it preloaded ASan
    cannot intercept ``__cxa_throw`` and aborts at the first C++ exception)."""
    cxx = _cmake_cxx(build_dir)
    paths = []
    for name in ("libasan.so", "libstdc++.so.6"):
        out = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True, check=True)
        path = Path(out.stdout.strip())
        if not path.is_absolute() or not path.exists():
            pytest.fail(
                f"{cxx} does not know {name} (got {out.stdout.strip()!r}); install its runtime "
                "(Debian: libasan8 and libstdc++6, pulled in by g++)"
            )
        paths.append(str(path.resolve()))
    return " ".join(paths)


def sanitizer_report(output: str) -> str:
    """The first sanitizer report in ``output`` (or its tail when there is none)."""
    for marker in ("ERROR: AddressSanitizer", "AddressSanitizer:", "runtime error:"):
        at = output.find(marker)
        if at >= 0:
            start = output.rfind("\n", 0, at) + 1
            return output[start : start + 6000]
    return output[-6000:]


@pytest.fixture(scope="module")
def asan_lib() -> Path:
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "build_ops.py"), "--flavour", "asan"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    lib = Path(out.strip().splitlines()[-1])
    assert lib.is_file(), f"asan build did not produce {lib}"
    return lib


def run_suite_sanitized(lib: Path, *pytest_args: str) -> subprocess.CompletedProcess[str]:
    """``pytest tests/kernel`` in a child process that loads ``lib`` under ASan + UBSan."""
    env = {
        **os.environ,
        CHILD_FLAG: "1",
        "MBQ_OPS_LIB": str(lib),
        "LD_PRELOAD": sanitizer_preload(lib.parent),
        # Python and ORT are not instrumented: their leaks at exit are not ours.
        "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:abort_on_error=0:allocator_may_return_null=0",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    }
    # --capture=sys and no faulthandler: a sanitizer report is written to fd 2 right before the process
    # aborts; fd-level capture would swallow it and Python's SIGSEGV handler would pre-empt ASan's.
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(KERNEL_TESTS),
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:faulthandler",
        "--capture=sys",
        "-m",
        "not qemu",
        "--ignore",
        str(KERNEL_TESTS / "test_qemu_arm64.py"),
        "--ignore",
        str(Path(__file__).resolve()),
        *pytest_args,
    ]
    return subprocess.run(
        cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800, check=False
    )


def _assert_clean(proc: subprocess.CompletedProcess[str]) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode != 5, f"the sanitizer run collected no kernel tests:\n{output[-4000:]}"
    assert proc.returncode == 0, (
        f"kernel tests failed under ASan/UBSan (exit {proc.returncode}):\n{sanitizer_report(output)}"
    )
    assert "AddressSanitizer" not in output and "runtime error:" not in output, sanitizer_report(output)


def test_router_counts_under_asan_ubsan(asan_lib):
    """The RouterCounts tests alone (fuzz cases, errors, zero rows, threads) with the sanitized library:
    a quick check of that op (``-k router``); the full suite below runs them again."""
    _assert_clean(run_suite_sanitized(asan_lib, "-k", "router"))


def test_kernel_suite_under_asan_ubsan(asan_lib):
    """Every kernel test (MixedBitMatMul and RouterCounts) passes with the sanitized library and no
    sanitizer reports."""
    _assert_clean(run_suite_sanitized(asan_lib))
