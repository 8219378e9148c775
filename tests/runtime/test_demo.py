"""tools/demo.py end to end on the small exported model (skipping calibration/export with --model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_on_exported_model(exported_model: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(REPO / "tools" / "demo.py"),
        "--model",
        str(exported_model),
        "--threads",
        "1",
        "--max-new-tokens",
        "12",
        "--reports",
        str(tmp_path / "reports"),
        "--probe-cache",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tight budget" in proc.stdout and "loose budget" in proc.stdout and "avg bits" in proc.stdout
    report = json.loads((tmp_path / "reports" / "demo.json").read_text())
    lmap = report["latency_map"]
    base, full = lmap[-1]["latency_ms"], lmap[0]["latency_ms"]
    runs = {r["name"].split(" (")[0]: r for r in report["runs"]}
    assert set(runs) == {"fixed base", "fixed all slices", "tight budget", "loose budget"}
    assert base <= runs["tight budget"]["budget_ms"] <= runs["loose budget"]["budget_ms"] <= full
    assert (
        runs["fixed base"]["summary"]["avg_bits"] == 4.0
        and runs["fixed all slices"]["summary"]["avg_bits"] == 8.0
    )
    for r in report["runs"]:
        assert len(r["trace"]) == 11  # 12 tokens: the first from prefill, then one decode step each
    png = (tmp_path / "reports" / "demo.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
