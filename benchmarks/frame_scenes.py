"""Whole frames holding a row of digits in the scenes a camera meets (a meter's bezel, the table
beyond the paper's edge, a form field's underline or box, a fold in the paper, a digit run into
the bezel or the table): what a device reads through ``runtime.find_digits`` and the model,
frame by frame.

    python benchmarks/frame_scenes.py [ARTIFACT] [--frames 60] [--seed 5]

Each frame holds one to five test digits (drawn from the test set with ``--seed``) at twice
MNIST's size, dark ink on grey paper, light falling off across the frame and sensor noise,
then the scene is painted in. A device acts on a reading only when every digit found is
accepted, so a frame counts as read right (the digits, left to right), read wrong (every digit
accepted, the string wrong: a missed or phantom digit, or a misread one) or refused. The
last rows are phone photos (4000x3000) of a sheet of paper on a desk, the digits 224 pixels
tall. Then frames that hold no digit (``lenet-tool field``'s non-digit crops written where the
digits would be): a reading acted on there is always wrong.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime import Classifier, find_digits  # noqa: E402
from toolchain.data import embedded_mnist  # noqa: E402

INK, PAPER, DARK = 140.0, 190.0, 30.0


def compose(digits: np.ndarray, rng: np.random.Generator, *, scale: int = 2, gap: int = 14,
            pad: tuple[int, int] = (22, 22)) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A float frame with ``digits`` (uint8 light-on-dark 28x28) written left to right as dark ink
    on grey paper, before light and noise; and the boxes they were written in."""
    s = 28 * scale
    width = 40 + len(digits) * (s + gap)
    frame = np.full((pad[0] + s + pad[1], width), PAPER)
    boxes = []
    for j, d in enumerate(digits):
        x0, y0 = 20 + j * (s + gap) + int(rng.integers(-2, 3)), pad[0] + int(rng.integers(-2, 3) if pad[0] > 2 else 0)
        y0 = max(0, y0)
        ink = np.kron(d.astype(float) / 255, np.ones((scale, scale)))[: frame.shape[0] - y0]
        frame[y0:y0 + ink.shape[0], x0:x0 + s] -= INK * ink
        boxes.append((x0, y0, x0 + s, y0 + s))
    return frame, boxes


def _bezel(f: np.ndarray) -> np.ndarray:
    f[:8], f[-8:], f[:, :8], f[:, -8:] = DARK, DARK, DARK, DARK
    return f


def _table(f: np.ndarray) -> np.ndarray:
    """The paper ends right of the digits; the table beyond it fills an eighth of the frame."""
    return np.concatenate([f, np.full((f.shape[0], f.shape[1] // 7), DARK)], axis=1)


def _wide_table(f: np.ndarray) -> np.ndarray:
    """The table beyond the paper's edge fills 30% of the frame: enough to turn a polarity test."""
    return np.concatenate([f, np.full((f.shape[0], f.shape[1] * 3 // 7), DARK)], axis=1)


def _underline(f: np.ndarray) -> np.ndarray:
    f[-14:-11, 10:-10] = INK - 40
    return f


def _boxed(f: np.ndarray) -> np.ndarray:
    f[6:8, 6:-6], f[-8:-6, 6:-6], f[6:-6, 6:8], f[6:-6, -8:-6] = INK - 40, INK - 40, INK - 40, INK - 40
    return f


def _fold(f: np.ndarray) -> np.ndarray:
    f[:, -12:-10] = INK - 40
    return f


def _into_bezel(f: np.ndarray) -> np.ndarray:
    """The row starts under the bezel: its side runs into the first digit (most digits' ink; a
    narrow one may stay clear of it)."""
    return _bezel(f[:, 22:].copy())


def _into_edge(f: np.ndarray) -> np.ndarray:
    """The paper ends inside the last digit's box: the table beyond it takes that digit's right side."""
    return np.concatenate([f[:, :-42], np.full((f.shape[0], f.shape[1] // 7), DARK)], axis=1)


SCENES: dict[str, tuple[dict, Callable[[np.ndarray], np.ndarray] | None]] = {
    "plain": ({}, None),
    "meter bezel": ({}, _bezel),
    "table beyond paper": ({}, _table),
    "table, 30% of frame": ({}, _wide_table),
    "underlined field": ({}, _underline),
    "boxed field": ({}, _boxed),
    "fold across paper": ({}, _fold),
    "tight strip": ({"pad": (2, 2)}, None),
    "small digits (28 px)": ({"scale": 1, "gap": 8}, None),
    "first digit into the bezel": ({}, _into_bezel),
    "last digit into the table": ({}, _into_edge),
}


def photo(digits: np.ndarray, rng: np.random.Generator, desk: float, size: int = 224,
          sheet: tuple[int, int] = (2550, 3400), shape: tuple[int, int] = (3000, 4000)) -> np.ndarray:
    """A phone photo (4000x3000 by default) of a sheet of paper on a desk of grey level ``desk``,
    the ``digits`` written ``size`` pixels tall across the middle of the sheet, before light and noise."""
    f = np.full(shape, desk, dtype=np.float32)
    sy, sx = (shape[0] - sheet[0]) // 2, (shape[1] - sheet[1]) // 2
    f[sy:sy + sheet[0], sx:sx + sheet[1]] = PAPER
    k = size // 28
    for j, d in enumerate(digits):
        ink = np.kron(d.astype(np.float32) / 255, np.ones((k, k), dtype=np.float32))
        y0, x0 = sy + sheet[0] // 2 - size // 2, sx + size // 2 + j * (size * 5 // 4)
        f[y0:y0 + ink.shape[0], x0:x0 + ink.shape[1]] -= INK * ink
    return f


#: Phone photos of a sheet on a desk: slow to compose, so at most PHOTO_FRAMES of each.
PHOTOS: dict[str, float] = {"photo: sheet on a dark desk": 90.0, "photo: sheet on a grey desk": 150.0,
                            "photo: sheet on a light desk": 230.0}
PHOTO_FRAMES = 20


def tilt(frame: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """``frame`` turned by ``degrees`` either way (a coin of ``rng``) about its centre, as a
    camera held askew sees the page: bilinear, the frame's size kept, the desk (``DARK``) in the
    corners the page left."""
    from PIL import Image
    im = Image.fromarray(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
    turned = im.rotate(degrees if rng.random() < 0.5 else -degrees, resample=Image.BILINEAR, fillcolor=int(DARK))
    return np.asarray(turned).astype(np.float64)


def read(clf: Classifier, frame: np.ndarray, rng: np.random.Generator) -> tuple[list, np.ndarray | None]:
    """Shoot ``frame`` (light falling off across it, sensor noise) and read it as a device does:
    the digits found, and their labels when every one was preprocessed and accepted (a reading
    acted on), else None."""
    f = frame * np.linspace(0.8, 1.15, frame.shape[1], dtype=np.float32)[None, :]
    f = f + rng.normal(0, 4, f.shape).astype(np.float32)
    found = find_digits(np.clip(np.rint(f), 0, 255).astype(np.uint8))
    ok = [d for d in found if d.image is not None]
    if not found or len(ok) < len(found):
        return found, None
    p = clf.predict(np.stack([d.image for d in ok]))
    return found, p.labels if p.accepted.all() else None


def run(artifact: Path, frames: int, seed: int, degrees: float = 0.0) -> dict[str, dict[str, int]]:
    """Per scene: frames read right, read wrong, refused; with ``degrees``, every frame of the
    scenes (not the photos) turned by that much (:func:`tilt`)."""
    clf = Classifier(artifact / "model.onnx")
    test = embedded_mnist("test")
    out = {}
    names = list(SCENES) + list(PHOTOS)
    for name in names:
        rng = np.random.default_rng(seed)
        res = {"right": 0, "wrong": 0, "refused": 0}
        for _ in range(frames if name in SCENES else min(frames, PHOTO_FRAMES)):
            idx = rng.choice(len(test.images), int(rng.integers(1, 6)), replace=False)
            if name in SCENES:
                kw, paint = SCENES[name]
                f, _ = compose(test.images[idx], rng, **kw)
                if paint is not None:
                    f = paint(f)
                if degrees:
                    f = tilt(f, degrees, rng)
            else:
                f = photo(test.images[idx], rng, PHOTOS[name])
            _, labels = read(clf, f, rng)
            if labels is None:
                res["refused"] += 1
            elif "".join(map(str, labels)) == "".join(map(str, test.labels[idx])):
                res["right"] += 1
            else:
                res["wrong"] += 1
        out[name] = res
    return out


def run_no_digits(artifact: Path, frames: int, seed: int) -> dict[str, dict[str, int]]:
    """Frames that hold no digit, in the plain scene: one to five crops of each non-digit kind of
    ``lenet-tool field`` (paper, texture, clutter, letters, clothing) written where the digits
    would be. Per kind: frames where something was found, and readings acted on (every piece
    found accepted), which a device should never do here."""
    from toolchain.fieldbench import NON_DIGIT_KINDS, non_digit_frames
    clf = Classifier(artifact / "model.onnx")
    out = {}
    for i, kind in enumerate(NON_DIGIT_KINDS):
        rng = np.random.default_rng(seed)
        bank = non_digit_frames(kind, 600, np.random.default_rng(seed + 100 + i))
        res = {"found": 0, "acted": 0, "frames": frames}
        for _ in range(frames):
            f, _ = compose(bank[rng.choice(len(bank), int(rng.integers(1, 6)), replace=False)], rng)
            found, labels = read(clf, f, rng)
            res["found"] += bool(found)
            res["acted"] += labels is not None
        out[kind] = res
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", nargs="?", default=str(ROOT / "artifacts" / "lenet"))
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--tilt", type=float, default=0.0, help="turn every scene's frame by this many degrees, "
                    "either way (a camera held askew; the desk in the corners)")
    args = ap.parse_args()
    res = run(Path(args.artifact), args.frames, args.seed, args.tilt)
    print(f"{'scene':<30} {'read right':>11} {'read wrong':>11} {'refused':>8}   of {args.frames} frames "
          f"({min(args.frames, PHOTO_FRAMES)} photos), seed {args.seed}"
          + (f", scenes turned {args.tilt:g} degrees" if args.tilt else ""))
    for name, r in res.items():
        print(f"{name:<30} {r['right']:>11} {r['wrong']:>11} {r['refused']:>8}")
    nd = run_no_digits(Path(args.artifact), args.frames, args.seed)
    print(f"\n{'frames holding no digit':<30} {'found any':>11} {'acted on':>11}   of {args.frames} frames, "
          "1-5 non-digit crops each")
    for kind, r in nd.items():
        print(f"{'no digit: ' + kind:<30} {r['found']:>11} {r['acted']:>11}")


if __name__ == "__main__":
    main()
