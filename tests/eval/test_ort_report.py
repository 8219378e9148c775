"""The one report command with its ONNX Runtime part, on a tiny random LLaMA with the real tokenizer:
real exports (float32, ORT MatMulNBits, mixed-bit), real ORT sessions, ORT vs PyTorch agreement, speeds."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from mbq_onnx.eval import check_report


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """(float model folder, artifact, root): a 2-layer random LLaMA with SmolLM2's 49152-token vocabulary."""
    from tiny_models import make_tiny_pair

    root = tmp_path_factory.mktemp("ort-report")
    return (*make_tiny_pair(root, tau_key="avg_bits"), root)


def _run(tiny_pair, out, *extra):
    from mbq_onnx.eval.cli import main

    model_dir, artifact, root = tiny_pair
    argv = [
        "--artifact", str(artifact), "--model", str(model_dir), "--quick", "--baselines", "rtn",
        "--bits", "4,8", "--taus", "0.3,0.7", "--exports", str(root / "exports"), "--output", str(out),
        "--no-progress", *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "quality.json").read_text())


@pytest.fixture(scope="module")
def report(tiny_pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    return _run(tiny_pair, out), out


def test_report_files_and_no_problems(report):
    rep, out = report
    for name in ("quality.json", "quality.md", "quality.png", "pareto.png"):
        assert (out / name).stat().st_size > 0, name
    assert check_report(rep) == []
    md = (out / "quality.md").read_text()
    assert "decode tok/s (1T / 2T)" in md and "PyTorch / ORT" in md


def test_every_ort_row_has_agreement_and_speed(report):
    rep, _ = report
    tol = rep["settings"]["ort"]["tolerance"]
    by_method = {}
    for row in rep["rows"]:
        by_method.setdefault(row["method"], []).append(row)
        if row["method"] in ("rtn", "mbq-random"):
            assert "speed" not in row  # a fake-quantized or randomly routed PyTorch model: no ORT graph
            continue
        assert set(row["speed"]) == {"1", "2"}
        for sp in row["speed"].values():
            assert math.isfinite(sp["decode_tok_s"]) and sp["decode_tok_s"] > 0
            assert math.isfinite(sp["prefill_tok_s"]) and sp["prefill_tok_s"] > 0
        if row["method"] != "matmul-nbits":
            assert set(row["ort"]["agreement"]) == set(rep["texts"])
            assert max(row["ort"]["agreement"].values()) <= tol
    assert len(by_method["mbq-uniform"]) == 3 and len(by_method["mbq-tau"]) == 2
    assert [r["bits"] for r in by_method["matmul-nbits"]] == [4, 8]


def test_forced_rows_decode_at_their_bits_and_tau_rows_inside_the_range(report):
    rep, _ = report
    for row in rep["rows"]:
        if row["method"] == "mbq-uniform":
            for sp in row["speed"].values():
                assert sp["decode_avg_bits_per_weight"] == pytest.approx(row["bits"])
        if row["method"] == "mbq-tau":
            for text, res in row["ort"]["results"].items():
                assert 4.0 <= res["avg_bits_per_weight"] <= 8.0
                assert res["avg_bits_per_weight"] == pytest.approx(
                    row["results"][text]["avg_bits_per_weight"], abs=0.05
                )
    taus = sorted((r for r in rep["rows"] if r["method"] == "mbq-tau"), key=lambda r: r["tau"])
    bits = [np.mean([res["avg_bits_per_weight"] for res in r["ort"]["results"].values()]) for r in taus]
    assert bits[0] > bits[1]  # higher τ → fewer slices, in ORT as in PyTorch


def test_ort_results_carry_intervals_and_paired_ratios(report):
    rep, out = report
    float_ort = next(r for r in rep["rows"] if r["method"] == "float")["ort"]["results"]
    for row in rep["rows"]:
        ort = row["results"] if row["method"] == "matmul-nbits" else (row.get("ort") or {}).get("results")
        if ort is None:
            continue
        for text, res in ort.items():
            assert res["ci95"][0] <= res["ppl"] <= res["ci95"][1]
            assert res["window_tokens"] == float_ort[text]["window_tokens"]  # the same windows as PyTorch
            if row["method"] != "float":
                assert res["vs_float"]["ratio"] == pytest.approx(res["ppl"] / float_ort[text]["ppl"])
    assert any(r["method"] == "mbq-random" for r in rep["rows"])  # τ rows get their random-routing rows
    assert "random routing" in (out / "quality.md").read_text()


def test_more_bits_never_cost_fewer_bytes(report):
    rep, _ = report
    for method in ("mbq-uniform", "matmul-nbits", "rtn"):
        rows = sorted((r for r in rep["rows"] if r["method"] == method), key=lambda r: r["bits"])
        sizes = [r["model_bytes"] for r in rows]
        assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), method


def test_check_report_catches_a_disagreeing_ort_row_and_a_bad_speed(report):
    rep, _ = report
    broken = copy.deepcopy(rep)
    row = next(r for r in broken["rows"] if r["method"] == "mbq-uniform")
    text = broken["texts"][0]
    row["ort"]["agreement"][text] = 0.05
    row["speed"]["1"]["decode_tok_s"] = float("nan")
    problems = check_report(broken)
    assert any("ORT perplexity differs" in p for p in problems)
    assert any("decode_tok_s" in p for p in problems)


def test_resume_reuses_rows_and_exports(tiny_pair, report, tmp_path):
    rep, out = report
    exports = tiny_pair[2] / "exports"
    stamps = {p: p.stat().st_mtime_ns for p in exports.rglob("model.onnx")}
    assert len(stamps) == 4  # float32, int4, int8, mixed-bit
    work = tmp_path / "again"
    work.mkdir()
    (work / "quality.json").write_text((out / "quality.json").read_text())
    again = _run(tiny_pair, work, "--resume", "--no-plot")
    assert [r["label"] for r in again["rows"]] == [r["label"] for r in rep["rows"]]
    assert {p: p.stat().st_mtime_ns for p in exports.rglob("model.onnx")} == stamps


def test_bad_ort_options_exit_2(tiny_pair, tmp_path, capsys):
    from mbq_onnx.eval.cli import main

    model_dir, artifact, _ = tiny_pair
    base = ["--artifact", str(artifact), "--model", str(model_dir), "--output", str(tmp_path)]
    for extra, message in (
        (["--threads", "0"], "thread counts must be >= 1"),
        (["--nbits", "3"], "MatMulNBits supports 2, 4 and 8"),
        (["--nbits-block", "24"], "power of two"),
        (["--ort-tolerance", "0"], "--ort-tolerance"),
    ):
        with pytest.raises(SystemExit) as e:
            main([*base, *extra])
        assert e.value.code == 2
        assert message in capsys.readouterr().err


def test_speed_needs_enough_tokens_and_positive_sizes(tiny_pair, report):
    from mbq_onnx.eval.speed import measure_speed
    from mbq_onnx.runtime import MbqSession

    session = MbqSession(next((tiny_pair[2] / "exports").rglob("mixed-bit")), threads=1)
    with pytest.raises(ValueError, match="needs 16 tokens, got 10"):
        measure_speed(session, np.arange(10), prompt_tokens=4, decode_tokens=8)
    with pytest.raises(ValueError, match="must be >= 1"):
        measure_speed(session, np.arange(100), repeats=0)
    sp = measure_speed(session, np.arange(100), force_slices=2, prompt_tokens=8, decode_tokens=4, repeats=1)
    assert sp.threads == 1 and sp.decode_avg_bits_per_weight == pytest.approx(6.0) and sp.decode_ms > 0


def test_int8_cost_pairs_each_int8_row_with_its_float_activation_twin(tiny_pair, tmp_path):
    """``--int8-cost``: MatMulNBits at accuracy_level 0 and 4, MoBiQuant's slice counts with int8
    activations, each int8 row with a paired ratio over its float-activation twin on the same windows."""
    rep = _run(tiny_pair, tmp_path, "--int8-cost", "--no-speed", "--taus", "none", "--no-plot")
    assert check_report(rep) == []
    rows = {r["label"]: r for r in rep["rows"]}
    int8 = [r for r in rep["rows"] if r["method"] == "mbq-int8act"]
    assert [(r["slices"], r["accuracy_level"]) for r in int8] == [(1, 4), (2, 4), (3, 4)]
    nbits = sorted((r["bits"], r["accuracy_level"]) for r in rep["rows"] if r["method"] == "matmul-nbits")
    assert nbits == [(4, 0), (4, 4), (8, 0), (8, 4)]
    for row in int8:
        twin_row = next(
            r for r in rep["rows"] if r["method"] == "mbq-uniform" and r["slices"] == row["slices"]
        )
        twin = twin_row["ort"]["results"]
        for text, res in row["results"].items():
            vs = res["vs_float_activations"]
            assert vs["ratio"] == pytest.approx(res["ppl"] / twin[text]["ppl"])
            assert vs["ci95"][0] <= vs["ratio"] <= vs["ci95"][1]
            assert res["ppl"] != twin[text]["ppl"]  # a different kernel path really ran
            nbits = rows.get(f"ORT MatMulNBits int{row['bits']} b16")
            if nbits is None:  # 6 bits: no MatMulNBits row to compare the cost with
                assert "int8_cost_vs_matmul_nbits" not in res
                continue
            theirs = nbits["results"][text]["vs_float_activations"]["ratio"]
            cost = res["int8_cost_vs_matmul_nbits"]
            assert cost["ratio"] == pytest.approx(vs["ratio"] / theirs)
            assert cost["ci95"][0] <= cost["ratio"] <= cost["ci95"][1]
    float_act = rows["ORT MatMulNBits int4 b16 float activations"]["results"]
    for text, res in rows["ORT MatMulNBits int4 b16"]["results"].items():
        assert res["vs_float_activations"]["ratio"] == pytest.approx(res["ppl"] / float_act[text]["ppl"])
        assert "vs_float_activations" not in float_act[text]
    assert "What int8 activations cost" in (tmp_path / "quality.md").read_text()


def test_resume_starts_afresh_for_another_artifact_or_a_recalibrated_one(report, tmp_path, capsys):
    """``--resume`` does not mix rows of two artifacts: it checks the artifact (folder and content)."""
    from mbq_onnx.eval.cli import _previous_rows

    rep, out = report
    settings, texts = copy.deepcopy(rep["settings"]), rep["texts"]
    assert settings["artifact_fingerprint"]
    assert _previous_rows(out, settings, texts)  # same settings: the rows are reused
    for key, value in (("artifact", "other-artifact"), ("artifact_fingerprint", "0" * 16)):
        changed = {**settings, key: value}
        assert _previous_rows(out, changed, texts) == {}
        assert f"other settings ({key})" in capsys.readouterr().err
