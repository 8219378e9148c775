#!/usr/bin/env bash
# README command 2 and CI: set up (idempotent), lint, then every test suite through pytest
# (Python, C++ kernels in ORT incl. ASan/UBSan and arm64 under qemu, the Android Java core).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
bash tools/setup.sh || { echo "setup failed" >&2; exit 1; }
$PY -m ruff check . || exit 1
$PY -m pytest -ra "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests (exit 5)" >&2; rc=0; fi
exit "$rc"
