#!/usr/bin/env python3
"""Configure and build the ``libmbq_ops`` custom-op library with CMake.

Flavours (one table, extend it rather than the code):

- ``release`` (default): ``build/``, Release, installed to ``mbq_onnx/lib/libmbq_ops.so``
  (the path :func:`mbq_onnx.ops_lib.library_path` loads by default).
- ``asan``: ``build-asan/``, AddressSanitizer + UndefinedBehaviorSanitizer, not installed;
  load it with ``MBQ_OPS_LIB=build-asan/libmbq_ops.so`` and ``LD_PRELOAD`` of the sanitizer runtime.
- ``aarch64``: ``build-aarch64/``, linux-aarch64 cross build (``custom_ops/cmake/aarch64-linux-gnu.cmake``)
  plus the ``mbq_run_model`` driver linked against the SDK's arm64 ``libonnxruntime.so``; run under qemu-user.

ORT headers come from ``$ORT_INCLUDE_DIR`` if set, else from ``tools/fetch_ort_sdk.py``
(``<repo>/.cache/ort_sdk/include``). Prints the built library path on stdout.

Usage: ``python tools/build_ops.py [--asan | --flavour NAME] [--jobs N]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = REPO_ROOT / "custom_ops"
LIB_NAME = "libmbq_ops.so"
AARCH64_TOOLCHAIN = SOURCE_DIR / "cmake" / "aarch64-linux-gnu.cmake"


@dataclass(frozen=True)
class Flavour:
    """One build configuration: its build dir, CMake arguments and (optionally) where to install the .so."""

    build_dir: str
    cmake_args: tuple[str, ...]
    install_to: str | None = None
    env: dict[str, str] = field(default_factory=dict)


FLAVOURS: dict[str, Flavour] = {
    "release": Flavour("build", ("-DCMAKE_BUILD_TYPE=Release",), install_to=f"mbq_onnx/lib/{LIB_NAME}"),
    "asan": Flavour("build-asan", ("-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DMBQ_SANITIZE=ON")),
    # linux-aarch64 cross build (Debian g++-aarch64-linux-gnu) + the mbq_run_model test driver, for qemu-user.
    "aarch64": Flavour(
        "build-aarch64",
        (
            "-DCMAKE_BUILD_TYPE=Release",
            "-DMBQ_BUILD_RUNNER=ON",
            f"-DCMAKE_TOOLCHAIN_FILE={AARCH64_TOOLCHAIN}",
        ),
    ),
}


def ort_include_dir() -> Path:
    """ORT C/C++ header directory: ``$ORT_INCLUDE_DIR`` or the fetched SDK's ``include/``."""
    env = os.environ.get("ORT_INCLUDE_DIR")
    if env:
        path = Path(env)
    else:
        out = (
            subprocess.run(
                [sys.executable, str(REPO_ROOT / "tools" / "fetch_ort_sdk.py")],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            )
            .stdout.strip()
            .splitlines()
        )
        path = Path(out[-1]) / "include"
    if not (path / "onnxruntime_cxx_api.h").is_file():
        raise SystemExit(
            f"build_ops: onnxruntime_cxx_api.h not found in {path} (set ORT_INCLUDE_DIR or run "
            f"tools/fetch_ort_sdk.py)"
        )
    return path


def build(name: str, jobs: int) -> Path:
    """Configure + build flavour ``name``; install it if the flavour says so; return the library path."""
    flavour = FLAVOURS[name]
    if shutil.which("cmake") is None:
        raise SystemExit("build_ops: cmake not found (Debian: apt-get install cmake g++)")
    build_dir = REPO_ROOT / flavour.build_dir
    env = {**os.environ, **flavour.env}
    configure = [
        "cmake",
        "-S",
        str(SOURCE_DIR),
        "-B",
        str(build_dir),
        f"-DORT_INCLUDE_DIR={ort_include_dir()}",
        *flavour.cmake_args,
    ]
    subprocess.run(configure, check=True, env=env, stdout=sys.stderr)
    subprocess.run(
        ["cmake", "--build", str(build_dir), "-j", str(jobs)], check=True, env=env, stdout=sys.stderr
    )
    lib = build_dir / LIB_NAME
    if flavour.install_to:
        dest = REPO_ROOT / flavour.install_to
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=".tmp-", delete=False) as tmp:
            shutil.copyfile(lib, tmp.name)
        os.replace(tmp.name, dest)  # atomic: a running process keeps its mapped copy
        lib = dest
    return lib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--asan", action="store_const", const="asan", dest="flavour", help="ASan+UBSan build")
    group.add_argument("--flavour", choices=sorted(FLAVOURS), help="build flavour (default: release)")
    parser.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    print(build(args.flavour or "release", args.jobs))


if __name__ == "__main__":
    main()
