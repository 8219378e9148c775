"""Typed report rows: ``from_dict`` → ``to_dict`` gives back the same JSON, old reports included."""

from __future__ import annotations

import json
from pathlib import Path

from mbq_onnx.eval.report import annotate_report, bits_of, markdown_table
from mbq_onnx.eval.rows import OrtPart, ReportRow, TextResult

#: An older report (``avg_bits`` keys, ORT rows, MatMulNBits) as once committed to reports/.
OLD_REPORT = Path(__file__).resolve().parent / "fixtures" / "quality_v1_fast.json"
REPO_REPORT = Path(__file__).resolve().parents[2] / "reports" / "quality.json"


def test_the_committed_report_round_trips_byte_for_byte():
    raw = REPO_REPORT.read_text()
    rep = json.loads(raw)
    rows = [ReportRow.from_dict(r) for r in rep["rows"]]
    assert json.dumps({**rep, "rows": [r.to_dict() for r in rows]}, indent=2) + "\n" == raw


def test_an_old_report_round_trips_byte_for_byte():
    raw = OLD_REPORT.read_text()
    rep = json.loads(raw)
    rows = [ReportRow.from_dict(r) for r in rep["rows"]]
    assert json.dumps({**rep, "rows": [r.to_dict() for r in rows]}, indent=2) + "\n" == raw
    # an old report: bits under ``avg_bits``, still read as bits
    assert all(r.results[t].old_bits_key and r.results[t].bits > 0 for r in rows for t in rep["texts"])
    assert {r.method for r in rows} >= {"float", "rtn", "gptq", "mbq-tau", "matmul-nbits"}
    assert isinstance(rows[0].ort, OrtPart) and rows[0].ort.agreement


def _result(**kw) -> TextResult:
    return TextResult(**{"ppl": 20.0, "nll": 29.9, "tokens": 10, "windows": 1, "window": 11, **kw})


def test_a_new_row_writes_the_keys_it_always_had():
    row = ReportRow("rtn", "RTN 4-bit g16", 4, 16, None, None, 123, {"a": _result(avg_bits_per_weight=4.0)})
    assert list(row.to_dict()) == [
        "method", "label", "bits", "group_size", "slices", "tau", "model_bytes", "results",
    ]  # fmt: skip
    assert list(row.to_dict()["results"]["a"]) == [
        "ppl",
        "nll",
        "tokens",
        "windows",
        "window",
        "avg_bits_per_weight",
    ]
    row.calibration = {"samples": 4}
    row.seconds = 1.5
    assert list(row.to_dict())[-2:] == ["calibration", "seconds"]


def test_unknown_keys_order_and_nulls_survive():
    d = {
        "label": "x", "method": "mbq-tau", "bits": None, "group_size": 16, "slices": None, "tau": 0.5,
        "model_bytes": 9, "results": {"a": {"ppl": 3.0, "nll": 1.0, "tokens": 1, "windows": 1, "window": 2,
        "avg_bits_per_weight": 5.0, "note": [1, 2]}}, "granularity": "block", "artifact": None,
    }  # fmt: skip
    row = ReportRow.from_dict(d)
    assert row.extra == {"granularity": "block"} and row.results["a"].extra == {"note": [1, 2]}
    assert json.dumps(row.to_dict()) == json.dumps(d)


def test_rows_read_and_write_by_json_key_as_the_dict_rows_did():
    row = ReportRow(
        "mbq-tau", "MoBiQuant τ=0.5", None, 16, None, 0.5, 9, {"a": _result(avg_bits_per_weight=5.5)}
    )
    assert row["tau"] == 0.5 and row["bits"] is None and "bits" in row
    assert "ort" not in row and row.get("ort") is None
    assert row["results"]["a"]["ppl"] == 20.0 and bits_of(row["results"]["a"]) == 5.5
    row["granularity"] = "block"
    row["seconds"] = 2.0
    assert row.extra == {"granularity": "block"} and row.seconds == 2.0
    assert row.to_dict()["granularity"] == "block"


def test_old_results_upgrade_to_the_new_bits_key():
    old = {"ppl": 3.0, "nll": 1.0, "tokens": 1, "windows": 1, "window": 2, "avg_bits": 6.0}
    res = TextResult.from_dict(old)
    assert res.bits == 6.0 and res.to_dict() == old and bits_of(res) == 6.0
    assert res.upgrade().to_dict() == {
        **{k: v for k, v in old.items() if k != "avg_bits"},
        "avg_bits_per_weight": 6.0,
    }


def test_annotating_a_report_of_typed_rows_leaves_plain_json():
    float_row = ReportRow(
        "float", "float32", None, None, None, None, 100, {"a": _result(avg_bits_per_weight=32.0)}
    )
    rtn = ReportRow(
        "rtn", "RTN 4-bit g16", 4, 16, None, None, 10, {"a": _result(ppl=25.0, avg_bits_per_weight=4.0)}
    )
    rep = {"format": "mbq-quality", "settings": {}, "texts": ["a"], "rows": [float_row, rtn]}
    annotate_report(rep)
    assert all(type(r) is dict for r in rep["rows"])
    json.dumps(rep)
    assert "RTN 4-bit g16" in markdown_table(rep)
