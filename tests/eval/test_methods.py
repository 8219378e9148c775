"""The registry of evaluated methods (``mbq_onnx.eval.methods``): one row per method, read by the command,
the report and the row labels."""

from __future__ import annotations

import pytest

from mbq_onnx.eval import cli
from mbq_onnx.eval import methods as M
from mbq_onnx.eval import report as R
from mbq_onnx.eval.rows import ReportRow, TextResult

#: One variant per method, with the parameters its label names (a new method adds one here).
SAMPLES = {
    "float": M.Variant("float"),
    "rtn": M.Variant("rtn", bits=4, group_size=128),
    "gptq": M.Variant("gptq", bits=4, group_size=128, act_order=True),
    "single": M.Variant("single", bits=6, slices=2),
    "mbq-uniform": M.Variant("mbq-uniform", bits=4, slices=1),
    "mbq-tau": M.Variant("mbq-tau", tau=0.5),
    "mbq-random": M.Variant("mbq-random", tau=0.5),
    "mbq-oracle": M.Variant("mbq-oracle", tau=0.5),
    "mbq-int8act": M.Variant("mbq-int8act", bits=4, slices=1, accuracy_level=4),
    "matmul-nbits": M.Variant("matmul-nbits", bits=4, group_size=32),
}


def test_every_method_has_a_label_a_style_and_an_evaluation():
    assert set(SAMPLES) == set(M.METHOD_KEYS)
    for m in M.METHODS:
        assert m.key and m.name, m
        assert m.style.marker and m.style.color, m.key
        assert callable(m.variants) and callable(m.evaluate), m.key
        assert m.backend in ("torch", "ort"), m.key
        assert m.ort is None or m.backend == "torch", f"{m.key}: an ORT-only method has no separate ORT run"
        assert SAMPLES[m.key].label, m.key


def test_keys_names_and_labels_are_unique():
    assert len(set(M.METHOD_KEYS)) == len(M.METHODS)
    assert len({m.name for m in M.METHODS}) == len(M.METHODS)
    assert len({v.label for v in SAMPLES.values()}) == len(SAMPLES)
    assert len({(m.style.marker, m.style.color) for m in M.METHODS}) == len(M.METHODS)


def test_labels_are_stable():
    """``--resume`` matches the rows of earlier reports by label: the strings must not drift."""
    assert {k: v.label for k, v in SAMPLES.items()} == {
        "float": "float32",
        "rtn": "RTN 4-bit g128",
        "gptq": "GPTQ 4-bit g128 act-order",
        "single": "single-precision calib 6-bit",
        "mbq-uniform": "MoBiQuant 1 slice (4-bit)",
        "mbq-tau": "MoBiQuant τ=0.5",
        "mbq-random": "MoBiQuant random routing (bits of τ=0.5)",
        "mbq-oracle": "MoBiQuant oracle routing (bits of τ=0.5)",
        "mbq-int8act": "MoBiQuant 1 slice (4-bit), int8 activations",
        "matmul-nbits": "ORT MatMulNBits int4 b32",
    }
    assert M.label("matmul-nbits", bits=4, group_size=32, accuracy_level=4) == "ORT MatMulNBits int4 b32"
    assert (
        M.label("matmul-nbits", bits=8, group_size=32, accuracy_level=0)
        == "ORT MatMulNBits int8 b32 float activations"
    )
    assert M.label("mbq-uniform", bits=8, slices=3) == "MoBiQuant 3 slices (8-bit)"
    assert M.label("gptq", bits=8, group_size=64) == "GPTQ 8-bit g64"
    with pytest.raises(ValueError, match="unknown method 'awq'"):
        M.label("awq", bits=4)


def test_the_report_and_the_command_read_the_table():
    assert R.METHODS == M.METHOD_KEYS
    assert cli.BASELINES == M.BASELINES == ("rtn", "gptq", "single")
    assert [m.key for m in M.METHODS if m.reference] == [M.REFERENCE] == ["float"]
    assert M.METHODS[0].reference  # the reference row comes first
    ort_only = [m.key for m in M.METHODS if m.backend == "ort"]
    assert M.METHOD_KEYS[-len(ort_only) :] == tuple(ort_only)  # ORT-only rows come after the ORT exports
    # random-routing rows need their τ row: it comes first
    assert M.METHOD_KEYS.index("mbq-tau") < M.METHOD_KEYS.index("mbq-random")
    assert M.METHOD_KEYS.index("mbq-tau") < M.METHOD_KEYS.index("mbq-oracle")


def _row(v: M.Variant, ppl: float) -> ReportRow:
    bits = None if v.method in ("float", "mbq-tau", "mbq-random", "mbq-oracle") else v.bits
    avg = 32.0 if v.method == "float" else float(bits or 5.0)
    res = TextResult(ppl, 10.0, 9, 1, 10, avg_bits_per_weight=avg)
    return ReportRow(v.method, v.label, bits, v.group_size, v.slices, v.tau, 1000, {"t": res})


def test_table_order_is_the_report_order():
    rows = [_row(v, 20.0 + i) for i, v in enumerate(reversed(list(SAMPLES.values())))]
    rep = R.new_report({"group_size": 128}, ["t"])
    rep["rows"] = [r.to_dict() for r in rows]
    table = R.markdown_table(rep).split("\n\n")[0]
    labels = [line.split(" | ")[0].removeprefix("| ") for line in table.splitlines()[2:]]
    assert labels == [SAMPLES[k].label for k in M.METHOD_KEYS]


def test_unknown_methods_are_reported_not_guessed():
    rep = R.new_report({}, ["t"])
    rep["rows"] = [_row(SAMPLES["float"], 20.0).to_dict()]
    rep["rows"][0]["method"] = "awq"
    assert any("unknown method 'awq'" in p for p in R.check_report(rep))
    assert M.table_index("awq") == len(M.METHODS)
