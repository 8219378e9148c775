"""A small exported lean model with a chat template, and a real server on 127.0.0.1 (Ray Serve in a child
process, ``python -m mbq_onnx.serve``), for the serving tests."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mbq_onnx import assets

pytest.importorskip("ray.serve", reason="the [serve] extra is not installed")

READY_TIMEOUT_S = 180


def _runtime_testlib():
    path = Path(__file__).parents[1] / "runtime" / "runtime_testlib.py"
    spec = importlib.util.spec_from_file_location("serve_runtime_testlib", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def serve_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runtime tests' random lean model (byte-level vocabulary, 1,024 positions) plus SmolLM2's chat
    template."""
    model = _runtime_testlib().build_exported_model(tmp_path_factory.mktemp("serve-model"))
    shutil.copy(assets.embedded_model_dir() / "chat_template.jinja", model / "chat_template.jinja")
    return model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(model: Path, *args: str) -> Iterator[str]:
    """Start ``python -m mbq_onnx.serve`` on a free loopback port; yield its ``/v1`` base URL; stop it."""
    port = free_port()
    cmd = [sys.executable, "-m", "mbq_onnx.serve", "--model", str(model), "--port", str(port),
           "--threads", "1", *args]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own
    env.update(HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            if line.startswith("serving "):
                break
        else:
            pytest.fail("server not ready in time:\n" + "".join(lines[-30:]))
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n" + "".join(lines[-30:]))
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # a full pipe would block Ray
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
