"""End to end on the embedded SmolLM2-135M: ``python -m mbq_onnx.eval --quick`` (PyTorch and ORT rows, real
exports in a temporary directory) writes a sane report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rtn_artifact(tmp_path_factory):
    """An uncalibrated MoBiQuant artifact of the embedded model (RTN grid, untrained routers): real shapes,
    ragged groups (K=576 with groups of 128), real tokenizer — what the report machinery needs."""
    from mbq_onnx import assets
    from mbq_onnx.model import quantize_model, save_artifact
    from mbq_onnx.quant.spec import QuantSpec

    model, tokenizer = assets.load_model(None)
    spec = QuantSpec((4, 2, 2), 128)
    quantize_model(model, spec, granularity="linear")
    return save_artifact(
        tmp_path_factory.mktemp("art") / "smollm2-rtn",
        model,
        spec,
        tokenizer=tokenizer,
        source={"model": str(assets.embedded_model_dir())},
    )


def test_quick_report_on_the_embedded_model(rtn_artifact, tmp_path):
    from mbq_onnx.eval import check_report

    out = tmp_path / "reports"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mbq_onnx.eval",
            "--artifact",
            str(rtn_artifact),
            "--quick",
            "--baselines",
            "rtn,gptq",
            "--bits",
            "4,8",
            "--taus",
            "0.5",
            "--max-tokens",
            "256",
            "--output",
            str(out),
            "--exports",
            str(tmp_path / "exports"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "quality.json").read_text())
    assert check_report(report) == []
    assert report["texts"] == ["sotu-2000+", "moby-dick"]
    assert (out / "quality.png").stat().st_size > 0 and (out / "quality.md").is_file()
    assert (out / "pareto.png").stat().st_size > 0
    rows = {r["label"]: r for r in report["rows"]}
    assert {
        "float32",
        "RTN 4-bit g128",
        "RTN 8-bit g128",
        "GPTQ 4-bit g128",
        "GPTQ 8-bit g128",
        "MoBiQuant 1 slice (4-bit)",
        "MoBiQuant 3 slices (8-bit)",
        "MoBiQuant τ=0.5",
        "ORT MatMulNBits int4 b128",
        "ORT MatMulNBits int8 b128",
    } <= set(rows)
    for label in ("float32", "MoBiQuant 1 slice (4-bit)", "MoBiQuant 3 slices (8-bit)", "MoBiQuant τ=0.5"):
        assert max(rows[label]["ort"]["agreement"].values()) <= report["settings"]["ort"]["tolerance"]
        assert set(rows[label]["speed"]) == {"1", "2"}
    for text in report["texts"]:
        ppl = {label: row["results"][text]["ppl"] for label, row in rows.items()}
        # an 8-bit model is much closer to float than a 4-bit one, for every method
        pairs = [
            ("RTN 4-bit g128", "RTN 8-bit g128"),
            ("GPTQ 4-bit g128", "GPTQ 8-bit g128"),
            ("MoBiQuant 1 slice (4-bit)", "MoBiQuant 3 slices (8-bit)"),
            ("ORT MatMulNBits int4 b128", "ORT MatMulNBits int8 b128"),
        ]
        for lo, hi in pairs:
            assert abs(ppl[hi] / ppl["float32"] - 1) < abs(ppl[lo] / ppl["float32"] - 1)
        tau_bits = rows["MoBiQuant τ=0.5"]["results"][text]["avg_bits_per_weight"]
        assert 4.0 <= tau_bits <= 8.0
