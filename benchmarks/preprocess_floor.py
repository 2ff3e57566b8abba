"""The floor under issue 10's 50 us a 64x64 crop: the leanest MNIST normaliser numpy can run,
timed beside ``runtime.preprocess`` on the same crops in the same run, and both read by the
model, so the floor is a working normaliser and not a stand-in.

    python benchmarks/preprocess_floor.py [ARTIFACT] [--rounds 6] [--crops 32] [--read 2000]

``lean_normalise`` does only what MNIST's own normalisation does and nothing of what a camera
needs: paper and ink from the crop's darkest and lightest pixels (one global level), either
polarity by the mean, the ink fitted into a 20x20 box keeping its aspect ratio, area-averaged
(anti-aliased), its centre of mass on the frame's centre to a fraction of a pixel, all in one
separable resampling (two products with 28-row weight matrices). No local background, no
connected components, no speck, band or non-digit refusals. It is about 35 numpy calls, and on a
small array a numpy call costs a microsecond or more on its own, whatever it computes.

The crops are ``lenet-tool bench``'s (the first test digits rendered at the field benchmark's mild
level, 64x64). Each round times both normalisers, in turn: one crop after another, each called
15 times, the median of a crop's calls, then the median over the crops; the table gives each one's
median over the rounds and, round by round, its time against ``preprocess``'s. ``--read`` crops
are then normalised by each and read by ARTIFACT's ``model.onnx`` (default: artifacts/lenet;
skipped if it has none): the share read right, accepted by the gate, and accepted but wrong.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_US = 50.0  # issue 10: preprocess <= 50 us for a 64x64 crop

_EDGES: dict[int, np.ndarray] = {}


def _edges(n: int) -> np.ndarray:
    """0, 1, ..., n as float32, made once per size (a lookup costs less than a numpy call)."""
    edges = _EDGES.get(n)
    if edges is None:
        edges = _EDGES[n] = np.arange(n + 1, dtype=np.float32)
    return edges


def _area_weights(centre: float, step: float, n: int) -> np.ndarray:
    """``(28, n)`` weights: output pixel ``i`` averages the input over
    ``[centre + (i - 14.5) * step, centre + (i - 13.5) * step)``, each input pixel ``j`` covering
    ``[j, j + 1)``: ``centre`` lands on pixel 14's centre, where MNIST puts the centre of mass."""
    edges = _edges(n)
    lo = (centre - 14.5 * step) + step * edges[:28, None]
    return np.maximum(np.minimum(lo + step, edges[None, 1:]) - np.maximum(lo, edges[None, :-1]), 0)


def lean_normalise(crop: np.ndarray) -> np.ndarray:
    """A gray 2-D uint8 crop -> uint8 ``(28, 28)``, MNIST's normalisation alone.

    Raises ValueError on a crop without contrast (under 8 grey levels). The ink is what stands more than 35% of the
    crop's range from the paper: the strokes keep their anti-aliased edges, the paper is 0.
    """
    g = crop.astype(np.float32)
    lo, hi = g.min(), g.max()
    if hi - lo < 8:
        raise ValueError("no ink: the crop has no contrast")
    ink = (hi - g) if g.mean() > 0.5 * (lo + hi) else (g - lo)  # ink is the smaller part
    ink = np.maximum(ink - 0.35 * (hi - lo), 0)
    rows, cols = ink.sum(1), ink.sum(0)
    r, c = np.flatnonzero(rows), np.flatnonzero(cols)
    step = max(r[-1] - r[0] + 1, c[-1] - c[0] + 1) / 20.0  # input pixels an output pixel spans
    total = rows.sum()
    cy = float(rows @ _edges(len(rows))[:-1]) / total + 0.5
    cx = float(cols @ _edges(len(cols))[:-1]) / total + 0.5
    out = _area_weights(cy, step, g.shape[0]) @ ink @ _area_weights(cx, step, g.shape[1]).T
    out *= 255.0 / out.max()
    return out.astype(np.uint8)


def _median_call(fn: Callable[[np.ndarray], Any], crop: np.ndarray, calls: int) -> float:
    ts = []
    for _ in range(calls):
        t = time.perf_counter()
        try:
            fn(crop)
        except ValueError:  # PreprocessError is one: a refusal costs its time too
            pass
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def time_both(crops: np.ndarray, rounds: int) -> dict[str, dict[str, float]]:
    """Per normaliser: median microseconds a crop over the rounds, and the median over the
    rounds of its time against ``preprocess``'s in the same round."""
    from runtime.preprocess import preprocess
    fns = {"lean": lean_normalise, "preprocess": preprocess}
    for fn in fns.values():  # the first calls build lookup tables and warm the caches
        for c in crops[:2]:
            _median_call(fn, c, 3)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(float(np.median([_median_call(fn, c, 15) for c in crops])))
    base = times["preprocess"]
    return {k: {"us": float(np.median(ts)) * 1e6,
                "ratio": float(np.median([t / b for t, b in zip(ts, base)]))} for k, ts in times.items()}


def one_call_us(crop: np.ndarray, calls: int = 2000) -> float:
    """Median microseconds of one elementwise numpy call (``np.maximum``) on the crop as float32:
    what every step of a numpy normaliser pays at least once."""
    g = crop.astype(np.float32)
    return _median_call(lambda x: np.maximum(x, 0), g, calls) * 1e6


def read_both(model: Path, crops: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, float]]:
    """Per normaliser, over the crops: % read right, % accepted by the gate, and how many were
    accepted but wrong (a refused or unnormalisable crop counts as not accepted)."""
    from runtime import Classifier
    from runtime.preprocess import preprocess
    clf = Classifier(model)
    out = {}
    for name, fn in (("lean", lean_normalise), ("preprocess", preprocess)):
        frames = np.zeros((len(crops), 28, 28), np.uint8)
        ok = np.zeros(len(crops), bool)
        for i, c in enumerate(crops):
            try:
                frames[i] = fn(c)
                ok[i] = True
            except ValueError:
                pass
        pred = clf.predict(frames)
        right = ok & (pred.labels == labels)
        acted = ok & pred.accepted
        out[name] = {"right_pct": 100 * float(right.mean()), "accepted_pct": 100 * float(acted.mean()),
                     "accepted_wrong": int((acted & ~right).sum())}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", nargs="?", default=str(ROOT / "artifacts/lenet"))
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--crops", type=int, default=32, help="64x64 crops timed a round")
    p.add_argument("--read", type=int, default=2000, help="crops read by the model (0: none)")
    args = p.parse_args(argv)
    from toolchain.bench import field_crops
    from toolchain.data import embedded_mnist
    test = embedded_mnist("test")
    n = max(args.crops, args.read, 1)
    crops, _ = field_crops(test.images[:n, None].copy(), n=n)
    timed = time_both(crops[:args.crops], args.rounds)
    call = one_call_us(crops[0])
    model = Path(args.artifact) / "model.onnx"
    read = read_both(model, crops[:args.read], test.labels[:args.read]) if args.read and model.exists() else None
    print(f"numpy {np.__version__}; {args.crops} mild 64x64 crops, {args.rounds} rounds"
          + (f"; {args.read} crops read by {model}" if read else
             "; not read" + (f" (no {model})" if args.read else "")))
    print(f"{'normaliser':12s} {'64x64 us':>9s} {'vs preprocess':>14s} {'vs 50 us':>9s}"
          + (f" {'read right':>11s} {'accepted':>9s} {'acc. wrong':>11s}" if read else ""))
    for k, t in timed.items():
        line = f"{k:12s} {t['us']:9.1f} {t['ratio']:13.3f}x {t['us'] / TARGET_US:8.2f}x"
        if read:
            r = read[k]
            line += f" {r['right_pct']:10.2f}% {r['accepted_pct']:8.2f}% {r['accepted_wrong']:11d}"
        print(line)
    print(f"one numpy call on a 64x64 float32 array (np.maximum): {call:.1f} us; {TARGET_US:.0f} us is "
          f"{TARGET_US / call:.0f} such calls, and lean_normalise makes about 35")


if __name__ == "__main__":
    main()
