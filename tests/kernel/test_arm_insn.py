"""tools/bench_arm_insn.py --quick: dynamic instruction counts of MixedBitMatMul's arm64 kernels and of ORT's
MatMulNBits under qemu-user (one shape, M=1, models with the op 1, 2 and 4 times).

Real behaviour only, no timing and no fixed counts: the counter passes its own exactness check, every
per-op count is positive, the count grows linearly with the number of op nodes, 3 slices execute more
instructions than 2 and 2 more than 1, the forced DotProd table really executes SDOT on the int8 path,
and the JSON has the documented fields (custom_ops/README.md, "arm64: instruction counts under qemu").
Same requirements and skips as test_qemu_arm64.py (root, qemu-user with plugin support, the cross
toolchain, cmake).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOL = REPO_ROOT / "tools" / "bench_arm_insn.py"
sys.path.insert(0, str(TOOL.parent))
from bench_arm_insn import missing_requirement  # noqa: E402

pytestmark = pytest.mark.qemu

_REASON = missing_requirement()
if _REASON:
    pytest.skip(_REASON, allow_module_level=True)

ROW_FIELDS = {
    "cpu",
    "op",
    "variant",
    "accuracy_level",
    "bits",
    "slices",
    "K",
    "N",
    "M",
    "kernel",
    "path",
    "counts_per_run",
    "insns_per_call",
    "insns_per_weight",
    "insns_per_mac",
    "insns_per_column",
    "share_in_op_library",
    "share_in_onnxruntime",
    "dot_family_per_call",
    "top_mnemonics_per_call",
    "measured_runs",
    "non_exclusive_runs",
    "exclusive",
    "run_spread",
    "scaling",
}
SUMMARY_FIELDS = {
    "cpu",
    "K",
    "N",
    "M",
    *(f"mbq{s}_acc{a}" for s in (1, 2, 3) for a in (0, 4)),
    *(f"nbits{b}_acc{a}" for b in (4, 8) for a in (0, 4)),
    *(f"ratio_{b}b_{x}" for b in (4, 8) for x in ("acc0", "acc4", "best")),
}
TOP_FIELDS = {
    "tool",
    "what",
    "method",
    "machine",
    "cpus",
    "kernels",
    "group_size",
    "slice_bits",
    "shapes",
    "ms",
    "nodes",
    "repeat",
    "quick",
    "counter_check",
    "reruns",
    "results",
    "summary",
    "elapsed_s",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("arm_insn")
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--quick", "--out-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "arm_insn.png").stat().st_size > 0
    return json.loads((out / "arm_insn.json").read_text())


def test_fields(report):
    assert set(report) >= TOP_FIELDS, TOP_FIELDS - set(report)
    assert report["quick"] is True and report["nodes"] == [1, 2, 4]
    assert report["machine"]["qemu"].startswith("qemu-aarch64 version")
    assert report["kernels"] == {"cortex-a76": "neon_dotprod"}
    assert len(report["results"]) == 10  # ours 2 accuracy levels x 3 slice counts + MatMulNBits 2 bits x 2
    for row in report["results"]:
        assert set(row) >= ROW_FIELDS, (row["variant"], ROW_FIELDS - set(row))
    assert len(report["summary"]) == 1 and set(report["summary"][0]) >= SUMMARY_FIELDS


def test_counter_check_is_exact(report):
    check = report["counter_check"]
    assert check["exact"] is True
    for key in ("scalar_loop_delta", "sdot_loop_delta", "sdot_mnemonic_delta"):
        assert check[key]["counted"] == check[key]["expected"] > 0, key
    log = check["whole_program_vs_qemu_exec_log"]
    assert log["plugin_total"] == log["exec_log_total"] > 0


def test_counts_positive_and_linear_in_op_copies(report):
    for row in report["results"]:
        counts = [row["counts_per_run"][str(c)] for c in report["nodes"]]
        assert 0 < counts[0] < counts[1] < counts[2], (row["variant"], counts)
        assert row["insns_per_call"] > 0 and row["insns_per_weight"] > 0, row["variant"]
        # Going from 2 to 4 copies adds twice what going from 1 to 2 adds (per-op cost independent of copies).
        assert row["scaling"]["nodes"] == [1, 2, 4]
        assert 0.95 < row["scaling"]["ratio"] < 1.05, (row["variant"], row["scaling"])
        assert row["insns_per_weight"] == pytest.approx(row["insns_per_call"] / (row["K"] * row["N"]))


def test_more_slices_execute_more_instructions(report):
    for acc in (0, 4):
        per_call = {
            r["slices"]: r["insns_per_call"]
            for r in report["results"]
            if r["op"] == "mbq" and r["accuracy_level"] == acc
        }
        assert per_call[1] < per_call[2] < per_call[3], (acc, per_call)


def test_paths_are_the_forced_tables(report):
    """The op's instructions run in libmbq_ops; the int8 decode path of the neon_dotprod table executes SDOT
    (one per 16 weights at least), the float path does not."""
    for row in report["results"]:
        if row["op"] != "mbq":
            assert row["share_in_op_library"] == 0, row["variant"]
            continue
        assert row["kernel"] == "neon_dotprod" and row["share_in_op_library"] > 0.5, row["variant"]
        sdot = row["dot_family_per_call"].get("sdot", 0)
        if row["accuracy_level"] == 4:
            assert sdot >= row["K"] * row["N"] * row["M"] / 16, row
        else:
            assert sdot == 0, row
