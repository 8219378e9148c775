"""Session fixtures of the exporter tests: one tiny artifact, exported once (with KV cache and --ort)."""

from __future__ import annotations

from pathlib import Path

import pytest
from export_testlib import make_artifact


@pytest.fixture(scope="session")
def export_workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="session")
def tiny_art(export_workdir) -> Path:
    return make_artifact(export_workdir / "artifact-linear")


@pytest.fixture(scope="session")
def tiny_export(tiny_art, export_workdir) -> Path:
    """The tiny artifact exported with KV cache and ``--ort``."""
    from mbq_onnx.export import export_artifact

    return export_artifact(tiny_art, export_workdir / "model-past", ort_format=True, progress=False)


@pytest.fixture(scope="session")
def tiny_torch(tiny_art):
    from mbq_onnx.model import build_model

    return build_model(tiny_art)
