"""Locate and register the ``libmbq_ops`` custom-op library (``com.mbq::MixedBitMatMul``, ``RouterCounts``).

Torch-free: used by the runtime, the exporter and the tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

ENV_VAR = "MBQ_OPS_LIB"
DOMAIN = "com.mbq"
BUILD_COMMAND = "python tools/build_ops.py"
_PACKAGED = Path(__file__).resolve().parent / "lib" / "libmbq_ops.so"


def library_path() -> Path:
    """Path of the op library: ``$MBQ_OPS_LIB`` if set, else the packaged ``mbq_onnx/lib/libmbq_ops.so``."""
    env = os.environ.get(ENV_VAR)
    path = Path(env) if env else _PACKAGED
    if not path.is_file():
        where = f"{ENV_VAR}={env}" if env else f"the packaged library {path}"
        raise FileNotFoundError(
            f"MixedBitMatMul op library not found ({where}); build it with `{BUILD_COMMAND}` "
            f"from the repository root, or point {ENV_VAR} at a built libmbq_ops.so"
        )
    return path


def register(session_options: ort.SessionOptions) -> ort.SessionOptions:
    """Register ``libmbq_ops`` with ``session_options`` (returned for chaining)."""
    session_options.register_custom_ops_library(str(library_path()))
    return session_options
