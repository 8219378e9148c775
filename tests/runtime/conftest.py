"""A small exported mixed-bit model for real-session tests (built once per test session, ~30 s).

The builder lives in ``runtime_testlib.py`` (shared with ``tools/make_android_fixture.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_testlib import build_exported_model


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of an exported model dir (mbq_config.json, model.onnx, tokenizer.json, libmbq_ops.so)."""
    return build_exported_model(tmp_path_factory.mktemp("runtime-model"))
