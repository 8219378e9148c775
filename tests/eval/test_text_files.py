"""``python -m mbq_onnx.eval --text FILE``: any UTF-8 file scored next to the named texts, clear errors."""

from __future__ import annotations

import json

import pytest

from mbq_onnx.eval.cli import main

TEXT = (
    "It was a bright cold day in April, and the clocks were striking thirteen. The hallway smelt of boiled "
    "cabbage and old rag mats. At one end of it a coloured poster, too large for indoor display, had been "
    "tacked to the wall. "
)


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """(float model folder, artifact) of a 2-layer random LLaMA with SmolLM2's tokenizer (no ORT needed)."""
    from tiny_models import make_tiny_pair

    return make_tiny_pair(tmp_path_factory.mktemp("text-files"), tau_key="avg_bits")  # old key still loads


def _argv(tiny_pair, out, *extra):
    model_dir, artifact = tiny_pair
    return [
        "--artifact", str(artifact), "--model", str(model_dir), "--quick", "--baselines", "none",
        "--taus", "0.5", "--no-ort", "--no-plot", "--no-progress", "--output", str(out), *extra,
    ]  # fmt: skip


def test_text_file_scored_next_to_a_named_text(tiny_pair, tmp_path):
    story = tmp_path / "my story.txt"
    story.write_text(TEXT * 12, encoding="utf-8")
    out = tmp_path / "r"
    assert main(_argv(tiny_pair, out, "--texts", "sotu", "--text", str(story))) == 0
    rep = json.loads((out / "quality.json").read_text())
    assert rep["texts"] == ["sotu-2000+", "my story"]
    assert rep["settings"]["text_files"]["my story"]["file"].endswith("my story.txt")
    methods = {r["method"] for r in rep["rows"]}
    assert methods == {"float", "mbq-uniform", "mbq-tau", "mbq-random"}
    for row in rep["rows"]:
        res = row["results"]["my story"]
        assert res["windows"] == 2 and res["window"] == 256  # --quick: 512 tokens in 256-token windows
        assert res["ci95"][0] <= res["ppl"] <= res["ci95"][1]
    md = (out / "quality.md").read_text()
    assert "ppl my story" in md and "ppl sotu-2000+" in md
    tau = next(r for r in rep["rows"] if r["method"] == "mbq-tau")
    assert {"interpolated_ppl", "random_ppl", "below_both"} <= set(tau["results"]["my story"])


def test_only_text_files(tiny_pair, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.md"
    a.write_text(TEXT * 12)
    b.write_text("\ufeff" + TEXT[::-1] * 12)  # a BOM is fine
    out = tmp_path / "r"
    assert (
        main(_argv(tiny_pair, out, "--texts", "none", "--text", str(a), "--text", str(b), "--no-random")) == 0
    )
    rep = json.loads((out / "quality.json").read_text())
    assert rep["texts"] == ["a", "b"]
    assert "mbq-random" not in {r["method"] for r in rep["rows"]}


def test_file_errors_name_the_file(tiny_pair, tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    assert main(_argv(tiny_pair, tmp_path / "r", "--text", str(missing))) == 1
    assert f"--text {missing}: the file does not exist" in capsys.readouterr().err

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("naïve café".encode("latin-1"))
    assert main(_argv(tiny_pair, tmp_path / "r", "--text", str(latin1))) == 1
    err = capsys.readouterr().err
    assert f"--text {latin1}: not UTF-8 text (invalid byte 0xef at offset 2)" in err

    assert main(_argv(tiny_pair, tmp_path / "r", "--text", str(tmp_path))) == 1
    assert "not a regular file" in capsys.readouterr().err

    short = tmp_path / "short.txt"
    short.write_text("Call me Ishmael.")
    assert main(_argv(tiny_pair, tmp_path / "r", "--texts", "none", "--text", str(short))) == 1
    assert (
        f"--text {short}: 4 tokens, need at least 256 (one window of --window 256)" in capsys.readouterr().err
    )
    assert not (tmp_path / "r").exists()


def test_text_usage_errors_exit_2(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    one, two = tmp_path / "sotu-2000+.txt", tmp_path / "x" / "sotu-2000+.txt"
    for argv, message in [
        (["--texts", "none"], "--texts none needs at least one --text FILE"),
        (["--text", str(one), "--text", str(two), "--texts", "none"], "not unique"),
        (["--text", str(one)], "not unique"),  # clashes with the named SOTU text
    ]:
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--output", str(tmp_path / "r")])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
