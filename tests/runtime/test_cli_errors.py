"""``python -m mbq_onnx.run``: bad arguments fail fast with a clear message and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mbq_onnx.run", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def fake_dir(tmp_path: Path) -> Path:
    """A dir that passes the argument checks (has mbq_config.json) but holds no model."""
    (tmp_path / "mbq_config.json").write_text(
        json.dumps({"slice_bits": [4, 2, 2], "num_layers": 1, "num_kv_heads": 1, "head_dim": 8})
    )
    return tmp_path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tau", "nan"], "finite"),
        (["--tau", "1.5"], "[0, 1]"),
        (["--tau", "-0.1"], "[0, 1]"),
        (["--tau", "abc"], "not a number"),
        (["--budget-ms", "-5"], "must be > 0"),
        (["--budget-ms", "0"], "must be > 0"),
        (["--budget-ms", "inf"], "finite"),
        (["--slices", "0"], ">= 1"),
        (["--threads", "0"], ">= 1"),
        (["--max-new-tokens", "-3"], ">= 1"),
        (["--tau", "0.5", "--budget-ms", "10"], "not allowed with"),
        (["--slices", "1", "--tau", "0.5"], "not allowed with"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["--max-new-tokens", "0"], ">= 1"),
        (["--max-new-tokens", "2.5"], "not an integer"),
        (["--threads", "-1"], ">= 1"),
        (["--threads", "two"], "not an integer"),
        (["--slices", "-2"], ">= 1"),
        (["--tokens-per-s", "0"], "must be > 0"),
        (["--top-p", "0"], "must be > 0"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--top-k", "-1"], "integer >= 0"),
        (["--temperature", "-1"], "--temperature must be >= 0"),
        (["--seed", "-1"], "integer >= 0"),
    ],
)
def test_bad_arguments(fake_dir: Path, extra: list[str], message: str) -> None:
    proc = run_cli("--model", str(fake_dir), "--prompt", "hi", *extra)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_model_dir(tmp_path: Path) -> None:
    proc = run_cli("--model", str(tmp_path / "nope"), "--prompt", "hi")
    assert proc.returncode == 2
    assert "is not a directory" in proc.stderr and "nope" in proc.stderr


def test_dir_without_export(tmp_path: Path) -> None:
    proc = run_cli("--model", str(tmp_path), "--prompt", "hi")
    assert proc.returncode == 2
    assert "mbq_config.json" in proc.stderr


def test_export_dir_without_graph(fake_dir: Path) -> None:
    proc = run_cli("--model", str(fake_dir), "--prompt", "hi", "--tau", "0.3")
    assert proc.returncode == 2
    assert "model.onnx" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_required() -> None:
    proc = run_cli("--prompt", "hi")
    assert proc.returncode == 2 and "--model" in proc.stderr


@pytest.mark.parametrize("prompt", ["", "   ", "\n"])
def test_empty_prompt(fake_dir: Path, prompt: str) -> None:
    proc = run_cli("--model", str(fake_dir), "--prompt", prompt)
    assert proc.returncode == 2 and "--prompt must not be empty" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_probe_cache_is_a_file(fake_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "probe.txt"
    f.write_text("x")
    proc = run_cli("--model", str(fake_dir), "--prompt", "hi", "--budget-ms", "5", "--probe-cache", str(f))
    assert proc.returncode == 2 and "is not a directory" in proc.stderr


@pytest.mark.parametrize("config", ["{not json", "[]", '{"slice_bits": "x"}'])
def test_broken_config_is_one_line(tmp_path: Path, config: str) -> None:
    (tmp_path / "mbq_config.json").write_text(config)
    proc = run_cli("--model", str(tmp_path), "--prompt", "hi")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert sum("error:" in line for line in proc.stderr.splitlines()) == 1, proc.stderr


def test_broken_graph_is_one_line(fake_dir: Path) -> None:
    (fake_dir / "model.onnx").write_bytes(b"not an onnx graph")
    proc = run_cli("--model", str(fake_dir), "--prompt", "hi")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert sum("error:" in line for line in proc.stderr.splitlines()) == 1, proc.stderr
