#!/usr/bin/env bash
# Set up, lint, and run the test suite (GPU and TensorRT tests skip with their reason here).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
