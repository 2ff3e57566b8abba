#!/usr/bin/env bash
# One-call GPU check for the lent H100 (stock PyTorch image, no pip): CUDA tests, training on
# CUDA with time to accuracy, and GPU inference throughput; a short table comes last.
# Run from the repository root:  bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:-/tmp}
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
echo "== CUDA tests"
if python3 -c "import pytest" 2>/dev/null; then
  python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py 2>&1 | tail -5
else
  python3 tests/test_cuda.py 2>&1 | tail -5   # the stock image has no pytest
fi
echo "== training on CUDA (default recipe, and batch 1024)"
python3 benchmarks/train_bench.py --device cuda --only default --only large-batch --json "$OUT/gpu_train.json" 2>&1 | tail -4
echo "== inference throughput on CUDA"
python3 benchmarks/gpu_infer.py --json "$OUT/gpu_infer.json" 2>&1 | tail -8
