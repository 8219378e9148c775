"""``python -m mbq_onnx.eval``: bad input fails early with a clear message and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mbq_onnx.eval.cli import main, pick_taus


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--texts", "sotu,shakespeare"], "unknown ['shakespeare']"),
        (["--baselines", "rtn,awq"], "unknown ['awq']"),
        (["--baselines", "single"], "--baselines single needs --artifact"),
        (["--taus", "0.5"], "--taus needs --artifact"),
        (["--bits", "4,9"], "bits 9 out of range"),
        (["--groups", "100"], "power of two"),
        (["--bits", "four"], "expected comma-separated integers"),
        (["--max-tokens", "1"], "--max-tokens 1 must be >= 2"),
        (["--window", "1"], "--window 1 must be >= 2"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--output", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_bad_taus_with_artifact_exit_2(tiny_artifact, capsys, tmp_path):
    art = tiny_artifact()
    with pytest.raises(SystemExit) as exc:
        main(["--artifact", str(art), "--taus", "0.5,1.5", "--output", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "strictly between 0 and 1" in capsys.readouterr().err


def test_missing_artifact_and_model_exit_1(capsys, tmp_path):
    assert main(["--artifact", str(tmp_path / "nope"), "--output", str(tmp_path / "r")]) == 1
    assert "does not exist" in capsys.readouterr().err
    not_an_artifact = tmp_path / "empty"
    not_an_artifact.mkdir()
    assert main(["--artifact", str(not_an_artifact), "--output", str(tmp_path / "r")]) == 1
    assert "missing config.json" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "no-model"), "--output", str(tmp_path / "r")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_output_that_is_a_file_is_rejected(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SystemExit):
        main(["--output", str(f)])
    assert "is not a directory" in capsys.readouterr().err


def test_module_entry_point_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mbq_onnx.eval", "--texts", "nope", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "--texts" in proc.stderr


def test_pick_taus_spreads_over_the_table():
    table = [{"tau": t / 20, "avg_bits_per_call": 8 - 4 * t / 20} for t in range(1, 20)]
    taus = pick_taus(table, 5)
    assert len(taus) == 5 and taus == sorted(taus)
    assert taus[0] == 0.05 and taus[-1] == 0.95
    assert pick_taus([], 3) == [0.1, 0.5, 0.9]
