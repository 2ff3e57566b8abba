"""Out-of-distribution frames a camera meets: noise, blank frames, non-digits.

All generators are seeded and return uint8 ``(N, 28, 28)``. ``shapes`` and
``scrambled`` are kinds the tool never trains or calibrates on: they stand in for
"something that is not a digit" when measuring how often a gate accepts it.
"""

from __future__ import annotations

import numpy as np

KINDS = ("uniform-noise", "gaussian-noise", "black", "white", "shapes", "scrambled-digits")


def uniform_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def gaussian_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rng.normal(128.0, 64.0, size=(n, 28, 28)), 0, 255).astype(np.uint8)


def blank(n: int, value: int) -> np.ndarray:
    return np.full((n, 28, 28), value, dtype=np.uint8)


def shapes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Filled rectangles, ellipses and thick bars at random places and sizes, light on dark."""
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32)
    out = np.zeros((n, 28, 28), dtype=np.uint8)
    kind = rng.integers(0, 3, size=n)
    cy, cx = rng.uniform(8, 20, size=(2, n))
    ry, rx = rng.uniform(3, 10, size=(2, n))
    ang = rng.uniform(0, np.pi, size=n)
    for i in range(n):
        if kind[i] == 0:
            m = (np.abs(yy - cy[i]) <= ry[i]) & (np.abs(xx - cx[i]) <= rx[i])
        elif kind[i] == 1:
            m = ((yy - cy[i]) / ry[i]) ** 2 + ((xx - cx[i]) / rx[i]) ** 2 <= 1.0
        else:
            d = np.abs((yy - cy[i]) * np.cos(ang[i]) - (xx - cx[i]) * np.sin(ang[i]))
            m = d <= max(1.5, ry[i] / 3)
        out[i][m] = 255
    return out


def scrambled_digits(images: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Digits cut into 7x7 tiles and shuffled: digit-like strokes, no digit."""
    pick = images[rng.integers(0, len(images), size=n)]
    tiles = pick.reshape(n, 4, 7, 4, 7).transpose(0, 1, 3, 2, 4).reshape(n, 16, 7, 7)
    perm = np.argsort(rng.random((n, 16)), axis=1)
    tiles = np.take_along_axis(tiles, perm[:, :, None, None], axis=1)
    return tiles.reshape(n, 4, 4, 7, 7).transpose(0, 1, 3, 2, 4).reshape(n, 28, 28).copy()


def generate(kind: str, n: int, seed: int = 0, digits: np.ndarray | None = None) -> np.ndarray:
    """``n`` frames of ``kind`` (one of :data:`KINDS`)."""
    rng = np.random.default_rng(seed)
    if kind == "uniform-noise":
        return uniform_noise(n, rng)
    if kind == "gaussian-noise":
        return gaussian_noise(n, rng)
    if kind == "black":
        return blank(n, 0)
    if kind == "white":
        return blank(n, 255)
    if kind == "shapes":
        return shapes(n, rng)
    if kind == "scrambled-digits":
        if digits is None:
            raise ValueError("scrambled-digits needs digit images to cut up")
        return scrambled_digits(digits, n, rng)
    raise ValueError(f"OOD kind {kind!r}: expected one of {', '.join(KINDS)}")
