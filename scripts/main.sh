#!/usr/bin/env bash
# The main job on the embedded MNIST: set up, train + calibrate, export every ONNX target and the
# Triton model repository, verify.
# Output: artifacts/lenet (or $1). Extra arguments after the folder go to 'lenet-tool train'.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${1:-artifacts/lenet}
shift || true
.venv/bin/lenet-tool train --out "$OUT" "$@"
.venv/bin/lenet-tool export "$OUT" --target onnx --target onnx-int8 --target onnx-fp16 --target triton
.venv/bin/lenet-tool verify "$OUT"
