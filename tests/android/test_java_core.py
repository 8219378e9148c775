"""Run the Android demo's Java core JUnit suite (tools/test_java.sh) from pytest.

The Java core (android_demo/core) is compiled with javac against the ONNX Runtime Java API from the
Android AAR and tested with Debian's JUnit 4; see android_demo/README.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "test_java.sh"


def run_junit(*jvm_args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("javac") is None:
        pytest.fail("javac not found: install a JDK (Debian default-jdk-headless; tools/setup.sh does)")
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SCRIPT), *jvm_args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def assert_junit_ok(proc: subprocess.CompletedProcess[str]) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"Java core tests failed (exit {proc.returncode}):\n{output[-8000:]}"
    assert "OK (" in proc.stdout, f"JUnit printed no success line:\n{output[-4000:]}"


def test_java_core_junit_suite() -> None:
    """Controller vectors, the generation loop against the committed Python recording, bad settings."""
    assert_junit_ok(run_junit())


def _shared_exported_model(request: pytest.FixtureRequest) -> list[str]:
    """``--model-dir`` of the session's exported test model when a conftest above offers one, else []
    (the tool then builds its own tiny model, ~1 min)."""
    try:
        return ["--model-dir", str(request.getfixturevalue("exported_model"))]
    except pytest.FixtureLookupError:
        return []


def test_java_loop_matches_a_fresh_python_recording(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Re-record the traces with the current Python runtime and replay them through the Java loop."""
    fixture = tmp_path / "generation_trace.json"
    tool = [sys.executable, str(REPO / "tools" / "make_android_fixture.py"), *_shared_exported_model(request)]
    proc = subprocess.run(
        [*tool, "--out", str(fixture)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, f"make_android_fixture.py failed:\n{proc.stderr[-6000:]}"
    assert_junit_ok(run_junit(f"-Dmbq.generationFixture={fixture}"))
