"""The gate of one training recipe over several seeds: train + calibrate each, as
``lenet-tool train`` does, and print coverage, selective risk and OOD acceptance per seed.

    .venv/bin/python benchmarks/gate_seeds.py --seeds 3                 # default recipe, seeds 0, 1, 2
    .venv/bin/python benchmarks/gate_seeds.py --seeds 3 --set epochs=20 # one setting changed

Each seed also draws its own held-out split, so the spread covers both the training run and
the certification data. About 1.5 minutes a seed on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolchain import jobs
from toolchain.checkpoint import load_checkpoint
from toolchain.data import embedded_mnist
from toolchain.gate import GateConfig
from toolchain.train import make_config


def _value(text: str) -> Any:
    """A --set value: a number, a comma list of numbers (view rotations), or a word."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if "," in text:
        return tuple(float(a) for a in text.split(",") if a)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="Override one training setting (repeatable).")
    ap.add_argument("--energy-floors", default="",
                    help="Also recalibrate each model at these energy-floor percentiles (comma list).")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    overrides = {}
    for item in args.set:
        key, sep, val = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected FIELD=VALUE")
        overrides[key] = _value(val)
    train, test = embedded_mnist("train"), embedded_mnist("test")
    floors = [float(f) for f in args.energy_floors.split(",") if f]
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        cfg = make_config("default", seed=seed, device=args.device, **overrides)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            m = jobs.train(cfg, Path(d), train, test)
            seconds = time.perf_counter() - t0
            gates = [(None, m["gate"])]
            if floors:
                holdout = jobs.holdout_from_checkpoint(load_checkpoint(Path(d) / "checkpoint.pt"), train, d)
                gates += [(f, jobs.calibrate(Path(d), holdout=holdout, test=test, gate_cfg=GateConfig(energy_floor=f)))
                          for f in floors]
        for floor, g in gates:
            rows.append({"name": f"seed {seed}" + "".join(f" {k}={v}" for k, v in overrides.items()) +
                                 (f" floor {floor:g}" if floor is not None else ""),
                         "seed": seed, "energy_floor": floor, "accuracy": m["test"]["accuracy"],
                         "coverage": g["test"]["coverage"], "risk": g["test"]["selective_risk"],
                         "letters": g["ood_acceptance"]["letters"], "fashion": g["ood_acceptance"]["fashion"],
                         "train_seconds": m["train"]["seconds"], "seconds": seconds})
            r = rows[-1]
            print(f"{r['name']}: accuracy {100 * r['accuracy']:.2f}%  coverage {100 * r['coverage']:.2f}%  "
                  f"risk {100 * r['risk']:.3f}%  letters {100 * r['letters']:.2f}%  fashion {100 * r['fashion']:.2f}%  "
                  f"train {r['train_seconds']:.0f} s, all {r['seconds']:.0f} s", flush=True)
        if args.json:  # after every seed, so a run cut short keeps what it finished
            args.json.write_text(json.dumps(rows, indent=2))
    for floor in [None] + floors:
        sel = [r for r in rows if r["energy_floor"] == floor]
        n = len(sel)
        if n:
            print(f"mean of {n}" + (f" at floor {floor:g}" if floor is not None else "") +
                  f": coverage {100 * sum(r['coverage'] for r in sel) / n:.2f}%  "
                  f"letters {100 * sum(r['letters'] for r in sel) / n:.2f}%  "
                  f"fashion {100 * sum(r['fashion'] for r in sel) / n:.2f}%")


if __name__ == "__main__":
    main()
