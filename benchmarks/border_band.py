"""Digits beside a dark band along one border of the crop (a meter's bezel, the paper's edge, a
shadow): what the device decides, crop by crop, through ``runtime.preprocess`` and the model.

    python benchmarks/border_band.py [ARTIFACT] [--images 200] [--level clean] [--side right] [--grey 25]
                                     [--blur 0] [--noise 0] [--start 0] [--seed 11]

Each of N test digits (from ``--start``) is shot as a camera crop at a field level (default
"clean": 64x64, dark ink on grey paper; :data:`toolchain.field.LEVELS`, seed 11), then the
lines along one side (or all four: a meter's window) are painted a flat grey (default 25,
darker than the ink; 250 is a light band), from none to 30% of the side (``--blur`` and
``--noise`` then soften the whole crop, band included, as a lens and a sensor would). A band that holds more
ink than the digit used to be taken for the digit (a confident '1'), and a wide one turned the
polarity test; ``preprocess`` now cuts it off (``border_bands``). The table shows how many
crops are read right, read wrong, or refused by the preprocessing or the gate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime import Classifier, preprocess_batch  # noqa: E402
from toolchain import field  # noqa: E402
from toolchain.data import embedded_mnist  # noqa: E402
from toolchain.fieldbench import render_crops  # noqa: E402

SHARES = (0.0, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30)
BAND = 25  # grey level of the band: darker than the clean level's ink


SIDES = {"right": lambda k: [(slice(None), slice(None), slice(-k, None))],
         "left": lambda k: [(slice(None), slice(None), slice(None, k))],
         "top": lambda k: [(slice(None), slice(None, k))],
         "bottom": lambda k: [(slice(None), slice(-k, None))]}
SIDES["all"] = lambda k: [i for side in ("right", "left", "top", "bottom") for i in SIDES[side](k)]  # a window


def soften(c: np.ndarray, blur: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """uint8 crops ``(N, H, W)`` after painting: the renderer's Gaussian blur of ``blur`` pixels
    and sensor noise of ``noise`` grey levels, so the band's edge is soft and its face noisy like
    the rest."""
    x = torch.from_numpy(c.astype(np.float32))
    if blur > 0:
        x = field._gaussian_blur(x, torch.full((x.shape[0],), float(blur)))
    y = x.numpy() + (rng.normal(0.0, noise, x.shape) if noise > 0 else 0.0)
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def run(artifact: Path, n: int, level: str = "clean", side: str = "right", grey: int = BAND,
        blur: float = 0.0, noise: float = 0.0, start: int = 0, seed: int = 11) -> list[dict[str, float]]:
    """Per band width: crops read right, read wrong, refused by the preprocessing, by the gate."""
    clf = Classifier(artifact / "model.onnx")
    test = embedded_mnist("test")
    crops = render_crops(test.images[start:start + n], field.LEVELS[level], seed)
    labels = test.labels[start:start + n]
    rows = []
    for share in SHARES:
        c = crops.copy()
        k = int(round(share * c.shape[2]))
        for index in SIDES[side](k) if k else []:
            c[index] = grey
        if blur > 0 or noise > 0:
            c = soften(c, blur, noise, np.random.default_rng(12))
        frames = preprocess_batch(c)
        ok = frames.ok
        right = wrong = 0
        if ok.any():  # a wide band can leave every crop refused
            p = clf.predict(frames.images[ok])
            right = int((p.accepted & (p.labels == labels[ok])).sum())
            wrong = int((p.accepted & (p.labels != labels[ok])).sum())
        rows.append({"share": share, "right": right, "wrong": wrong, "preprocess_refused": int((~ok).sum()),
                     "gate_refused": int(ok.sum()) - right - wrong})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", nargs="?", default=str(ROOT / "artifacts" / "lenet"))
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--level", default="clean", choices=sorted(field.LEVELS))
    ap.add_argument("--side", default="right", choices=sorted(SIDES))
    ap.add_argument("--grey", type=int, default=BAND, help="the band's grey level, 0-255")
    ap.add_argument("--blur", type=float, default=0.0, help="Gaussian blur after painting, pixels")
    ap.add_argument("--noise", type=float, default=0.0, help="sensor noise after painting, grey levels")
    ap.add_argument("--start", type=int, default=0, help="the first test digit (the band rules were set on 0-299)")
    ap.add_argument("--seed", type=int, default=11, help="the renderings' seed (the band rules were set on 11)")
    args = ap.parse_args()
    rows = run(Path(args.artifact), args.images, args.level, args.side, args.grey, args.blur, args.noise,
               args.start, args.seed)
    print(f"{'band':>5} {'read right':>11} {'read wrong':>11} {'refused (prep)':>15} {'refused (gate)':>15}"
          f"   of {args.images} crops")
    for r in rows:
        print(f"{100 * r['share']:>4.0f}% {r['right']:>11} {r['wrong']:>11} {r['preprocess_refused']:>15} "
              f"{r['gate_refused']:>15}")


if __name__ == "__main__":
    main()
