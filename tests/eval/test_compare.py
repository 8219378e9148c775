"""``python -m mbq_onnx.eval.compare``: two real reports of tiny calibrations, paired row by row."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mbq_onnx.eval import variants as V
from mbq_onnx.eval import write_report
from mbq_onnx.eval.compare import CompareError, compare_reports, load_report, main
from mbq_onnx.eval.report import new_report


def _report(tmp_path_factory, group: int, window: int) -> dict:
    from tiny_models import make_tiny_llama

    from mbq_onnx.model import quantize_model, save_artifact
    from mbq_onnx.model.artifact import load_artifact
    from mbq_onnx.quant.spec import QuantSpec

    spec = QuantSpec((4, 2, 2), group)
    model = make_tiny_llama(0)
    quantize_model(model, spec, granularity="linear", router_hidden=8)
    art = load_artifact(save_artifact(tmp_path_factory.mktemp("art") / f"g{group}", model, spec))
    rng = np.random.default_rng(0)  # the same texts for every report
    setup = V.EvalSetup(
        texts={"a": rng.integers(0, 256, 192), "b": rng.integers(0, 256, 192)}, window=window, progress=False
    )
    rep = new_report({"window": window, "group_size": group, "model_name": "tiny"}, ["a", "b"])
    mbq = V.load_mobiquant(art)
    rep["rows"] += [V.eval_float(setup, make_tiny_llama)]
    rep["rows"] += [V.eval_mbq_uniform(setup, art, k, model=mbq) for k in (1, 3)]
    return rep


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    paths = {}
    for name, group, window in (("base", 16, 64), ("new", 32, 64), ("other_windows", 16, 48)):
        write_report(_report(tmp_path_factory, group, window), out / name)
        paths[name] = out / name / "quality.json"
    return paths


def test_a_report_against_itself_is_a_ratio_of_one(reports):
    rep = load_report(reports["base"])
    entries = compare_reports(rep, rep)
    assert {(e["label"], e["text"]) for e in entries} == {
        (r["label"], t) for r in rep["rows"] for t in ("a", "b")
    }
    for e in entries:
        assert e["paired"]["ratio"] == pytest.approx(1.0)
        assert e["paired"]["ci95"] == pytest.approx([1.0, 1.0])


def test_paired_ratio_is_the_perplexity_ratio_inside_its_interval(reports):
    new, base = load_report(reports["new"]), load_report(reports["base"])
    entries = compare_reports(new, base)
    assert len(entries) == 6  # float + 1 and 3 slices, two texts
    differs = False
    for e in entries:
        ratio, (lo, hi) = e["paired"]["ratio"], e["paired"]["ci95"]
        assert ratio == pytest.approx(e["new_ppl"] / e["base_ppl"], rel=1e-6)
        assert lo <= ratio <= hi
        if e["label"] == "float32":
            assert ratio == pytest.approx(1.0)  # the float rows are the same model
        differs |= not math.isclose(ratio, 1.0, rel_tol=1e-9)
    assert differs, "g16 and g32 quantizations gave identical rows"


def test_reports_on_other_windows_cannot_be_paired(reports):
    with pytest.raises(CompareError, match="same windows"):
        compare_reports(load_report(reports["other_windows"]), load_report(reports["base"]))


def test_nothing_in_common_is_an_error(reports):
    base = load_report(reports["base"])
    renamed = json.loads(json.dumps(base))
    for row in renamed["rows"]:
        row["label"] += " (renamed)"
    with pytest.raises(CompareError, match="share no row label"):
        compare_reports(renamed, base)


def test_cli_names_a_bad_file_and_writes_the_table(reports, tmp_path, capsys):
    bad = tmp_path / "not_a_report.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(SystemExit) as exc:
        main([str(bad), str(reports["base"])])
    assert exc.value.code == 2
    assert "not_a_report.json" in capsys.readouterr().err
    out = tmp_path / "cmp.md"
    assert main([str(reports["new"]), str(reports["base"]), "--output", str(out)]) == 0
    table = out.read_text()
    assert table == capsys.readouterr().out
    assert table.count("\n") == 2 + 6 and "MoBiQuant 1 slice (4-bit)" in table
