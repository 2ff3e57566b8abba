#!/usr/bin/env bash
# Create .venv in the repository (once) and install lenet-tool with its test tools into it.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.lenet-tool-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch first and on its own: where a local wheel of 2.14.1 is provided (pip's constraint file),
  # this takes it from disk; elsewhere any torch >= 2.4 does.
  .venv/bin/python -m pip install --quiet "torch>=2.4" "torchvision>=0.19"
  # OpenVINO too: the tests run its backend against ONNX Runtime (a 60 MB wheel from the index);
  # and the serving extra: the tests start a real Triton Inference Server (nvidia-pytriton, 55 MB).
  .venv/bin/python -m pip install --quiet -e ".[dev,openvino,serve]"
  touch "$stamp"
fi
