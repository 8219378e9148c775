"""PEP 517 backend of mbq-onnx: wheels and sdists by scikit-build-core, editable installs by setuptools.

``pip install .`` and ``python -m build`` go through scikit-build-core, which runs the CMake project in
``custom_ops/`` (ORT headers fetched by ``tools/fetch_ort_sdk.py --headers``) and installs
``libmbq_ops.so`` into the wheel's ``mbq_onnx/lib/``.

``pip install -e .`` goes through setuptools and compiles nothing (``tools/setup.sh`` then builds the
library with ``tools/build_ops.py``, whose flavours the tests use). Why not scikit-build-core's own
editable mode: its import finders are inserted at the front of ``sys.meta_path``, so ``mbq_onnx`` would
always resolve to the last installed checkout, even when Python runs inside another checkout or worktree;
setuptools' finder comes after ``sys.path``, so the checkout in the working directory wins.
"""

from __future__ import annotations

from scikit_build_core.build import (
    build_sdist,
    build_wheel,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_wheel,
)

__all__ = [
    "build_editable",
    "build_sdist",
    "build_wheel",
    "get_requires_for_build_editable",
    "get_requires_for_build_sdist",
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_editable",
    "prepare_metadata_for_build_wheel",
]

SETUPTOOLS = "setuptools>=77"  # SPDX `project.license`


def get_requires_for_build_editable(config_settings: dict | None = None) -> list[str]:
    """The editable build needs setuptools (not a build-system requirement of wheels)."""
    return [SETUPTOOLS]


def prepare_metadata_for_build_editable(metadata_directory: str, config_settings: dict | None = None) -> str:
    """Editable metadata, by setuptools."""
    from setuptools import build_meta

    return build_meta.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_editable(
    wheel_directory: str, config_settings: dict | None = None, metadata_directory: str | None = None
) -> str:
    """An editable wheel pointing at this checkout's ``mbq_onnx``, by setuptools (no CMake)."""
    from setuptools import build_meta

    return build_meta.build_editable(wheel_directory, config_settings, metadata_directory)
