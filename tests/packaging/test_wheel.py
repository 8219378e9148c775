"""The package as users install it: ``python -m build`` (sdist, then a wheel built from it) compiles
``libmbq_ops`` into the wheel; the wheel installs into a fresh venv with only the light dependencies
(numpy, onnxruntime, tokenizers, tqdm from the package index; no torch) and generates with an exported
tiny model, loading the op library from the installed package.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from tiny_models import LEAN_GROUP, LEAN_HEADS, make_tiny_artifact, write_byte_tokenizer

REPO = Path(__file__).resolve().parents[2]
LIB = "mbq_onnx/lib/libmbq_ops.so"
LIGHT_DEPS = {"numpy", "onnxruntime", "tokenizers", "tqdm"}


def _env() -> dict[str, str]:
    """The caller's environment without anything that would point Python or the op lookup at this
    checkout; the ORT headers come from this checkout's cache (tools/setup.sh fetched them)."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MBQ_OPS_LIB"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.setdefault("MBQ_CACHE_DIR", str(REPO / ".cache"))
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}"
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """``python -m build`` of this checkout (sdist, then the wheel from the unpacked sdist)."""
    pytest.importorskip("build", reason="`build` is in the [dev] extra (tools/setup.sh installs it)")
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)], cwd=out, timeout=900)
    return out


def test_wheel_carries_the_op_library_and_the_sdist_can_build_it(dist):
    (wheel,) = dist.glob("mbq_onnx-*.whl")
    assert wheel.name.endswith(".whl") and "-py3-none-" in wheel.name and "-any." not in wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert LIB in names and "mbq_onnx/run.py" in names and "mbq_onnx/runtime/session.py" in names
    assert not {n for n in names if n.startswith(("tests/", "tools/", "custom_ops/"))}
    required = [line.split(":", 1)[1] for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    light = {re.match(r"\s*([A-Za-z0-9_.-]+)", r).group(1).lower() for r in required if "extra ==" not in r}
    assert light == LIGHT_DEPS
    (sdist,) = dist.glob("mbq_onnx-*.tar.gz")
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    assert {"CMakeLists.txt", "custom_ops/CMakeLists.txt", "tools/fetch_ort_sdk.py",
            "tools/build_backend/mbq_build_backend.py"} <= members  # fmt: skip
    assert not any(m.endswith(".so") for m in members)


@pytest.mark.filterwarnings("ignore:MixedBitMatMul op library not found")  # a checkout without a build
def test_fresh_venv_light_install_generates(dist, tmp_path):
    (wheel,) = dist.glob("mbq_onnx-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", str(wheel)], cwd=tmp_path, timeout=900)

    # A tiny exported lean model, without the copy of the op library the exporter puts beside it:
    # the runtime must find the one inside the installed wheel.
    write_byte_tokenizer(tmp_path / "tok")
    art = make_tiny_artifact(tmp_path / "art", group=LEAN_GROUP, tokenizer_dir=tmp_path / "tok", **LEAN_HEADS)
    from mbq_onnx.export.exporter import export_artifact

    model = Path(export_artifact(art, tmp_path / "model", progress=False))
    (model / "libmbq_ops.so").unlink(missing_ok=True)

    probe = (
        "import importlib.util as u, json, mbq_onnx, mbq_onnx.ops_lib as o; print(json.dumps({"
        "'pkg': mbq_onnx.__file__, 'lib': str(o.library_path()), 'torch': u.find_spec('torch') is not None,"
        "'transformers': u.find_spec('transformers') is not None}))"
    )
    facts = json.loads(_run([str(py), "-c", probe], cwd=tmp_path, timeout=120).stdout)
    assert Path(facts["pkg"]).is_relative_to(venv) and Path(facts["lib"]).is_relative_to(venv), facts
    assert not facts["torch"] and not facts["transformers"], facts

    proc = _run([str(py), "-m", "mbq_onnx.run", "--model", str(model), "--prompt", "Hello there",
                 "--max-new-tokens", "8", "--threads", "1", "--json"], cwd=tmp_path, timeout=300)  # fmt: skip
    record = json.loads(proc.stdout)
    assert record["summary"]["new_tokens"] >= 1, record["summary"]
    assert record["summary"]["prompt_tokens"] == len(b"Hello there")
    shutil.rmtree(venv, ignore_errors=True)
