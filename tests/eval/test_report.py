"""Quality report on the tiny model: every kind of row, well-formed files, ordering physics demands."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from mbq_onnx.baselines import BaselineSpec
from mbq_onnx.eval import check_report, markdown_table, write_report
from mbq_onnx.eval import variants as V
from mbq_onnx.eval.report import new_report
from mbq_onnx.model.artifact import load_artifact


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from tiny_models import make_router_spread, make_tiny_llama  # the factories behind the fixtures

    def tiny_artifact(granularity: str):
        from mbq_onnx.model import quantize_model, save_artifact
        from mbq_onnx.quant.spec import QuantSpec

        spec = QuantSpec((4, 2, 2), 16)
        model = make_tiny_llama(0)
        quantize_model(model, spec, granularity=granularity, router_hidden=8, seed=0)
        make_router_spread(model, 0)
        return save_artifact(tmp_path_factory.mktemp("art") / f"a-{granularity}", model, spec)

    rng = np.random.default_rng(0)
    setup = V.EvalSetup(
        texts={"a": rng.integers(0, 256, 192), "b": rng.integers(0, 256, 192)}, window=64, progress=False
    )
    rep = new_report({"window": 64, "group_size": 16, "model_name": "tiny"}, ["a", "b"])
    rows = rep["rows"]
    rows.append(V.eval_float(setup, make_tiny_llama))
    for bits in (4, 6, 8):
        rows.append(V.eval_rtn(setup, make_tiny_llama, BaselineSpec(bits, 16)))
    samples = rng.integers(0, 256, (4, 64))
    import torch

    rows.append(V.eval_gptq(setup, make_tiny_llama, BaselineSpec(4, 16), torch.as_tensor(samples)))
    for gran in ("linear", "block"):
        art = load_artifact(tiny_artifact(gran))
        mbq = V.load_mobiquant(art)
        for k in (1, 2, 3):
            rows.append(V.eval_mbq_uniform(setup, art, k, model=mbq))
        for tau in (0.2, 0.5, 0.8):
            row = V.eval_mbq_tau(setup, art, tau, model=mbq)
            row["granularity"] = gran
            rows.append(row)
    out = tmp_path_factory.mktemp("reports")
    paths = write_report(rep, out)
    return rep, paths


def test_files_are_well_formed(report):
    rep, paths = report
    assert check_report(rep) == []
    loaded = json.loads(paths["json"].read_text())
    assert loaded == json.loads(json.dumps(rep))
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = paths["md"].read_text()
    assert table == markdown_table(rep)
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == 1 + len(rep["rows"])


def test_numbers_are_finite_and_ordered(report):
    rep, _ = report
    rows = rep["rows"]
    by_label = {r["label"]: r for r in rows}
    assert all(np.isfinite(r["results"][t]["ppl"]) for r in rows for t in rep["texts"])
    # more bits never cost fewer bytes; float is the largest
    arts = {r.get("artifact") for r in rows if r["method"] == "mbq-uniform"}
    assert len(arts) == 2
    for method, art in [("rtn", None), *(("mbq-uniform", a) for a in arts)]:
        fam = sorted(
            (r for r in rows if r["method"] == method and r.get("artifact") == art), key=lambda r: r["bits"]
        )
        assert [r["model_bytes"] for r in fam] == sorted(r["model_bytes"] for r in fam)
        assert fam[0]["model_bytes"] < fam[-1]["model_bytes"]
    assert by_label["float32"]["model_bytes"] == max(r["model_bytes"] for r in rows)
    # 8-bit RTN is nearly the float model; 4-bit is further away
    for t in rep["texts"]:
        f = by_label["float32"]["results"][t]["ppl"]
        assert abs(by_label["RTN 8-bit g16"]["results"][t]["ppl"] / f - 1) < abs(
            by_label["RTN 4-bit g16"]["results"][t]["ppl"] / f - 1
        )


@pytest.mark.parametrize("gran", ["linear", "block"])
def test_tau_sweep_average_bits_fall_with_tau_within_the_slice_range(report, gran):
    rep, _ = report
    taus = sorted(
        (r for r in rep["rows"] if r["method"] == "mbq-tau" and r["granularity"] == gran),
        key=lambda r: r["tau"],
    )
    for t in rep["texts"]:
        bits = [r["results"][t]["avg_bits"] for r in taus]
        assert all(4.0 <= b <= 8.0 for b in bits)
        assert bits == sorted(bits, reverse=True)  # higher τ → fewer slices
        assert bits[0] > bits[-1]  # the spread routers actually route


def test_uniform_counts_reproduce_forced_precision(report):
    rep, _ = report
    uniform = [r for r in rep["rows"] if r["method"] == "mbq-uniform"]
    assert sorted({r["results"]["a"]["avg_bits"] for r in uniform}) == [4.0, 6.0, 8.0]


def test_check_report_catches_broken_reports(report):
    rep, _ = report
    bad = copy.deepcopy(rep)
    rtn8 = next(r for r in bad["rows"] if r["label"] == "RTN 8-bit g16")
    rtn8["model_bytes"] = 1
    bad["rows"][1]["results"]["a"]["ppl"] = float("nan")
    problems = check_report(bad)
    assert any("fewer bytes" in p for p in problems)
    assert any("not a finite number" in p for p in problems)
    assert check_report({"format": "x", "texts": [], "rows": []})
