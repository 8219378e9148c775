"""The ``python -m mbq_onnx.export`` CLI: --help, clear errors, atomic output, the MatMulNBits baseline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from export_testlib import OrtLM, open_lm

from mbq_onnx.export.cli import main as export_main
from mbq_onnx.export.matmul_nbits import main as nbits_main

FLAGS = (
    "--artifact",
    "--hf-model",
    "--output",
    "--with-past",
    "--no-past",
    "--ort",
    "--opset",
    "--reference",
    "--reference-slices",
    "--accuracy-level",
    "--overwrite",
    "--quiet",
)


def test_help_documents_every_flag():
    out = subprocess.run(
        [sys.executable, "-m", "mbq_onnx.export", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in FLAGS:
        assert flag in out, flag
    nbits = subprocess.run(
        [sys.executable, "-m", "mbq_onnx.export.matmul_nbits", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in ("--input", "--output", "--bits", "--block-size", "--symmetric", "--accuracy-level"):
        assert flag in nbits, flag


@pytest.fixture
def art_copy(tiny_art, tmp_path):
    return shutil.copytree(tiny_art, tmp_path / "artifact")


def _fails(capsys, argv, *needles):
    assert export_main(argv) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    return err


def _no_leftovers(parent):
    assert not [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_missing_artifact(tmp_path, capsys):
    _fails(
        capsys, ["--artifact", str(tmp_path / "nope"), "--output", str(tmp_path / "out")], "does not exist"
    )
    assert not (tmp_path / "out").exists()


def test_corrupt_weights(art_copy, tmp_path, capsys):
    (art_copy / "weights.safetensors").write_bytes(b"\x00garbage" * 10)
    _fails(
        capsys,
        ["--artifact", str(art_copy), "--output", str(tmp_path / "out")],
        "weights.safetensors",
        "not a readable safetensors",
    )


def test_missing_config(art_copy, tmp_path, capsys):
    (art_copy / "config.json").unlink()
    _fails(capsys, ["--artifact", str(art_copy), "--output", str(tmp_path / "out")], "missing config.json")


def test_config_weights_mismatch(art_copy, tmp_path, capsys):
    cfg = json.loads((art_copy / "config.json").read_text())
    cfg["quantized"]["model.layers.0.mlp.up_proj"]["out_features"] = 96
    (art_copy / "config.json").write_text(json.dumps(cfg))
    _fails(
        capsys,
        ["--artifact", str(art_copy), "--output", str(tmp_path / "out")],
        "model.layers.0.mlp.up_proj",
        "do not match",
    )


def test_unsupported_architecture(art_copy, tmp_path, capsys):
    cfg = json.loads((art_copy / "config.json").read_text())
    cfg["hf_config"]["model_type"] = "gpt2"
    (art_copy / "config.json").write_text(json.dumps(cfg))
    _fails(
        capsys,
        ["--artifact", str(art_copy), "--output", str(tmp_path / "out")],
        "unsupported architecture",
        "'gpt2'",
    )


def test_bad_options(tiny_art, tmp_path, capsys):
    out = str(tmp_path / "out")
    _fails(
        capsys,
        ["--artifact", str(tiny_art), "--output", out, "--reference", "--reference-slices", "4"],
        "--reference-slices 4",
        "1..3",
    )
    _fails(
        capsys, ["--artifact", str(tiny_art), "--output", out, "--reference-slices", "2"], "needs --reference"
    )
    _fails(
        capsys,
        ["--artifact", str(tiny_art), "--output", out, "--accuracy-level", "3"],
        "--accuracy-level 3",
        "0, 4",
    )
    _fails(
        capsys,
        ["--artifact", str(tiny_art), "--output", out, "--reference", "--accuracy-level", "4"],
        "--accuracy-level",
        "--reference",
    )
    with pytest.raises(SystemExit):
        export_main(["--output", out])  # neither --artifact nor --hf-model
    with pytest.raises(SystemExit):
        export_main(["--artifact", str(tiny_art), "--output", out, "--with-past", "--no-past"])


def test_failed_export_leaves_no_output(tiny_art, tmp_path, capsys):
    """A failure after the temporary directory exists (here: an opset below the minimum) removes it."""
    _fails(
        capsys,
        ["--artifact", str(tiny_art), "--output", str(tmp_path / "out"), "--opset", "11", "--quiet"],
        "--opset 11",
    )
    assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path)


def test_existing_output_is_kept_without_overwrite(tiny_art, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    _fails(capsys, ["--artifact", str(tiny_art), "--output", str(tmp_path / "out")], "exists", "--overwrite")
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"


def test_cli_reference_then_matmul_nbits(tiny_art, tiny_export, tmp_path, capsys):
    """CLI --reference --no-past, then int8/int4 MatMulNBits from it: real ORT sessions, sensible logits."""
    ref = tmp_path / "ref"
    assert (
        export_main(
            [
                "--artifact",
                str(tiny_art),
                "--output",
                str(ref),
                "--reference",
                "--no-past",
                "--quiet",
                "--overwrite",
            ]
        )
        == 0
    )
    assert f"exported {ref}" in capsys.readouterr().out
    ids = np.random.default_rng(0).integers(0, 256, (2, 12))
    float_logits = open_lm(ref).run(ids)["logits"]
    mixed = open_lm(tiny_export).run(ids, force=3)["logits"][:, -1]  # same weights, KV-cache graph
    np.testing.assert_allclose(float_logits[:, -1], mixed, atol=1e-4)
    errors = {}
    for bits in (8, 4):
        out = tmp_path / f"int{bits}"
        assert (
            nbits_main(["--input", str(ref), "--output", str(out), "--bits", str(bits), "--block-size", "16"])
            == 0
        )
        lm = open_lm(out)
        cfg = lm.config
        assert cfg["kind"] == "matmul_nbits" and cfg["matmul_nbits"]["bits"] == bits
        import onnx

        ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
        assert (
            ops.count("MatMulNBits") == 14
            and (out / "model.onnx").stat().st_size < (ref / "model.onnx").stat().st_size
        )
        errors[bits] = np.abs(lm.run(ids)["logits"] - float_logits).max()
    assert errors[8] < errors[4] < 0.5 * np.abs(float_logits).max()
    assert (
        nbits_main(["--input", str(tiny_export), "--output", str(tmp_path / "bad")]) == 2
    )  # mixed-bit input


def test_hf_model_float_export(tmp_path, capsys):
    """--hf-model: an unquantized transformers folder → float32 KV-cache graph matching transformers."""
    import torch
    from tiny_models import make_tiny_llama

    model = make_tiny_llama(seed=4, tie_word_embeddings=False)
    model.save_pretrained(tmp_path / "hf")
    out = tmp_path / "float"
    assert export_main(["--hf-model", str(tmp_path / "hf"), "--output", str(out), "--quiet"]) == 0
    lm = open_lm(out)
    assert lm.config["kind"] == "float" and lm.config["custom_op_library"] is None
    assert "tau" not in lm.input_names
    ids = np.random.default_rng(2).integers(0, 256, (1, 5))
    first = lm.run(ids)
    second = lm.run(np.array([[7]]), past=OrtLM.present_as_past(first))
    with torch.no_grad():
        ref = model(torch.as_tensor(np.concatenate([ids, [[7]]], axis=1))).logits.numpy()
    np.testing.assert_allclose(first["logits"], ref[:, :5], atol=1e-4)
    np.testing.assert_allclose(second["logits"], ref[:, 5:], atol=1e-4)
