"""``python -m mbq_onnx.calibrate``: bad input fails clearly, writing nothing; a run writes an artifact."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mbq_onnx.calibrate.config import default_tau_grid


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mbq_onnx.calibrate", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slices", "4,4,2"], "sum to 10 bits"),
        (["--slices", "4,0,2"], "0-bit slice"),
        (["--slices", "four"], "comma-separated integers"),
        (["--group", "100"], "power of two"),
        (["--group", "8"], "power of two"),
        (["--samples", "0"], "samples must be >= 1"),
        (["--precisions", "4"], "within 1..3"),
        (["--lr-let", "-1"], "lr_let must be >= 0"),
    ],
)
def test_bad_arguments(tmp_path, args, message):
    out = tmp_path / "art"
    proc = _run("--output", str(out), *args)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not out.exists()


def test_missing_model(tmp_path):
    proc = _run("--model", str(tmp_path / "nope"), "--output", str(tmp_path / "art"))
    assert proc.returncode != 0 and "does not exist" in proc.stderr
    assert not (tmp_path / "art").exists()


def test_unsupported_model(tmp_path):
    from transformers import BertConfig, BertModel

    folder = tmp_path / "bert"
    BertModel(
        BertConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    ).save_pretrained(folder)
    proc = _run("--model", str(folder), "--output", str(tmp_path / "art"))
    assert proc.returncode != 0 and "error:" in proc.stderr
    assert not (tmp_path / "art").exists()
    assert not list(tmp_path.glob(".art*"))


def test_existing_non_artifact_output_is_kept(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    proc = _run("--output", str(out))
    assert proc.returncode != 0 and "not an mbq artifact" in proc.stderr
    assert (out / "notes.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


@pytest.mark.slow
def test_cli_on_a_small_model_with_the_embedded_tokenizer(tmp_path, tiny_llama):
    """A tiny random LLaMA with the embedded model's vocabulary and tokenizer, calibrated on the SOTU text."""
    from mbq_onnx import assets
    from mbq_onnx.model import build_model

    _, tokenizer = assets.load_model(None)
    folder = tmp_path / "tiny"
    tiny_llama(vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "art"
    args = [
        "--model",
        str(folder),
        "--output",
        str(out),
        "--group",
        "16",
        "--samples",
        "4",
        "--seqlen",
        "32",
        "--epochs",
        "1",
        "--base-epochs",
        "1",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    proc = _run(*args)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["slice_bits"] == [4, 2, 2] and cfg["source"]["preset"] == "fast"
    # the default τ grid: the 24 gate thresholds (5 low values, then 0.05 … 0.95) in each gate's τ range of
    # the bracketed schedule, and the uniform 6-bit point between them
    assert [r["tau"] for r in cfg["tau_table"]] == pytest.approx(default_tau_grid(3, "bracketed"), abs=1e-6)
    assert len(cfg["tau_table"]) == 2 * 24 + 1 and cfg["router"]["tau_schedule"] == "bracketed"
    bits = [r["avg_bits_per_call"] for r in cfg["tau_table"]]
    assert (
        bits == sorted(bits, reverse=True)
        and next(r for r in cfg["tau_table"] if r["tau"] == 0.5)["avg_bits_per_call"] == 6.0
    )
    report = json.loads((out / "calibration_report.json").read_text())
    assert report["samples"] == [4, 32] and len(report["blocks"]) == 2
    assert (out / "tokenizer.json").is_file()
    build_model(out)
    proc = _run(*args, "--router", "block")  # an existing artifact is replaced atomically
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "config.json").read_text())["router"]["granularity"] == "block"
    assert not list(tmp_path.glob(".art*"))
