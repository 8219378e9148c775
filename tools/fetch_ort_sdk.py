#!/usr/bin/env python3
"""Fetch the ONNX Runtime SDK (C/C++ headers, linux-arm64 runtime, Android AAR) from npm.

PyPI ``onnxruntime`` ships the runtime library but no headers, and no arm64/Android builds
for cross compiling. Two npm packages carry what the custom-op library needs:

- ``com.github.asus4.onnxruntime`` holds ``Plugins/Android/onnxruntime.aar``, whose
  ``headers/`` are the C/C++ API (incl. ``onnxruntime_lite_custom_op.h``), ``jni/<abi>/``
  the Android runtime and ``classes.jar`` the Java API;
- ``onnxruntime-node`` holds a glibc linux-arm64 ``libonnxruntime.so.1``.

The tarballs are fetched with ``npm pack NAME@VERSION`` into ``<cache>/npm/`` and unpacked
into ``<cache>/ort_sdk/``::

    include/                          C/C++ API headers
    linux-arm64/lib/libonnxruntime.so.1 (+ libonnxruntime.so symlink)
    android/onnxruntime.aar           the AAR as published
    android/classes.jar               Java API (ai.onnxruntime)
    android/jni/arm64-v8a/*.so        Android arm64 runtime + JNI bridge
    sdk.json                          versions (also the completeness stamp)

``--headers`` fetches only what compiling ``libmbq_ops`` needs (the package build,
``custom_ops/CMakeLists.txt``, runs it): the AAR's headers into ``<cache>/ort_headers/include``
(stamp ``headers.json``), or the full SDK's ``include/`` when that is already there; it prints
the include directory.

``<cache>`` is ``$MBQ_CACHE_DIR`` if set, else ``<repo>/.cache`` in a git checkout, else (an
unpacked sdist being built into a wheel) ``${XDG_CACHE_HOME:-~/.cache}/mbq-onnx``. Setting
``$MBQ_ORT_SDK`` to an existing SDK directory skips fetching altogether. The script is idempotent (the stamp
records the package versions) and atomic (unpacks into a temporary sibling, then renames).
It prints the SDK directory on stdout; progress goes to stderr.

Usage: ``python tools/fetch_ort_sdk.py [--headers] [--force]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ASUS4_PACKAGE = ("com.github.asus4.onnxruntime", "0.4.9")
NODE_PACKAGE = ("onnxruntime-node", "1.30.0")
ANDROID_ABI = "arm64-v8a"
STAMP_NAME = "sdk.json"
HEADERS_STAMP_NAME = "headers.json"
REPO_ROOT = Path(__file__).resolve().parent.parent

# Files an SDK directory must hold to be usable (relative to the SDK root).
REQUIRED_FILES = (
    "include/onnxruntime_c_api.h",
    "include/onnxruntime_cxx_api.h",
    "include/onnxruntime_lite_custom_op.h",
    "linux-arm64/lib/libonnxruntime.so",
    f"android/jni/{ANDROID_ABI}/libonnxruntime.so",
    "android/classes.jar",
    "android/onnxruntime.aar",
)
# The subset a headers-only directory holds (what compiling libmbq_ops includes).
REQUIRED_HEADERS = tuple(rel for rel in REQUIRED_FILES if rel.startswith("include/"))


class SdkError(RuntimeError):
    """The ORT SDK could not be fetched or is incomplete."""


def _log(msg: str) -> None:
    print(f"[fetch_ort_sdk] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    """The cache root: ``$MBQ_CACHE_DIR``, else ``<repo>/.cache`` in a git checkout, else the user's cache
    (``${XDG_CACHE_HOME:-~/.cache}/mbq-onnx``: an unpacked sdist is a throwaway directory)."""
    env = os.environ.get("MBQ_CACHE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    if (REPO_ROOT / ".git").exists():
        return REPO_ROOT / ".cache"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache").expanduser().resolve() / "mbq-onnx"


def _expected_stamp() -> dict[str, str]:
    return {
        "layout": "1",
        ASUS4_PACKAGE[0]: ASUS4_PACKAGE[1],
        NODE_PACKAGE[0]: NODE_PACKAGE[1],
    }


def missing_files(sdk: Path, required: tuple[str, ...] = REQUIRED_FILES) -> list[str]:
    """Required files (default: the full SDK's) absent from ``sdk`` (empty when complete)."""
    return [rel for rel in required if not (sdk / rel).exists()]


def _stamp_ok(sdk: Path) -> bool:
    try:
        stamp = json.loads((sdk / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return False
    return all(stamp.get(k) == v for k, v in _expected_stamp().items()) and not missing_files(sdk)


def _headers_stamp_ok(headers: Path) -> bool:
    try:
        stamp = json.loads((headers / HEADERS_STAMP_NAME).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get(ASUS4_PACKAGE[0]) == ASUS4_PACKAGE[1] and not missing_files(headers, REQUIRED_HEADERS)


def npm_pack(name: str, version: str, dest: Path) -> Path:
    """Fetch ``name@version`` as a tarball into ``dest`` with ``npm pack`` (reused if present)."""
    tarball = dest / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    if tarball.is_file():
        return tarball
    npm = shutil.which("npm")
    if npm is None:
        raise SdkError(
            "npm is not on PATH; it is needed to fetch the ONNX Runtime SDK "
            f"({name}@{version}). Install Node.js/npm, or point MBQ_ORT_SDK at an existing SDK dir."
        )
    dest.mkdir(parents=True, exist_ok=True)
    _log(f"npm pack {name}@{version} (large download, ~110-150 MB) ...")
    with tempfile.TemporaryDirectory(dir=dest, prefix=".npm-pack-") as tmp:
        proc = subprocess.run(
            [npm, "pack", f"{name}@{version}", "--pack-destination", tmp, "--json", "--silent"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise SdkError(
                f"`npm pack {name}@{version}` failed (exit {proc.returncode}):\n{proc.stderr.strip()}"
            )
        try:
            filename = json.loads(proc.stdout)[0]["filename"]
        except (ValueError, LookupError, TypeError) as exc:
            raise SdkError(
                f"`npm pack {name}@{version}` printed unexpected output: {proc.stdout[:500]!r}"
            ) from exc
        os.replace(Path(tmp) / filename, tarball)
    return tarball


def _copy_stream(src, dst: Path, mode: int = 0o644) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "wb") as out:
        shutil.copyfileobj(src, out, length=1 << 20)
    dst.chmod(mode)


def _extract_tar_members(tarball: Path, wanted: dict[str, Path]) -> None:
    """Copy the tar members named in ``wanted`` (member name -> destination file)."""
    remaining = dict(wanted)
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            dst = remaining.pop(member.name, None)
            if dst is None:
                continue
            src = tar.extractfile(member)
            if src is None:
                raise SdkError(f"{tarball.name}: {member.name} is not a regular file")
            _copy_stream(src, dst, 0o755 if member.name.endswith((".so", ".so.1")) else 0o644)
            if not remaining:
                break
    if remaining:
        raise SdkError(f"{tarball.name} lacks {sorted(remaining)}; is the pinned version right?")


def _unpack_aar(aar: Path, out: Path) -> None:
    """Unpack the AAR's headers, classes.jar and ``jni/<ANDROID_ABI>/`` under ``out``."""
    with zipfile.ZipFile(aar) as zf:
        names = zf.namelist()
        headers = [n for n in names if n.startswith("headers/") and not n.endswith("/")]
        if not headers:
            raise SdkError(f"{aar.name} has no headers/ directory")
        for name in headers:
            with zf.open(name) as src:
                _copy_stream(src, out / "include" / Path(name).name)
        jni = [n for n in names if n.startswith(f"jni/{ANDROID_ABI}/") and n.endswith(".so")]
        for name in [*jni, "classes.jar"]:
            with zf.open(name) as src:
                _copy_stream(src, out / "android" / name, 0o755 if name.endswith(".so") else 0o644)


def _ort_api_version(include: Path) -> int | None:
    for line in (include / "onnxruntime_c_api.h").read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[:2] == ["#define", "ORT_API_VERSION"]:
            return int(parts[2])
    return None


def _swap_in(new: Path, sdk: Path, current=_stamp_ok) -> None:
    """Rename ``new`` to ``sdk``, replacing a stale ``sdk``; if a concurrent run has just installed a
    ``current`` one there, keep that one (``new`` is then left for the caller to delete)."""
    try:
        if sdk.exists():  # stale or partial: move aside, swap in, then delete
            old = Path(tempfile.mkdtemp(dir=sdk.parent, prefix=f".{sdk.name}-old-"))
            os.replace(sdk, old / sdk.name)
            os.replace(new, sdk)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(new, sdk)
    except OSError:
        if not current(sdk):
            raise


def build_sdk(sdk: Path, npm_dir: Path) -> None:
    """Fetch both packages and unpack them into ``sdk`` atomically (temp dir, then rename)."""
    steps = [
        f"npm pack {ASUS4_PACKAGE[0]}",
        f"npm pack {NODE_PACKAGE[0]}",
        "unpack AAR",
        "unpack linux-arm64",
        "finish",
    ]
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(steps), desc="ORT SDK", unit="step", file=sys.stderr)
    except ImportError:  # tqdm is a runtime dependency, but keep the tool usable without it
        bar = None

    def step(i: int) -> None:
        """Mark step ``i`` as done and announce the next one."""
        if bar is not None:
            bar.update(1)
            if i + 1 < len(steps):
                bar.set_postfix_str(steps[i + 1])
        elif i + 1 < len(steps):
            _log(f"[{i + 2}/{len(steps)}] {steps[i + 1]}")

    if bar is not None:
        bar.set_postfix_str(steps[0])
    else:
        _log(f"[1/{len(steps)}] {steps[0]}")
    asus4_tgz = npm_pack(*ASUS4_PACKAGE, npm_dir)
    step(0)
    node_tgz = npm_pack(*NODE_PACKAGE, npm_dir)
    step(1)

    sdk.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=sdk.parent, prefix=f".{sdk.name}-tmp-"))
    tmp.chmod(0o755)  # mkdtemp creates 0700
    try:
        aar = tmp / "android" / "onnxruntime.aar"
        _extract_tar_members(asus4_tgz, {"package/Plugins/Android/onnxruntime.aar": aar})
        _unpack_aar(aar, tmp)
        step(2)
        lib = tmp / "linux-arm64" / "lib"
        _extract_tar_members(
            node_tgz, {"package/bin/napi-v6/linux/arm64/libonnxruntime.so.1": lib / "libonnxruntime.so.1"}
        )
        (lib / "libonnxruntime.so").symlink_to("libonnxruntime.so.1")
        step(3)
        stamp = {**_expected_stamp(), "ort_api_version": _ort_api_version(tmp / "include")}
        (tmp / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
        if missing := missing_files(tmp):
            raise SdkError(f"unpacked SDK is incomplete, missing {missing}")
        _swap_in(tmp, sdk)
        step(4)
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(tmp, ignore_errors=True)


def build_headers(headers: Path, npm_dir: Path) -> None:
    """Fetch the AAR's package and unpack only its C/C++ headers into ``headers/include`` atomically."""
    asus4_tgz = npm_pack(*ASUS4_PACKAGE, npm_dir)
    headers.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=headers.parent, prefix=f".{headers.name}-tmp-"))
    tmp.chmod(0o755)  # mkdtemp creates 0700
    try:
        aar = tmp / "onnxruntime.aar"
        _extract_tar_members(asus4_tgz, {"package/Plugins/Android/onnxruntime.aar": aar})
        with zipfile.ZipFile(aar) as zf:
            names = [n for n in zf.namelist() if n.startswith("headers/") and not n.endswith("/")]
            if not names:
                raise SdkError(f"{aar.name} has no headers/ directory")
            for name in names:
                with zf.open(name) as src:
                    _copy_stream(src, tmp / "include" / Path(name).name)
        aar.unlink()
        stamp = {ASUS4_PACKAGE[0]: ASUS4_PACKAGE[1], "ort_api_version": _ort_api_version(tmp / "include")}
        (tmp / HEADERS_STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
        if missing := missing_files(tmp, REQUIRED_HEADERS):
            raise SdkError(f"unpacked headers are incomplete, missing {missing}")
        _swap_in(tmp, headers, _headers_stamp_ok)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_ort_headers(force: bool = False) -> Path:
    """A directory holding the ORT C/C++ headers: the SDK's ``include/`` (``$MBQ_ORT_SDK``, or a complete
    cached SDK), else ``<cache>/ort_headers/include``, fetched on first use (the AAR package only)."""
    if os.environ.get("MBQ_ORT_SDK"):
        return ensure_ort_sdk() / "include"
    root = cache_root()
    if not force and _stamp_ok(root / "ort_sdk"):
        return root / "ort_sdk" / "include"
    headers = root / "ort_headers"
    if force or not _headers_stamp_ok(headers):
        _log("fetching the ONNX Runtime C/C++ headers")
        build_headers(headers, root / "npm")
    return headers / "include"


def ensure_ort_sdk(force: bool = False) -> Path:
    """Return a complete ORT SDK directory, fetching it on first use.

    Honours ``$MBQ_ORT_SDK`` (an existing SDK dir, used as is) and ``$MBQ_CACHE_DIR``.
    """
    override = os.environ.get("MBQ_ORT_SDK")
    if override:
        sdk = Path(override).expanduser().resolve()
        if not sdk.is_dir():
            raise SdkError(f"MBQ_ORT_SDK={override} is not a directory")
        if missing := missing_files(sdk):
            raise SdkError(f"MBQ_ORT_SDK={override} is not a complete ORT SDK; missing {missing}")
        return sdk
    root = cache_root()
    sdk = root / "ort_sdk"
    if not force and _stamp_ok(sdk):
        return sdk
    build_sdk(sdk, root / "npm")
    return sdk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="re-unpack even if the stamp says it is current")
    parser.add_argument(
        "--headers", action="store_true", help="only the C/C++ headers (prints their include directory)"
    )
    args = parser.parse_args(argv)
    try:
        out = ensure_ort_headers(force=args.force) if args.headers else ensure_ort_sdk(force=args.force)
    except SdkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
