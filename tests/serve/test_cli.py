"""``python -m mbq_onnx.serve`` rejects bad arguments with exit 2 and a message, before starting Ray."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest


def _serve(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mbq_onnx.serve", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slices", "4"], "--slices must be in 1..3"),
        (["--slo-ms", "-5"], "--slo-ms must be > 0"),
        (["--tau", "1.5"], "--tau must be in [0, 1]"),
        (["--max-batch", "0"], "--max-batch must be >= 1"),
        (["--replicas", "0"], "--replicas must be >= 1"),
        (["--slo-ms", "20", "--slices", "1"], "not allowed with argument"),
    ],
)
def test_bad_arguments_exit_2(serve_model, args, message):
    proc = _serve("--model", str(serve_model), *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_missing_model_dir_and_taken_port(serve_model, tmp_path):
    proc = _serve("--model", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "is not a directory" in proc.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        proc = _serve("--model", str(serve_model), "--port", str(s.getsockname()[1]))
    assert proc.returncode == 2 and "cannot listen on" in proc.stderr
