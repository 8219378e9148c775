"""tools/bench_serve.py's bookkeeping without a server: rate parsing, the per-run lost/refused counts and the
four target checks on synthetic measurements, and the plot. (The tool itself runs the real server.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_serve.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_serve", TOOL)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_serve"] = mod
    spec.loader.exec_module(mod)
    return mod


def _row(p95, bits, lost=0, r429=0, r503=0, completed=10, **kw):
    return {
        "requests": completed + lost + r429 + r503,
        "completed": completed,
        "lost": lost,
        "refused_429": r429,
        "refused_503": r503,
        "refused_without_retry_after": 0,
        "tpot_p95_ms": p95,
        "avg_bits": bits,
        "tok_s": 100.0,
        "ttft_p95_ms": 50.0,
        "tau_range": [0.0, 0.0],
        **kw,
    }


def _run(role, sweep, c1=(10.0, 100.0, 8.0), c8=(30.0, 400.0, 8.0)):
    phase1 = [
        _row(c1[0], c1[2], concurrency=1, tok_s=c1[1], tpot_p50_ms=c1[0], decode_tok_s=c1[1]),
        _row(c8[0], c8[2], concurrency=8, tok_s=c8[1], tpot_p50_ms=c8[0], decode_tok_s=c8[1]),
    ]
    rates = (1.0, 4.0, 8.0)
    rows = [
        _row(*s, rate_req_s=r) if s else {"rate_req_s": r, "skipped": "time budget"}
        for s, r in zip(sweep, rates, strict=True)
    ]
    return {"name": role, "role": role, "mode": [], "phase1": phase1, "sweep": rows}


def test_rates(bench):
    assert bench._rates("0.1x, 2,3x") == [(0.1, True), (2.0, False), (3.0, True)]
    for bad in ("", "fast", "0x", "-1"):
        with pytest.raises(SystemExit):
            bench._rates(bad)


def test_summary_checks_pass(bench):
    target = 15.0  # full exceeds it at 4 and 8 req/s; base only at 8 req/s
    runs = [
        _run("full", [(12.0, 8.0), (25.0, 8.0), (40.0, 8.0)]),
        _run("adaptive", [(12.0, 7.9), (16.0, 5.5), (16.4, 4.2, 0, 5, 2)], c1=(10.5, 95.0, 8.0)),
        _run("base", [(9.0, 4.0), (14.0, 4.0), (30.0, 4.0)], c1=(8.0, 120.0, 4.0), c8=(20.0, 500.0, 4.0)),
    ]
    s = bench.summarize(runs, target, 8)
    assert s["runs"]["adaptive"]["refused_requests"] == 7 and s["runs"]["adaptive"]["lost_requests"] == 0
    c = s["checks"]
    assert [r["rate_req_s"] for r in c["holds_target_where_full_exceeds"]["rates"]] == [4.0]
    assert c["holds_target_where_full_exceeds"]["pass"]
    assert [r["rate_req_s"] for r in c["admission_past_base"]["rates"]] == [8.0]
    assert c["admission_past_base"]["pass"]
    assert c["full_precision_at_low_load"]["pass"]
    assert c["batch_throughput_ratio"]["ratios"]["full"] == 4.0 and c["batch_throughput_ratio"]["pass"]
    assert s["all_pass"]


def test_summary_checks_fail(bench):
    target = 15.0
    runs = [
        _run("full", [(12.0, 8.0), (25.0, 8.0), None]),  # the last level skipped by the time budget
        _run("adaptive", [(12.0, 7.0), (16.6, 5.5, 1), (30.0, 4.0)]),  # low bits at low load, 1 lost, over
        _run("base", [(9.0, 4.0), (14.0, 4.0), (30.0, 4.0)], c8=(20.0, 250.0, 4.0)),
    ]
    c = bench.summarize(runs, target, 8)["checks"]
    assert not c["holds_target_where_full_exceeds"]["pass"]  # 16.6 > 16.5 and a lost request
    assert not c["admission_past_base"]["pass"]
    assert not c["full_precision_at_low_load"]["pass"]
    assert c["batch_throughput_ratio"]["ratios"]["base"] == 2.5 and not c["batch_throughput_ratio"]["pass"]


def test_plot(bench, tmp_path):
    runs = [
        _run("full", [(12.0, 8.0), (25.0, 8.0), None]),
        _run("base", [(9.0, 4.0), (14.0, 4.0), (30.0, 4.0)]),
    ]
    report = {
        "runs": runs,
        "target_tpot_ms": 15.0,
        "machine": {"cpu": "x", "cores": 2},
        "config": {"model": "m", "max_batch": 8},
    }
    bench.plot(report, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
