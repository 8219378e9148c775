"""``resolve_plan``: the command line checked and resolved into what will be evaluated, before any model
loads or any file is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from mbq_onnx.eval.cli import UsageError, build_parser, resolve_plan
from mbq_onnx.eval.methods import METHOD_KEYS


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A folder that passes for an HF model (resolve_plan only checks it; nothing loads it)."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def _plan(*argv: str):
    return resolve_plan(build_parser().parse_args(list(argv)))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--texts", "sotu,shakespeare"], "--texts 'sotu,shakespeare': unknown ['shakespeare']"),
        (["--texts", "none"], "--texts none needs at least one --text FILE"),
        (["--baselines", "rtn,awq"], "--baselines 'rtn,awq': unknown ['awq']"),
        (["--baselines", "single"], "--baselines single needs --artifact"),
        (["--taus", "0.5"], "--taus needs --artifact"),
        (["--bits", "four"], "--bits 'four': expected comma-separated integers"),
        (["--bits", "4,9"], "--bits/--groups"),
        (["--groups", "100"], "--bits/--groups"),
        (["--window", "1"], "--window 1 must be >= 2"),
        (["--max-tokens", "1"], "--max-tokens 1 must be >= 2"),
        (["--max-windows", "0"], "--max-windows 0 must be >= 1"),
        (["--threads", "0"], "--threads 0: thread counts must be >= 1"),
        (["--nbits", "3"], "--nbits 3: MatMulNBits supports 2, 4 and 8 bits"),
        (["--nbits-block", "24"], "--nbits-block 24 must be a power of two"),
        (["--ort-tolerance", "1.5"], "--ort-tolerance 1.5 must lie in (0, 1)"),
        (["--prompt-tokens", "0"], "--prompt-tokens 0 must be >= 1"),
    ],
)
def test_errors_name_the_bad_argument(argv, message, model_dir, tmp_path):
    with pytest.raises(UsageError) as exc:
        _plan(*argv, "--model", str(model_dir), "--output", str(tmp_path / "r"))
    assert message in str(exc.value)
    assert not (tmp_path / "r").exists()


def test_bad_paths(model_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match=r"--output .* exists and is not a directory"):
        _plan("--model", str(model_dir), "--output", str(tmp_path / "file"))
    with pytest.raises(FileNotFoundError, match=r"--text .*missing\.txt: the file does not exist"):
        _plan("--model", str(model_dir), "--text", str(tmp_path / "missing.txt"))


def test_without_an_artifact_float_and_the_rtn_gptq_baselines(model_dir, tmp_path):
    plan = _plan("--model", str(model_dir), "--output", str(tmp_path / "r"), "--no-ort", "--bits", "4,8,4")
    assert plan.labels == [
        "float32",
        "RTN 4-bit g128",
        "RTN 8-bit g128",
        "GPTQ 4-bit g128",
        "GPTQ 8-bit g128",
    ]
    assert plan.texts == ["sotu-2000+", "moby-dick"] and plan.window == 2048 and plan.max_tokens is None
    assert plan.gptq_calibration == (32, 512) and plan.single_config is None and plan.ort is None
    assert not (tmp_path / "r").exists()


def test_with_an_artifact_every_method_in_table_order(tiny_artifact, model_dir, tmp_path):
    story = tmp_path / "story.txt"
    story.write_text("Call me Ishmael. " * 50)
    plan = _plan(
        "--artifact", str(tiny_artifact()), "--model", str(model_dir), "--quick", "--bits", "4,8",
        "--taus", "0.3,0.7", "--texts", "moby", "--text", str(story), "--exports", str(tmp_path / "exports"),
        "--output", str(tmp_path / "r"), "--int8-cost", "--oracle",
    )  # fmt: skip
    methods = [v.method for v in plan.variants]
    assert methods == sorted(methods, key=METHOD_KEYS.index)
    assert set(methods) == set(METHOD_KEYS)  # an artifact, ORT, --int8-cost, --oracle: every method has rows
    assert plan.labels == [
        "float32",
        "RTN 4-bit g16", "RTN 8-bit g16",
        "GPTQ 4-bit g16", "GPTQ 8-bit g16",
        "single-precision calib 4-bit", "single-precision calib 8-bit",  # --bits: baselines only
        "MoBiQuant 1 slice (4-bit)", "MoBiQuant 2 slices (6-bit)", "MoBiQuant 3 slices (8-bit)",
        "MoBiQuant τ=0.3", "MoBiQuant τ=0.7",
        "MoBiQuant random routing (bits of τ=0.3)", "MoBiQuant random routing (bits of τ=0.7)",
        "MoBiQuant oracle routing (bits of τ=0.3)", "MoBiQuant oracle routing (bits of τ=0.7)",
        "MoBiQuant 1 slice (4-bit), int8 activations", "MoBiQuant 2 slices (6-bit), int8 activations",
        "MoBiQuant 3 slices (8-bit), int8 activations",
        "ORT MatMulNBits int4 b16", "ORT MatMulNBits int8 b16",
        "ORT MatMulNBits int4 b16 float activations", "ORT MatMulNBits int8 b16 float activations",
    ]  # fmt: skip
    assert plan.texts == ["moby-dick", "story"] and plan.file_texts["story"].startswith("Call me")
    assert (plan.window, plan.max_tokens) == (256, 512)  # --quick
    assert plan.gptq_calibration == (4, 128) and plan.single_calibration == (4, 128)
    assert plan.single_config.epochs == 1 and plan.group_size == 16
    assert plan.ort.nbits_block == 16 and plan.ort.prompt_tokens == 32  # the artifact's group size, --quick
    assert not (tmp_path / "r").exists() and not (tmp_path / "exports").exists()


def test_options_that_drop_rows(tiny_artifact, model_dir, tmp_path):
    plan = _plan(
        "--artifact", str(tiny_artifact()), "--model", str(model_dir), "--baselines", "none", "--taus", "0.5",
        "--no-uniform", "--no-random", "--no-ort", "--output", str(tmp_path / "r"),
    )  # fmt: skip
    assert plan.labels == ["float32", "MoBiQuant τ=0.5"]
