#!/usr/bin/env bash
# Create .venv in the repository (once) and install lenet-tool with its test tools into it; and
# .venv-runtime, the runtime as a device installs it (runtime/requirements.txt alone).
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
# The runtime as a device installs it: runtime/requirements.txt alone, no torch, and pip's newest
# numpy (2.x today; .venv keeps numpy 1.26, which PyTriton needs). The tests run the runtime there
# and check that it decides as in .venv; benchmarks/preprocess_numpy.py times it in both.
if [ ! -x .venv-runtime/bin/python ]; then
  "$PY" -m venv .venv-runtime
fi
rstamp=.venv-runtime/.runtime-installed
if [ ! -f "$rstamp" ] || [ runtime/requirements.txt -nt "$rstamp" ]; then
  .venv-runtime/bin/python -m pip install --quiet -r runtime/requirements.txt
  touch "$rstamp"
fi
