"""``runtime.preprocess`` timed under each Python environment given, in turn in the same run:
the repository's ``.venv`` (numpy 1.26, which PyTriton needs) against ``.venv-runtime``, the
runtime as a device installs it (``runtime/requirements.txt`` alone: pip's newest numpy).

    python benchmarks/preprocess_numpy.py [--python PATH ...] [--rounds 6] [--crops 32]

The crops are ``lenet-tool bench``'s: the first test digits rendered at the field benchmark's
mild level (64x64), and one at 15x zoom (480x480). Each round times every environment once,
alternating, so a busy host slows them alike: one crop after another, each called 15 times
(480x480: 60), the median of a crop's calls, then the median over the crops. The table gives
each environment's median over the rounds and its ratio to the first environment's, round by
round. Absolute times move with the host; the ratio is the figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Run by each environment's python: the medians, in seconds, for the crops of an .npz.
TIMER = """
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from runtime.preprocess import PreprocessError, preprocess
crops = np.load(sys.argv[2])
def median_of(x, calls):
    ts = []
    for _ in range(calls):
        t = time.perf_counter()
        try:
            preprocess(x)
        except PreprocessError:
            pass
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))
for c in crops["small"][:2]:  # the first calls build lookup tables and warm the caches
    median_of(c, 3)
small = float(np.median([median_of(c, 15) for c in crops["small"]]))
print(json.dumps({"numpy": np.__version__, "small": small, "big": median_of(crops["big"], 60)}))
"""


def bench_crops(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 64x64 crops and one 480x480 crop, as ``lenet-tool bench`` renders them."""
    from toolchain.bench import field_crops
    from toolchain.data import embedded_mnist
    small, big = field_crops(embedded_mnist("test").images[:max(n, 1), None].copy())
    return np.asarray(small)[:n], np.asarray(big)


def run(pythons: list[str], rounds: int, crops: int) -> list[dict]:
    """Per environment: its numpy version, the median microseconds a crop over the rounds, and
    the median over the rounds of its time against the first environment's."""
    small, big = bench_crops(crops)
    times: list[list[dict]] = [[] for _ in pythons]
    with tempfile.TemporaryDirectory() as tmp:
        npz, script = Path(tmp) / "crops.npz", Path(tmp) / "timer.py"
        np.savez(npz, small=small, big=big)
        script.write_text(TIMER)
        for _ in range(rounds):
            for i, py in enumerate(pythons):
                r = subprocess.run([py, str(script), str(ROOT), str(npz)], capture_output=True, text=True)
                if r.returncode != 0:
                    raise SystemExit(f"{py}: the timing failed:\n{r.stderr[-2000:]}")
                times[i].append(json.loads(r.stdout.strip().splitlines()[-1]))
    rows = []
    for py, ts in zip(pythons, times):
        row = {"python": py, "numpy": ts[0]["numpy"]}
        for key in ("small", "big"):
            row[f"{key}_us"] = float(np.median([t[key] for t in ts])) * 1e6
            row[f"{key}_ratio"] = float(np.median([t[key] / b[key] for t, b in zip(ts, times[0])]))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", action="append", help="an environment's python (repeat; default: "
                   ".venv's and .venv-runtime's)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--crops", type=int, default=32, help="64x64 crops a round")
    args = p.parse_args(argv)
    pythons = args.python or [str(ROOT / ".venv/bin/python"), str(ROOT / ".venv-runtime/bin/python")]
    missing = [py for py in pythons if not Path(py).exists()]
    if missing:
        raise SystemExit(f"no python at {', '.join(missing)}: scripts/setup.sh makes .venv and .venv-runtime")
    rows = run(pythons, args.rounds, args.crops)
    print(f"{'python':42s} {'numpy':>8s}  {'64x64 us':>9s} {'ratio':>6s}  {'480x480 us':>10s} {'ratio':>6s}")
    for r in rows:
        print(f"{r['python'][-42:]:42s} {r['numpy']:>8s}  {r['small_us']:9.0f} {r['small_ratio']:6.3f}  "
              f"{r['big_us']:10.0f} {r['big_ratio']:6.3f}")


if __name__ == "__main__":
    main()
