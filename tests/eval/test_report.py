"""Quality report on the tiny model: every kind of row, well-formed files, ordering physics demands."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from mbq_onnx.baselines import BaselineSpec
from mbq_onnx.eval import check_report, markdown_table, write_report
from mbq_onnx.eval import variants as V
from mbq_onnx.eval.perplexity import bootstrap_ppl
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
            rnd = V.eval_mbq_random(setup, art, row, model=mbq)
            rnd["granularity"] = gran
            rows.append(rnd)
            if gran == "linear":
                rows.append(V.eval_mbq_oracle(setup, art, row, model=mbq))
            else:
                with pytest.raises(ValueError, match="oracle routing needs per-linear routers"):
                    V.eval_mbq_oracle(setup, art, row, model=mbq)
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
    main_table = table.split("\n\n")[0]
    assert len([line for line in main_table.splitlines() if line.startswith("| ")]) == 1 + len(rep["rows"])


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
        bits = [r["results"][t]["avg_bits_per_weight"] for r in taus]
        assert all(4.0 <= b <= 8.0 for b in bits)
        assert bits == sorted(bits, reverse=True)  # higher τ → fewer slices
        assert bits[0] > bits[-1]  # the spread routers actually route


def test_uniform_counts_reproduce_forced_precision(report):
    rep, _ = report
    uniform = [r for r in rep["rows"] if r["method"] == "mbq-uniform"]
    assert sorted({r["results"]["a"]["avg_bits_per_weight"] for r in uniform}) == [4.0, 6.0, 8.0]


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


def test_report_carries_intervals_and_per_window_data(report):
    _, paths = report
    loaded = json.loads(paths["json"].read_text())
    assert loaded["settings"]["bootstrap"] == {"resamples": 1000, "seed": 0, "level": 0.95, "over": "windows"}
    table = paths["md"].read_text()
    for row in loaded["rows"]:
        for t in loaded["texts"]:
            res = row["results"][t]
            lo, hi = res["ci95"]
            assert lo <= res["ppl"] <= hi
            assert len(res["window_nll"]) == len(res["window_tokens"]) == res["windows"] == 3
            assert sum(res["window_tokens"]) == res["tokens"]
            assert sum(res["window_nll"]) == pytest.approx(res["nll"])
            # the interval can be recomputed from the stored windows
            assert tuple(res["ci95"]) == pytest.approx(bootstrap_ppl(res["window_nll"], res["window_tokens"]))
            assert f"{res['ppl']:.2f} [{lo:.2f}, {hi:.2f}]" in table
            if row["method"] != "float":  # paired with float32 on the same windows
                pair = res["vs_float"]
                assert pair["ci95"][0] <= pair["ratio"] <= pair["ci95"][1]
                assert pair["ratio"] == pytest.approx(
                    res["ppl"]
                    / next(r for r in loaded["rows"] if r["method"] == "float")["results"][t]["ppl"]
                )
    assert "95 % bootstrap interval over windows (1000 resamples, seed 0)" in table


def test_tau_rows_compare_with_interpolation_and_random_routing(report):
    rep, paths = report
    rows = rep["rows"]
    table = paths["md"].read_text()
    assert "alternating (interpolated)" in table and "random routing" in table
    for row in (r for r in rows if r["method"] == "mbq-tau"):
        rnd = next(
            r
            for r in rows
            if r["method"] == "mbq-random" and r["tau"] == row["tau"] and r["artifact"] == row["artifact"]
        )
        uniform = {
            r["slices"]: r for r in rows if r["method"] == "mbq-uniform" and r["artifact"] == row["artifact"]
        }
        for t in rep["texts"]:
            res = row["results"][t]
            b = res["avg_bits_per_weight"]
            lo_b, hi_b = res["interpolated_between"]
            assert lo_b <= b <= hi_b and hi_b - lo_b == 2
            p_lo = uniform[(lo_b - 2) // 2]["results"][t]["ppl"]
            p_hi = uniform[(hi_b - 2) // 2]["results"][t]["ppl"]
            assert res["interpolated_ppl"] == pytest.approx(p_lo + (b - lo_b) / 2 * (p_hi - p_lo))
            assert res["random_ppl"] == rnd["results"][t]["ppl"]
            assert res["below_both"] == (
                res["ppl"] < res["interpolated_ppl"] and res["ppl"] < res["random_ppl"]
            )
            assert res["vs_random"]["ratio"] == pytest.approx(res["ppl"] / res["random_ppl"])
            # random routing spends the τ row's bits (independent draws over 3 x 64 tokens x 14 calls)
            assert rnd["results"][t]["target_bits_per_weight"] == b
            assert rnd["results"][t]["avg_bits_per_weight"] == pytest.approx(b, abs=0.15)
            oracle = [
                r
                for r in rows
                if r["method"] == "mbq-oracle" and r["tau"] == row["tau"] and r["artifact"] == row["artifact"]
            ]
            if row["granularity"] == "block":
                assert not oracle and res.get("oracle_ppl") is None
                continue
            # the oracle gives the same share of every call's tokens the extra slice: the τ row's bits
            assert res["oracle_ppl"] == oracle[0]["results"][t]["ppl"]
            assert res["vs_oracle"]["ratio"] == pytest.approx(res["ppl"] / res["oracle_ppl"])
            assert oracle[0]["results"][t]["avg_bits_per_weight"] == pytest.approx(b, abs=0.05)
    assert "oracle routing" in table and "τ vs oracle (paired)" in table


def test_old_reports_with_avg_bits_still_read(report):
    rep, _ = report
    old = copy.deepcopy(rep)
    for row in old["rows"]:
        for res in row["results"].values():
            res["avg_bits"] = res.pop("avg_bits_per_weight")
    assert check_report(old) == []
    assert markdown_table(old) == markdown_table(rep)
