"""Large batches a chunk at a time: ``runtime.preprocess_batch`` (numpy) and ``toolchain.field.render``
(torch) on thousands of crops, as ``lenet-tool field`` calls them, against the same calls on the
whole batch at once (the chunk budget set past the batch), timed in turns in one run; also
checks that both give the same frames and crops.

    .venv/bin/python benchmarks/batch_chunks.py [--crops 4000] [--turns 3]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from toolchain import field
from toolchain.data import embedded_mnist

P = importlib.import_module("runtime.preprocess")


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def measure(crops: int, turns: int) -> list[dict[str, Any]]:
    """Seconds (median of ``turns``) whole and chunked, per level and step, and whether they agree."""
    test = embedded_mnist("test")
    x = torch.from_numpy(np.array(test.images[:crops])).float().unsqueeze(1) / 255.0
    chunk_px, render_px = P.CHUNK_PIXELS, field.RENDER_PIXELS
    rows = []
    for name in ("mild", "harsh"):
        level = field.LEVELS[name]
        times: dict[str, list[float]] = {"render whole": [], "render chunked": [], "preprocess whole": [],
                                         "preprocess chunked": []}
        same = True
        for _ in range(turns):
            outs = {}
            for how, r_px, c_px in (("whole", 1 << 62, 1 << 62), ("chunked", render_px, chunk_px)):
                field.RENDER_PIXELS, P.CHUNK_PIXELS = r_px, c_px
                try:
                    t, img = _timed(lambda lv=level: field.render(x, lv, torch.Generator().manual_seed(1)))
                    times[f"render {how}"].append(t)
                    u8 = torch.round(img * 255).to(torch.uint8).numpy()
                    t, fr = _timed(lambda c=u8: P.preprocess_batch(c))
                    times[f"preprocess {how}"].append(t)
                finally:
                    field.RENDER_PIXELS, P.CHUNK_PIXELS = render_px, chunk_px
                outs[how] = (u8, fr)
            same &= np.array_equal(outs["whole"][0], outs["chunked"][0]) and \
                np.array_equal(outs["whole"][1].images, outs["chunked"][1].images) and \
                outs["whole"][1].refusals == outs["chunked"][1].refusals
        for step in ("render", "preprocess"):
            whole, chunked = float(np.median(times[f"{step} whole"])), float(np.median(times[f"{step} chunked"]))
            rows.append({"level": name, "step": step, "crops": crops, "whole_s": whole, "chunked_s": chunked,
                         "speedup": whole / chunked, "same_output": bool(same)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", type=int, default=4000)
    ap.add_argument("--turns", type=int, default=3)
    args = ap.parse_args()
    rows = measure(args.crops, args.turns)
    print(f"{'level':<6} {'step':<11} {'crops':>6} {'whole s':>8} {'chunked s':>10} {'speedup':>8}  same output")
    for r in rows:
        print(f"{r['level']:<6} {r['step']:<11} {r['crops']:>6} {r['whole_s']:>8.2f} {r['chunked_s']:>10.2f} "
              f"{r['speedup']:>7.2f}x  {'yes' if r['same_output'] else 'NO'}")


if __name__ == "__main__":
    main()
