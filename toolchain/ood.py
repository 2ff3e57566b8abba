"""Out-of-distribution frames a camera meets: noise, blank frames, non-digits.

All generators are seeded and return uint8 ``(N, 28, 28)``. ``letters`` and ``fashion``
(a shipped Fashion-MNIST sample) are kinds the tool never trains or calibrates on; with
outlier exposure, noise, blank frames and scrambled digits are synthesised in training.
They stand in for "something that is not a digit" when measuring how often a gate accepts it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("uniform-noise", "gaussian-noise", "black", "white", "letters", "scrambled-digits", "fashion")
# Letters that do not look like a digit (no O, I, l, S, Z, B, G, g, q, b, T, L, J, z, s, o).
LETTERS = "ACDEFHKMNPRUVWXYacdefhkmnprtuvwxy"


def uniform_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def gaussian_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rng.normal(128.0, 64.0, size=(n, 28, 28)), 0, 255).astype(np.uint8)


def blank(n: int, value: int) -> np.ndarray:
    return np.full((n, 28, 28), value, dtype=np.uint8)


def _draw(texts: list[str], fonts: list[Any], angles: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
    """uint8 ``(N, 28, 28)``: each text light on dark, centred (then shifted by ``shift`` pixels)
    in its font, rotated by its angle (degrees)."""
    from PIL import Image, ImageDraw

    out = np.zeros((len(texts), 28, 28), dtype=np.uint8)
    for i, (text, font) in enumerate(zip(texts, fonts)):
        dx, dy = (0, 0) if shift is None else (int(shift[i, 0]), int(shift[i, 1]))
        im = Image.new("L", (28, 28))
        ImageDraw.Draw(im).text((14 + dx, 14 + dy), text, fill=255, font=font, anchor="mm")
        out[i] = np.asarray(im.rotate(float(angles[i]), resample=Image.BILINEAR))
    return out


def _default_faces() -> dict[int, Any]:
    """Pillow's built-in face at the sizes the measures draw in."""
    from PIL import ImageFont

    return {size: ImageFont.load_default(size=size) for size in range(16, 27, 2)}


def letters(n: int, rng: np.random.Generator) -> np.ndarray:
    """Latin letters (none digit-like) in Pillow's built-in font, random size, slant and place,
    light on dark and centred by their box as MNIST digits are."""
    fonts = _default_faces()
    chars = rng.integers(0, len(LETTERS), size=n)
    sizes = rng.choice(sorted(fonts), size=n)
    angles = rng.uniform(-20, 20, size=n)
    shift = rng.integers(-2, 3, size=(n, 2))
    return _draw([LETTERS[c] for c in chars], [fonts[int(s)] for s in sizes], angles, shift)


#: Typefaces training's glyph outliers are drawn in: the TrueType faces matplotlib ships (DejaVu
#: Sans/Serif/Mono with their bold and slanted cuts, STIX, Computer Modern). Never Pillow's default
#: face, in which :func:`letters` (the measure of letters) is drawn.
GLYPH_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
               "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
               "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "cmr10.ttf", "cmss10.ttf",
               "cmti10.ttf")
#: Training's glyphs: the letters of :data:`LETTERS` and symbols that are no digit's shape.
GLYPHS = LETTERS + "#%@*+=<>&?"


def font_glyphs(n: int, rng: np.random.Generator, chars: str = GLYPHS) -> tuple[np.ndarray, np.ndarray]:
    """``n`` characters of ``chars`` (letters and symbols by default) in :data:`GLYPH_FONTS`, random
    face, size, slant and place, light on dark: printed characters a camera pointed at digits
    also meets. Returns the uint8 frames ``(n, 28, 28)`` and each one's index in ``chars``."""
    import matplotlib
    from PIL import ImageFont

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    missing = [f for f in GLYPH_FONTS if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: lacks {', '.join(missing)}: expected the TrueType faces matplotlib "
                                "ships (reinstall matplotlib)")
    sizes = range(14, 27, 2)
    fonts = {(f, s): ImageFont.truetype(str(folder / f), s) for f in GLYPH_FONTS for s in sizes}
    which = rng.integers(0, len(chars), size=n)
    faces = rng.integers(0, len(GLYPH_FONTS), size=n)
    size = rng.choice(list(sizes), size=n)
    angles = rng.uniform(-20, 20, size=n)
    shift = rng.integers(-2, 3, size=(n, 2))
    return _draw([chars[w] for w in which], [fonts[(GLYPH_FONTS[f], int(z))] for f, z in zip(faces, size)],
                 angles, shift), which


def printed_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Digits in Pillow's built-in face (which training never sees), drawn as :func:`letters`
    is, and their labels: how the model does on print, such as a meter's or a form's."""
    fonts = _default_faces()
    labels = rng.integers(0, 10, size=n)
    sizes = rng.choice(sorted(fonts), size=n)
    angles = rng.uniform(-10, 10, size=n)
    return _draw([str(d) for d in labels], [fonts[int(s)] for s in sizes], angles), labels.astype(np.int64)


def scrambled_digits(images: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Digits cut into 7x7 tiles and shuffled: digit-like strokes, no digit."""
    pick = images[rng.integers(0, len(images), size=n)]
    tiles = pick.reshape(n, 4, 7, 4, 7).transpose(0, 1, 3, 2, 4).reshape(n, 16, 7, 7)
    perm = np.argsort(rng.random((n, 16)), axis=1)
    tiles = np.take_along_axis(tiles, perm[:, :, None, None], axis=1)
    return tiles.reshape(n, 4, 4, 7, 7).transpose(0, 1, 3, 2, 4).reshape(n, 28, 28).copy()


FASHION = Path(__file__).parent / "datasets" / "fashion-ood"


def fashion(n: int) -> np.ndarray:
    """The first ``n`` of the shipped 10,000 Fashion-MNIST images, checksum verified."""
    from .data import read_checksums, read_idx
    sums = read_checksums(FASHION / "SHA256SUMS")
    images = read_idx(FASHION / "fashion-ood-idx3-ubyte.gz", sums["fashion-ood-idx3-ubyte"])
    return images[:n].copy()


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
    if kind == "letters":
        return letters(n, rng)
    if kind == "fashion":
        return fashion(n)
    if kind == "scrambled-digits":
        if digits is None:
            raise ValueError("scrambled-digits needs digit images to cut up")
        return scrambled_digits(digits, n, rng)
    raise ValueError(f"OOD kind {kind!r}: expected one of {', '.join(KINDS)}")
