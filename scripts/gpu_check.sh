#!/usr/bin/env bash
# One-call GPU check for the lent H100 (stock PyTorch image, no pip): CUDA tests, training on
# CUDA with time to accuracy (with and without field frames), the field renderer and preprocessing
# twin's speed, the field recipe trained on CUDA and measured by 'lenet-tool field', GPU inference
# throughput and (with GATE_RUNS=N) the gate of the default recipe over N seeds; a short table last.
# Run from the repository root:  bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
ART=/tmp/gpu_check_art  # outside $OUT: only the JSON files travel back
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
echo "== CUDA tests"
if python3 -c "import pytest" 2>/dev/null; then
  python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py --junitxml "$OUT/gpu_tests.xml" 2>&1 | tail -5
else
  python3 tests/test_cuda.py --json "$OUT/gpu_tests.json" 2>&1 | tail -5   # the stock image has no pytest
fi
echo "== training on CUDA (default recipe with field frames, without them, and batch 1024)"
python3 benchmarks/train_bench.py --device cuda --only default --only no-field --only large-batch --json "$OUT/gpu_train.json" 2>&1 | tail -8
echo "== field rendering and the preprocessing twin: crops/s"
python3 benchmarks/field_gpu.py --json "$OUT/gpu_field_speed.json" 2>&1 | tail -6
echo "== the field recipe trained on CUDA, then 'lenet-tool field' (numpy preprocess + the exported graph)"
if timeout "${FIELD_TIMEOUT:-200}" python3 -m toolchain.cli train --device cuda --out "$ART" --quiet > "$ART.log" 2>&1; then
  tail -3 "$ART.log"
  timeout 120 python3 -m toolchain.cli export "$ART" --target onnx > /dev/null 2>&1
  timeout 200 python3 -m toolchain.cli field "$ART" --images 2000 --non-digits 500 2>&1 | tail -20
  cp "$ART/field.json" "$OUT/gpu_field.json" 2>/dev/null
else
  tail -5 "$ART.log"
fi
echo "== inference throughput on CUDA"
python3 benchmarks/gpu_infer.py --json "$OUT/gpu_infer.json" 2>&1 | tail -8
if [ "${GATE_RUNS:-0}" != 0 ]; then
  echo "== the gate of the default recipe, trained on CUDA, seeds 0..$(( ${GATE_RUNS:-3} - 1 ))"
  # Bounded, so the summary always prints; the JSON keeps every seed finished in time.
  timeout "${GATE_TIMEOUT:-240}" python3 benchmarks/gate_seeds.py --device cuda --seeds "${GATE_RUNS:-3}" --json "$OUT/gpu_gate.json" 2>&1 | tail -6
fi
python3 benchmarks/gpu_summary.py "$OUT"
