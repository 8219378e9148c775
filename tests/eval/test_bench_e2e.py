"""tools/bench_e2e.py --quick on a tiny random LLaMA with the real tokenizer: our exports, the GenAI int4/int8
peers built for real with onnxruntime-genai's builder and run through its generator, llama.cpp rows skipped
cleanly when no build is given. Structure, finiteness and names only — no timed assertions."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_e2e.py"
PEERS = ["GenAI int4", "GenAI int8", "llama.cpp Q4_0", "llama.cpp Q8_0"]

pytest.importorskip("onnxruntime_genai")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(float folder, artifact, root): GenAI's CPU GroupQueryAttention needs head_size % 16 == 0, so hidden 64
    with 4 heads / 2 KV heads (not the shared 72/6)."""
    from tiny_models import make_tiny_pair

    root = tmp_path_factory.mktemp("bench-e2e")
    model_dir, artifact = make_tiny_pair(root, hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    return model_dir, artifact, root


def _bench(tiny, out, *extra):
    model_dir, artifact, root = tiny
    argv = [sys.executable, str(TOOL), "--quick", "--artifact", str(artifact), "--model", str(model_dir)]
    argv += ["--exports", str(root / "exports"), "--peers", str(root / "peers"), "--taus", "0.3,0.7"]
    argv += ["--output", str(out), "--ppl-tokens", "96", "--ppl-window", "48", *extra]
    env = {k: v for k, v in __import__("os").environ.items() if k != "MBQ_LLAMA_CPP"}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def bench(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out")
    proc = _bench(tiny, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "e2e_bench.json").read_text()), out, proc.stderr


def test_rows_names_and_peers(bench):
    data, out, _ = bench
    assert (out / "e2e_bench.png").stat().st_size > 0
    names = [r["model"] for r in data["rows"]]
    assert names[:3] == ["float32", "ORT MatMulNBits int4", "ORT MatMulNBits int8"]
    # slices and τ sweep, each on the float path and on the int8-activation export
    assert sum(n.startswith("MoBiQuant") for n in names) == 2 * (3 + 2)
    assert [n for n in names if n in PEERS] == PEERS
    assert data["settings"]["genai_block_size"] == 32 and data["settings"]["interleaved"] is True
    assert data["machine"]["onnxruntime_genai"] == "0.18.0" or data["machine"]["onnxruntime_genai"]


def test_speeds_finite_and_ratios_to_genai_int4(bench):
    data, _, _ = bench
    by = {r["model"]: r for r in data["rows"]}
    for name in ("GenAI int4", "GenAI int8"):
        assert "skipped" not in by[name], by[name]
    for row in data["rows"]:
        if "skipped" in row:
            continue
        assert set(row["speed"]) == {"1", "2"}
        for sp in row["speed"].values():
            for key in ("decode_tok_s", "prefill_tok_s", "decode_vs_genai_int4", "prefill_vs_genai_int4"):
                assert math.isfinite(sp[key]) and sp[key] > 0, (row["model"], key)
        ppl = row["perplexity"]
        assert (
            math.isfinite(ppl["ppl"]) and ppl["ppl"] > 1 and ppl["tokens"] == 94
        )  # 2 windows of 48 → 2 × 47
    assert all(s["decode_vs_genai_int4"] == 1.0 for s in by["GenAI int4"]["speed"].values())


def test_tau_rows_carry_measured_bits(bench):
    data, _, _ = bench
    tau = [r for r in data["rows"] if r["kind"] == "mbq-tau"]
    assert [r["tau"] for r in tau] == [0.3, 0.7]
    for r in tau:
        assert 4.0 <= r["avg_bits"] <= 8.0
    forced = [r for r in data["rows"] if r["kind"] == "mbq-slices"]
    assert [r["avg_bits"] for r in forced] == pytest.approx([4.0, 6.0, 8.0])


def test_llama_cpp_skipped_cleanly_without_a_build(bench):
    data, _, stderr = bench
    for name in ("llama.cpp Q4_0", "llama.cpp Q8_0"):
        row = next(r for r in data["rows"] if r["model"] == name)
        assert "MBQ_LLAMA_CPP" in row["skipped"] and "speed" not in row
    assert "llama.cpp rows skipped" in stderr and "Traceback" not in stderr


def test_bad_options(tiny, tmp_path):
    bad = subprocess.run([sys.executable, str(TOOL), "--taus", "2"], capture_output=True, text=True)
    assert bad.returncode != 0 and "strictly between 0 and 1" in bad.stderr
    bad = subprocess.run([sys.executable, str(TOOL), "--threads", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and ">= 1" in bad.stderr
