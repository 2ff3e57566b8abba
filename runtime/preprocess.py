"""Camera crops to the 28x28 frames the model was trained on, as MNIST was made. numpy only.

The steps (one batched implementation; :func:`preprocess` is a batch of one):

1. **Gray, [0, 1], working size.** uint8, uint16 or float in [0, 1]; gray ``(H, W)`` or colour
   ``(H, W, 3|4)`` in RGB order (``channels="bgr"`` for OpenCV frames), BT.601 luma. Crops
   of 128 pixels a side or more are block-averaged to between :data:`WORK` and twice that
   (in integers, for uint8 and uint16 crops; a long strip keeps :data:`MIN_SIDE` pixels across):
   a crop's digit needs no more to fill a 20-pixel box, and later steps then cost the same.
   A band along one side (a bezel, the paper's edge, a shadow: :func:`border_bands`) is cut
   off first; a digit whose ink then reaches the cut ran into the band (``touches-borders``).
2. **Polarity.** Against the medians of the crop's quarters (linearly interpolated and
   extrapolated, so a gradient cancels), whichever tail (1st or 99th percentile) is stronger is ink.
3. **Background flattened locally.** The crop is cut into 4x4 tiles (fewer under 48 pixels);
   the 10th percentile of each (the 90th under dark ink), bilinearly interpolated, is the
   paper's level and is subtracted: gradients and vignetting go, ink stays.
4. **Ink segmented.** A 3x3 box-smoothed copy is thresholded at Otsu's level, but never
   below the noise (the background's median + 4 robust sigmas). Ink pixels are grouped on a
   grid of cells (2-3 pixels a side, 8-connected), so a stroke broken by a pixel or two stays
   one component. The component with the most ink is the digit; components within two
   cells of it join it; the rest (specks, border clutter) are dropped.
5. **MNIST's normalisation.** Ink is scaled so its median stroke level is 1 (cores saturate,
   edges keep their anti-aliasing) and what stays under a fifth of that level is dropped (a
   blurred stroke's skirt, :data:`INK_FLOOR`); the ink's extent (the sum of its row and column
   profiles, which blur does not change) is fitted into a 20x20 box keeping its aspect
   ratio, and the frame is resampled (Keys cubic, widened when shrinking, so anti-aliased)
   with the ink's centre of mass at the centre of the 28x28 frame, to a fraction of a pixel.

An MNIST frame comes back essentially as it was (same box, same centre, same strokes).
Crops that hold no digit are refused, as :class:`PreprocessError` from :func:`preprocess`
or a reason per crop from :func:`preprocess_batch`:

- ``no-ink``: nothing stands out from the background and its noise, or too little of it;
- ``several-blobs``: another blob, away from the digit, holds at least a fifth as much ink;
- ``touches-borders``: the only ink touches three or four borders (a bezel, a shadow, the
  paper's edge; a digit cropped too tight), or the digit runs into a band cut off a side. Such
  a component is never taken for the digit while another one is there, however much more ink
  it holds;
- ``solid-ink``: a background tile is covered by ink (:func:`solid_tiles`): a blot or another
  object, which the flattening would hollow into a ring or a bar, a fair '0' or '1'; or an
  object so large that the paper around it was taken for the ink (its tiles stand below the paper's).

:mod:`toolchain.field` holds the torch twin of this module that training runs on the GPU
or CPU; a test holds the two to the same frames.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

#: The ink's extent (the sums of its row and column profiles) fills this many pixels: MNIST's
#: 20x20 box, as measured on its frames (median 19.8: the box's edge rows are partly covered).
BOX = 19.8
FRAME = 28
#: Where MNIST puts the centre of mass, in edge coordinates: pixel (14, 14), whose centre is
#: 14.5 (the mean over 20,000 training frames is 13.997 / 14.006 as a pixel index).
CENTER = 14.5
#: Crops of at least twice this many pixels a side are block-averaged to between WORK and 2 * WORK.
WORK = 64
#: The smallest crop side accepted.
MIN_SIDE = 8
#: Tiles of the background estimate are at least this many pixels a side.
TILE = 12
#: Percentile of a tile's pixels taken as its paper level (ink may cover up to the rest).
TILE_PERCENTILE = 10.0
#: Ink components are found on a grid of cells, at most this many a side.
GRID = 24
#: Components within this many cells of the digit's are part of it.
REACH = 2
#: Ink that touches this many of the crop's four borders is the scene, not a digit.
SPANS = 3
#: A far blob with at least this share of the digit's ink makes the crop ambiguous. Dropped, a
#: blob that large was mostly a part of the digit cut off by a gap (a 5's bar, a 7's stroke):
#: at 0.5, 8 of the 20 camera renderings of held-out digits the default gate accepted wrongly
#: had dropped a blob of a tenth of the ink or more, 93 of the 9,405 it accepted (docs/field.md).
RIVAL_SHARE = 0.2
OTSU_BINS = 64
LEVEL_BINS = 128
#: Ink must stand this many robust sigmas above the background, and at least MIN_CONTRAST.
NOISE_SIGMAS = 4.0
MIN_CONTRAST = 0.04
#: A background tile this share of the ink's height above the light's plane is solid ink.
SOLID_SHARE = 1.0
#: A background tile this share of the ink's height below the light's quadratic surface is an
#: object the polarity test took for the paper (:func:`solid_tiles`).
HOLLOW_SHARE = 0.15
#: Ink fainter than this share of its median level is paper: a blurred stroke's skirt, which would
#: otherwise thicken the stroke (MNIST's own edges are a pixel wide). Training's field frames keep
#: the skirt (``toolchain.field.field_frames(..., ink_floor=0)``), a stroke-width augmentation.
INK_FLOOR = 0.2
#: Ink spans fewer working pixels than this: a speck, not a digit.
MIN_EXTENT = 3.0
#: A border line (row or column) belongs to a band along that side (a bezel, the paper's edge, a
#: shadow) when this share of its pixels stand beyond BAND_SHARE of the way from the paper (the
#: median of 4x4 blocks' medians) to the crop's extreme on that side: a digit's stroke never
#: covers so much of a line, and the band is then cut off before anything else is measured.
BAND_COVER = 0.9
BAND_SHARE = 0.5
#: ... and at least this far from the paper (on [0, 1]): a band is a thing of its own, not a shade.
BAND_CONTRAST = 0.1
#: The band must end in a step: this many lines further in, the line's median is back within a
#: quarter of the way (light falling off across the crop is no band).
BAND_STEP = 3
#: Lines cut beyond the band's last one (its blurred edge).
BAND_MARGIN = 2
#: Bands wider than this share of the crop's side are not cut (the digit would go with them).
BAND_MOST = 0.4
#: A band on all four sides (a window) is cut when this many of the 4x4 blocks are at the paper's level.
WINDOW_BLOCKS = 5
#: :func:`preprocess_batch` runs the pipeline on this many working pixels at a time (64 crops of
#: 64x64). Whole batches of thousands of crops made every step's arrays hundreds of megabytes,
#: fresh pages from the kernel each time, and ran 2.2-2.6x slower than chunks of 32-128 crops
#: (4,000 camera crops, one run; docs/runtime.md).
CHUNK_PIXELS = 1 << 18
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as PIL's convert("L")

REASONS = ("no-ink", "several-blobs", "touches-borders", "solid-ink")


class PreprocessError(ValueError):
    """A crop the preprocessing refuses: ``reason`` is one of :data:`REASONS`.

    Bad input (a wrong shape, dtype or value) is a plain ``ValueError`` instead, so device
    code can tell a broken camera feed from a crop that holds no usable digit.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Frames:
    """What :func:`preprocess_batch` returns: ``images`` uint8 ``(N, 28, 28)`` (zeros where
    refused) and, per crop, ``refusals[i]`` None or a reason from :data:`REASONS`."""

    images: np.ndarray
    refusals: tuple[str | None, ...]

    @property
    def ok(self) -> np.ndarray:
        """bool ``(N,)``: the crops that gave a frame."""
        return np.array([r is None for r in self.refusals], dtype=bool)

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --------------------------------------------------------------------------- input

def _to_float(crop: Any, channels: str = "rgb", *, what: str = "crop") -> tuple[np.ndarray, tuple[int, ...]]:
    """Pixels of a crop (or a stack of them) as float32 in [0, 1], and the shape given; colour stays.

    Raises:
        ValueError: naming the shape, dtype or values given and what is expected.
    """
    a = np.asarray(crop)
    if channels not in ("rgb", "bgr"):
        raise ValueError(f"channels {channels!r}: expected 'rgb' or 'bgr'")
    if a.dtype == np.uint8:
        x = a.astype(np.float32) * np.float32(1 / 255)
    elif a.dtype == np.uint16:
        x = a.astype(np.float32) * np.float32(1 / 65535)
    elif a.dtype.kind == "f":
        if a.size and not np.isfinite(a).all():
            raise ValueError(f"{what} holds NaN or infinite values: expected finite pixels in [0, 1]")
        if a.size and (a.min() < 0.0 or a.max() > 1.0):
            raise ValueError(f"{what} values span [{a.min():.4g}, {a.max():.4g}]: expected floats in [0, 1], "
                             "or uint8/uint16 pixels")
        x = a.astype(np.float32)
    else:
        raise ValueError(f"{what} dtype {a.dtype}: expected uint8, uint16 or floats in [0, 1]")
    return x, a.shape


def _layout(a: np.ndarray, channels: str, batch: bool) -> np.ndarray:
    """The crops of ``a`` as ``(N, H, W, C)``, C 1 (gray) or 3 (in RGB order), a view where it can
    be; checks the shape (``_to_float`` checks the dtype and values).

    Raises:
        ValueError: naming the shape given and what is expected.
    """
    what = "crops" if batch else "crop"
    if batch and a.ndim not in (3, 4):
        raise ValueError(f"{what} of shape {a.shape}: expected (N, H, W) or (N, H, W, C)")
    core = a.shape[1:] if batch else a.shape
    if len(core) == 3 and core[-1] in (3, 4):
        x = a[..., :3] if channels == "rgb" else a[..., 2::-1]
    elif len(core) == 3 and core[-1] == 1:
        x = a
    elif len(core) == 2:
        x = a[..., None]
    else:
        expect = "(N, H, W) or (N, H, W, 3|4)" if batch else "(H, W) gray or (H, W, 3|4) colour"
        raise ValueError(f"{what} of shape {a.shape}: expected {expect}")
    x = x if batch else x[None]
    h, w = x.shape[1:3]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ValueError(f"{what} of {h}x{w} pixels: expected at least {MIN_SIDE}x{MIN_SIDE}")
    return x


def _gray_stack(crops: Any, channels: str, batch: bool) -> np.ndarray:
    """Gray float32 ``(N, H, W)`` in [0, 1] at full size."""
    x, _ = _to_float(crops, channels, what="crops" if batch else "crop")
    x = _layout(x, channels, batch)
    x = x[..., 0] if x.shape[3] == 1 else x @ LUMA
    return np.ascontiguousarray(x, dtype=np.float32)


def _gray_work(crops: Any, channels: str, batch: bool, work: int = WORK) -> np.ndarray:
    """Gray float32 ``(N, h, w)`` in [0, 1] at working size: :func:`reduce_to_work` of
    :func:`_gray_stack`. A uint8 or uint16 crop to be reduced is block-summed in integers first
    and made float and gray at working size: a 480x480 crop's float copy cost as much as the
    block average, and a 4000x3000 colour photo's was most of :func:`find_digits`' time and 190 MB.
    The same values, to float32 rounding (the sums are exact; the float path rounds each pixel)."""
    a = np.asarray(crops)
    if channels not in ("rgb", "bgr"):
        raise ValueError(f"channels {channels!r}: expected 'rgb' or 'bgr'")
    if a.dtype not in (np.uint8, np.uint16):
        return reduce_to_work(_gray_stack(a, channels, batch), work)
    x = _layout(a, channels, batch)
    h, w, c = x.shape[1:]
    f = work_factor(h, w, work)
    if f == 1:
        return _gray_stack(a, channels, batch)
    top = 255 if a.dtype == np.uint8 else 65535

    def exact(most: int) -> type:  # the narrowest unsigned type that holds sums up to ``most``
        return np.uint16 if most <= 0xFFFF else np.uint32 if most <= 0xFFFFFFFF else np.uint64
    # uint8 rows sum in 16 bits while they fit, exactly. A gray crop's sums run without its
    # channel axis of one (numpy's strided sums ran a quarter slower with it).
    z = _block_sums(x[..., 0] if c == 1 else x, f, exact(top * f), exact(top * f * f))
    g = z.astype(np.float32) * np.float32(1 / (top * f * f))
    return np.ascontiguousarray(g if c == 1 else g @ LUMA, dtype=np.float32)


def _block_sums(x: np.ndarray, f: int, row_dtype: Any, block_dtype: Any) -> np.ndarray:
    """Sums of the ``f x f`` blocks of ``(N, H, W, ...)`` (rows and columns that fill no block
    dropped), a block's rows summed in ``row_dtype``, then its columns in ``block_dtype`` one
    strided slice at a time and in order: numpy's sum over a short last axis cost five times as
    much, and in order is how numpy adds fewer than 8 values (a float sum is numpy's to the bit)."""
    hh, ww = x.shape[1] // f, x.shape[2] // f
    x = x[:, :hh * f, :ww * f]
    r = x.reshape(x.shape[0], hh, f, *x.shape[2:]).sum(axis=2, dtype=row_dtype)
    r = r.astype(block_dtype, copy=False)
    z = r[:, :, 0::f].copy()
    for i in range(1, f):
        z += r[:, :, i::f]
    return z


def work_factor(h: int, w: int, work: int = WORK) -> int:
    """The block size that reduces an ``h x w`` image to working size: the largest that keeps
    the longer side at least ``work`` (so it ends below ``2 * work``), but never one that takes
    the shorter side under :data:`MIN_SIDE` (a long strip keeps its width)."""
    return max(1, min(max(h, w) // work, min(h, w) // MIN_SIDE))


def chunk_size(h: int, w: int) -> int:
    """How many crops of ``h x w`` pixels at working size :func:`preprocess_batch` takes through
    the pipeline at a time: :data:`CHUNK_PIXELS` working pixels' worth, at least one."""
    return max(1, CHUNK_PIXELS // max(1, h * w))


def reduce_to_work(x: np.ndarray, work: int = WORK) -> np.ndarray:
    """Block-average ``(N, H, W)`` by :func:`work_factor`; rows/columns that fill no block are dropped."""
    f = work_factor(*x.shape[1:], work)
    if f == 1:
        return x
    return (_block_sums(x, f, x.dtype, x.dtype) * np.float32(1 / (f * f))).astype(np.float32)


# --------------------------------------------------------------------------- helpers

def kth(x: np.ndarray, q: float) -> np.ndarray:
    """The value at rank ``floor(q * (n - 1))`` of each row of ``(N, n)``: a percentile
    without interpolation, so numpy and torch give the same number."""
    k = int(q * (x.shape[1] - 1))
    return np.partition(x, k, axis=1)[:, k]


def kth_many(x: np.ndarray, qs: tuple[float, ...]) -> list[np.ndarray]:
    """:func:`kth` at several ``qs`` with one partition."""
    ks = [int(q * (x.shape[1] - 1)) for q in qs]
    p = np.partition(x, sorted(set(ks)), axis=1)
    return [p[:, k] for k in ks]


@lru_cache(maxsize=64)
def _tile_interp(size: int, tiles: int, tile: int, extrapolate: bool = False) -> np.ndarray:
    """``(size, tiles)``: bilinear weights of the tile centres for each pixel (held constant
    beyond the outer centres, or carried on linearly with ``extrapolate``)."""
    pos = (np.arange(size) + 0.5) / tile - 0.5
    if not extrapolate:
        pos = np.clip(pos, 0.0, tiles - 1)
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, max(tiles - 2, 0))
    frac = pos - i0
    m = np.zeros((size, tiles), dtype=np.float32)
    m[np.arange(size), i0] = 1.0 - frac
    if tiles > 1:
        m[np.arange(size), i0 + 1] += frac
    return m


def tiles_for(size: int, most: int = 4) -> tuple[int, int]:
    """(tile count, tile size) along a side of ``size`` pixels: at most ``most`` tiles (a quarter
    of a crop: a digit's blurred core can fill a smaller tile), never under TILE pixels."""
    t = max(1, min(most, size // TILE))
    return t, size // t


def tile_values(x: np.ndarray, most: int, qs: tuple[float, ...]) -> list[np.ndarray]:
    """For each quantile in ``qs``: that quantile of each of at most ``most`` x ``most`` tiles
    of ``(N, H, W)``, as ``(N, ty, tx)``."""
    n, h, w = x.shape
    ty, sy = tiles_for(h, most)
    tx, sx = tiles_for(w, most)
    t = x[:, :ty * sy, :tx * sx].reshape(n, ty, sy, tx, sx).transpose(0, 1, 3, 2, 4).reshape(n * ty * tx, sy * sx)
    return [v.reshape(n, ty, tx) for v in kth_many(t, qs)]


def interpolate_tiles(v: np.ndarray, h: int, w: int, extrapolate: bool = False) -> np.ndarray:
    """Tile values ``(N, ty, tx)`` of an ``(H, W)`` image, bilinearly interpolated to every pixel."""
    ty, tx = v.shape[1:]
    iy = _tile_interp(h, ty, tiles_for(h, ty)[1], extrapolate)
    ix = _tile_interp(w, tx, tiles_for(w, tx)[1], extrapolate)
    return iy @ v @ ix.T


def solid_tiles(paper: np.ndarray, level: np.ndarray) -> np.ndarray:
    """bool ``(N,)``: a background tile is covered by solid ink (a blot, another object).

    ``paper`` ``(N, ty, tx)`` is each tile's paper level with the ink as the positive
    direction, ``level`` the ink's median height above the paper. Light varies smoothly, so a
    plane fitted to the tiles' levels, refitted without the quarter that stand highest above
    it, models the paper; a tile that stands more than :data:`SOLID_SHARE` of the ink's height
    above that plane is ink, which the local flattening hid (it hollows a blot into a ring and
    turns an object's edge into a bar, a fair '0' and '1').

    An object that fills a third of the crop or more can also turn the polarity test: the
    paper around it is then taken for the ink, and the object for the paper, whose tiles stand
    *below* the light's surface. A quadratic surface (light falling off and a vignette, which
    a plane does not follow), fitted the same way, models the paper then; a tile more than
    :data:`HOLLOW_SHARE` of the ink's height below it is refused too. Fewer than nine tiles: never.
    """
    n, ty, tx = paper.shape
    k = ty * tx
    if k < 9:
        return np.zeros(n, dtype=bool)
    v = paper.reshape(n, k).astype(np.float64)
    above = robust_residuals(v, *refit_tables("plane", ty, tx)).max(axis=1)
    below = -robust_residuals(v, *refit_tables("surface", ty, tx)).min(axis=1)
    lv = level.astype(np.float64)
    return (above > SOLID_SHARE * lv) | (below > HOLLOW_SHARE * lv)


def robust_residuals(v: np.ndarray, a: np.ndarray, refit: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """``(N, k)``: tile levels ``v`` less the least-squares fit of design ``a`` (``(k, p)``),
    refitted without the quarter of the tiles that stand highest above the first fit.

    ``refit`` and ``ranks`` are :func:`refit_tables`': the refit is one product with the
    pseudo-inverse for the tiles left out, looked up by their combination's rank, not a LAPACK
    solve per crop: a fifth of the cost in a batch, and no LAPACK threads to wait on (a single
    crop's two solves took milliseconds while training ran on the same cores)."""
    k = v.shape[1]
    m = k // 4
    first = v - v @ refit[0].T @ a.T
    out = np.sort(np.argsort(first, axis=1, kind="stable")[:, k - m:], axis=1)
    coef = np.einsum("npk,nk->np", refit[ranks[out, np.arange(m)].sum(axis=1) + 1], v)
    return v - coef @ a.T


@lru_cache(maxsize=16)
def refit_tables(kind: str, ty: int, tx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The design ``a`` ``(k, p)`` of a ``"plane"`` (1, row, column) or a ``"surface"`` (its
    quadratic terms too, centred) over ``ty x tx`` tiles; ``refit`` ``(1 + C(k, k // 4), p, k)``,
    the pseudo-inverse of ``a`` with every tile, then with each set of ``k // 4`` tiles left out
    (zero columns there); and ``ranks`` ``(k, k // 4)``: entries ``[d_j, j]`` for the left-out
    tiles ``d_0 < d_1 < ...`` sum to that set's index less one (the combinatorial number system)."""
    gy, gx = np.mgrid[0:ty, 0:tx].astype(np.float64)
    gy, gx = gy.ravel(), gx.ravel()
    k = ty * tx
    if kind == "plane":
        a = np.stack([np.ones(k), gy, gx], axis=1)
    elif kind == "surface":
        gy, gx = gy - (ty - 1) / 2, gx - (tx - 1) / 2
        a = np.stack([np.ones(k), gy, gx, gy * gy, gy * gx, gx * gx], axis=1)
    else:
        raise ValueError(f"design {kind!r}: expected 'plane' or 'surface'")
    m = k // 4
    ranks = np.array([[math.comb(d, j + 1) for j in range(m)] for d in range(k)], dtype=np.int64)
    out = np.array(list(itertools.combinations(range(k), m)), dtype=np.int64)  # (C(k, m), m)
    keep = np.ones((len(out), k))
    keep[ranks[out, np.arange(m)].sum(axis=1)[:, None], out] = 0.0
    refit = np.concatenate([np.linalg.pinv(a)[None], np.linalg.pinv(keep[:, :, None] * a[None])])
    return a, refit, ranks


def dark_ink(x: np.ndarray) -> np.ndarray:
    """bool ``(N,)``: the ink is darker than the paper. Against the medians of 2x2 tiles (paper,
    as a digit covers well under half of a crop's quarter), linearly interpolated and
    extrapolated (so a gradient across the crop cancels), the ink makes the stronger tail.
    A global median against the extremes fails when light falls off by more than the contrast."""
    n, h, w = x.shape
    (v,) = tile_values(x, 2, (0.5,))
    # The medians' plane at every other pixel of every other row only: the pixels compared.
    ty, tx = v.shape[1:]
    iy = _tile_interp(h, ty, tiles_for(h, ty)[1], True)[::2]
    ix = _tile_interp(w, tx, tiles_for(w, tx)[1], True)[::2]
    lo, hi = kth_many((x[:, ::2, ::2] - iy @ v @ ix.T).reshape(n, -1), (0.01, 0.99))
    return -lo > hi


def pad1(x: np.ndarray, value: Any = None) -> np.ndarray:
    """``(N, H, W)`` with one pixel added on each side: ``value``, or the edge repeated when None
    (np.pad costs ten times as much on these small arrays)."""
    n, h, w = x.shape
    p = np.empty((n, h + 2, w + 2), dtype=x.dtype)
    p[:, 1:-1, 1:-1] = x
    if value is None:
        p[:, 0, 1:-1], p[:, -1, 1:-1] = x[:, 0], x[:, -1]
        p[:, :, 0], p[:, :, -1] = p[:, :, 1], p[:, :, -2]
    else:
        p[:, 0], p[:, -1], p[:, :, 0], p[:, :, -1] = value, value, value, value
    return p


def box3(x: np.ndarray) -> np.ndarray:
    """3x3 mean of ``(N, H, W)`` with edge pixels repeated."""
    p = pad1(x)
    r = p[:, :-2] + p[:, 1:-1] + p[:, 2:]
    return (r[:, :, :-2] + r[:, :, 1:-1] + r[:, :, 2:]) * np.float32(1 / 9)


def otsu(x: np.ndarray, top: np.ndarray, bins: int = OTSU_BINS) -> np.ndarray:
    """Otsu's threshold of each row of ``(N, n)``, values in [0, top], on ``bins`` bins."""
    n = x.shape[0]
    idx = np.minimum((x / top[:, None] * bins).astype(np.int64), bins - 1)  # x >= 0: no clip below
    if n > 1:
        idx += np.arange(n)[:, None] * bins
    hist = np.bincount(idx.ravel(), minlength=n * bins).reshape(n, bins)
    p = hist.astype(np.float64) / x.shape[1]
    centers = (np.arange(bins) + 0.5) / bins
    omega = np.cumsum(p, axis=1)
    mu = np.cumsum(p * centers, axis=1)
    between = (mu[:, -1:] * omega - mu) ** 2 / np.maximum(omega * (1.0 - omega), 1e-12)
    k = np.argmax(between[:, :-1], axis=1)
    return ((k + 1) / bins * top).astype(np.float32)


def label_cells(on: np.ndarray) -> np.ndarray:
    """8-connected components of boolean grids ``(N, gh, gw)``: each on cell gets the flat
    index of its component's first cell, off cells get ``gh * gw``.

    Min-label propagation with pointer jumping: a handful of passes for a digit's grid, each in
    buffers allocated once (a pass is a few microseconds of numpy calls on a 22x22 grid).
    """
    n, gh, gw = on.shape
    big = gh * gw
    lab = np.where(on, np.arange(big).reshape(1, gh, gw), big)
    ext = np.full((n, big + 1), big, dtype=lab.dtype)
    table = ext.reshape(-1)
    offsets = None if n == 1 else (np.arange(n, dtype=lab.dtype)[:, None] * (big + 1)).reshape(n, 1, 1)
    off_big = np.where(on, 0, big).astype(lab.dtype)  # a maximum with it keeps off cells ``big``
    # One padded buffer for every pass: its border stays ``big``, the inside takes the labels.
    p = np.full((n, gh + 2, gw + 2), big, dtype=lab.dtype)
    inside = p[:, 1:-1, 1:-1]
    r = np.empty((n, gh, gw + 2), dtype=lab.dtype)
    m = np.empty((n, gh, gw), dtype=lab.dtype)
    while True:
        inside[...] = lab
        np.minimum(np.minimum(p[:, :-2], p[:, 1:-1], out=r), p[:, 2:], out=r)
        np.minimum(np.minimum(r[:, :, :-2], r[:, :, 1:-1], out=m), r[:, :, 2:], out=m)
        np.maximum(m, off_big, out=m)
        ext[:, :big] = m.reshape(n, big)
        # Pointer jumping: take the label of the cell that is our label, halving chains.
        new = table[m if offsets is None else m + offsets]
        if np.array_equal(new, lab):
            return lab
        lab = new


def cell_sums(x: np.ndarray, c: int) -> np.ndarray:
    """Sums of the ``c x c`` cells of float ``(N, c * gh, c * gw)``, numpy's ``sum(axis=(2, 4))``
    to the bit at under half its cost (a reduction over two short strided axes is slow): numpy
    adds fewer than 8 values in order, so for cells under 8 pixels a side (a crop's, whose working
    size is under 128) a cell's rows' pixels are added in order, then its rows; larger cells (a
    long strip's) are numpy's own. (:func:`_block_sums` adds a block's rows first: another order,
    which differs in the last bit, so it cannot stand in here.)"""
    r = x.reshape(x.shape[0], x.shape[1] // c, c, x.shape[2] // c, c)
    if c >= 8:
        return r.sum(axis=(2, 4))
    rows = r[..., 0].copy()
    for i in range(1, c):
        rows += r[..., i]
    out = rows[:, :, 0].copy()
    for i in range(1, c):
        out += rows[:, :, i]
    return out


def dilate_cells(on: np.ndarray, steps: int = 1) -> np.ndarray:
    """``steps`` 3x3 dilations of boolean grids ``(N, gh, gw)``."""
    for _ in range(steps):
        p = pad1(on, False)
        r = p[:, :-2] | p[:, 1:-1] | p[:, 2:]
        on = r[:, :, :-2] | r[:, :, 1:-1] | r[:, :, 2:]
    return on


def keys_cubic(t: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel (a = -0.5), as PIL's BICUBIC and OpenCV's INTER_CUBIC."""
    a = np.abs(t)
    return np.where(a <= 1.0, (1.5 * a - 2.5) * a * a + 1.0,
                    np.where(a < 2.0, ((-0.5 * a + 2.5) * a - 4.0) * a + 2.0, 0.0))


def resample_weights(center: np.ndarray, scale: np.ndarray, size: int) -> np.ndarray:
    """``(N, FRAME, size)``: output pixel i samples source position
    ``center + (i + 0.5 - CENTER) / scale`` (edge coordinates) with Keys' kernel, widened by
    ``1 / scale`` when shrinking (anti-aliasing). Each row's taps sum to one; taps that fall
    outside the source read nothing (the paper around the ink is zero)."""
    n = center.shape[0]
    r = np.maximum(1.0, 1.0 / scale)[:, None, None]
    taps = int(math.ceil(4.0 * float(r.max()))) + 1
    u = center[:, None, None] + (np.arange(FRAME, dtype=np.float64)[None, :, None] + 0.5 - CENTER) / scale[:, None, None]
    j = np.floor(u - 2.0 * r) + np.arange(taps, dtype=np.float64)[None, None, :]  # (N, FRAME, taps)
    w = keys_cubic((j + 0.5 - u) / r)
    w = w / w.sum(axis=2, keepdims=True)
    inside = (j >= 0) & (j < size)
    m = np.zeros((n, FRAME, size + 1), dtype=np.float32)
    row = (np.arange(n * FRAME) * (size + 1)).reshape(n, FRAME, 1)
    # Taps of a row are distinct source pixels, so one flat assignment places them all.
    m.reshape(-1)[(row + np.where(inside, j, size).astype(np.int64)).reshape(-1)] = np.where(inside, w, 0.0).reshape(-1)
    return m[:, :, :size]


def border_bands(x: np.ndarray) -> np.ndarray:
    """int ``(N, 4)``: how many lines to cut off the top, bottom, left and right of gray
    ``(N, H, W)`` (working size), where a band runs along that side (:data:`BAND_COVER`).

    A dark band (a bezel, the table beyond the paper) wider than about a quarter of the crop
    turns the polarity test, and a narrower one fills background tiles (a ``solid-ink``
    refusal); cut off, the crop is paper and a digit again. A band of either polarity, ending in
    a step (:data:`BAND_STEP`), at most :data:`BAND_MOST` of the side; with
    :data:`BAND_MARGIN` more lines for its blurred edge, and never more than half of a side.
    The paper (:func:`band_paper`) must also run along the border, or, for a band on all four
    sides, fill :data:`WINDOW_BLOCKS` blocks: else the "paper" is a bold digit's ink.
    """
    n, h, w = x.shape
    cuts = np.zeros((n, 4), dtype=np.int64)
    paper, blocks = band_paper(x)
    if h != w:
        ends = [x[:, [0, -1]], x[:, :, [0, -1]].transpose(0, 2, 1)]
    else:  # one array of the four lines (np.stack's own cost was most of this)
        four = np.empty((n, 4, w), dtype=x.dtype)
        four[:, 0], four[:, 1], four[:, 2], four[:, 3] = x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]
        ends = [four]
    # A band takes in the border line itself: only crops where one does are looked at further
    # (most crops end here). A band stands at least BAND_CONTRAST from the paper, so where no
    # border line does even that, no crop has a band, and the levels below are not needed.
    if not np.any(_band_ends(ends, paper, np.full(n, BAND_CONTRAST, dtype=paper.dtype))):
        return cuts
    (ring_lo, ring_hi), lo, hi = band_extremes(x)
    # A band stands at least half as far from the paper as the crop's other extreme (the ink,
    # when the band is on the paper's other side): a shade of light is no band.
    least = np.maximum(BAND_CONTRAST, BAND_SHARE * np.maximum(paper - lo, hi - paper))
    edge = (1.0 - BAND_COVER) / 2
    dark_t, light_t = (paper - least)[:, None, None], (paper + least)[:, None, None]
    dark_end, light_end = _band_ends(ends, paper, least, both=True)
    # Where the digit fills most of the crop (an MNIST frame, a tight crop) the blocks' median is
    # ink: the paper must also run along the crop's border, within its quartiles (a band takes
    # up to half of the border), unless a band runs along all four sides (a meter's window) and
    # the paper inside is even (WINDOW_BLOCKS blocks at its level; a bold digit's blocks are not).
    even = (np.abs(blocks - paper[:, None]) <= least[:, None] / 4).sum(axis=1) >= WINDOW_BLOCKS
    window = (dark_end.all(axis=1) | light_end.all(axis=1)) & even
    on_border = (paper >= ring_lo - least / 2) & (paper <= ring_hi + least / 2)
    at = np.flatnonzero((dark_end | light_end).any(axis=1) & (on_border | window))
    if len(at) == 0:
        return cuts
    m = len(at)
    rows = np.arange(m)
    p, d_lo, d_hi = paper[at], paper[at] - lo[at], hi[at] - paper[at]
    for axis, lines in enumerate((x[at], x[at].transpose(0, 2, 1))):  # rows (top, bottom), then columns
        size, length = lines.shape[1:]
        q_lo, mid_all, q_hi = (q.reshape(m, size) for q in kth_many(lines.reshape(m * size, length),
                                                                      (edge, 0.5, 1.0 - edge)))
        # Each line: 1 part of a dark band, 2 of a light one, 0 neither.
        kind_all = np.where(q_hi < dark_t[at, 0], 1, np.where(q_lo > light_t[at, 0], 2, 0))
        for end in (0, 1):  # from the first line inwards, then from the last
            kind, mid = (kind_all, mid_all) if end == 0 else (kind_all[:, ::-1], mid_all[:, ::-1])
            k = np.cumprod((kind == kind[:, :1]) & (kind[:, :1] > 0), axis=1).sum(axis=1)
            back = mid[rows, np.minimum(k + BAND_STEP, size - 1)]
            stepped = np.where(kind[:, 0] == 1, back > p - BAND_SHARE / 2 * d_lo, back < p + BAND_SHARE / 2 * d_hi)
            ok = (k > 0) & (k <= BAND_MOST * size) & stepped
            cuts[at, 2 * axis + end] = np.where(ok, k + BAND_MARGIN, 0)
    # Two bands facing each other may not leave less than half of the side.
    for a, b, size in ((0, 1, h), (2, 3, w)):
        over = cuts[:, a] + cuts[:, b] > size // 2
        cuts[over, a] = cuts[over, b] = 0
    return cuts


def _band_ends(ends: list[np.ndarray], paper: np.ndarray, least: np.ndarray,
               both: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Which border lines (top, bottom, left, right) of each crop lie, all but :data:`BAND_COVER`
    of them, ``least`` or more below the ``paper`` (dark) or above it (light): bool ``(N, 4)``,
    the two or'ed, or with ``both`` the two apart. ``ends`` are the lines as :func:`border_bands`
    stacks them. Counts stand in for kth_many's ranks, which they equal: the value at rank r is
    under t exactly when more than r values are."""
    edge = (1.0 - BAND_COVER) / 2
    dark_t, light_t = (paper - least)[:, None, None], (paper + least)[:, None, None]
    dark_ends, light_ends = [], []
    for lines in ends:
        length = lines.shape[2]
        r_lo, r_hi = int(edge * (length - 1)), int((1.0 - edge) * (length - 1))
        dark_ends.append((lines < dark_t).sum(axis=2) > r_hi)
        light_ends.append((lines <= light_t).sum(axis=2) <= r_lo)
    dark_end, light_end = np.concatenate(dark_ends, axis=1), np.concatenate(light_ends, axis=1)
    return (dark_end, light_end) if both else dark_end | light_end


def band_paper(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper and the 4x4 blocks' medians ``(N, 16)`` of each crop of ``(N, H, W)``, from every
    other pixel: the paper is the median of the blocks' medians (a band fills one side's blocks,
    the digit a few central ones, so the crop's median can be ink)."""
    s = x[:, ::2, ::2]
    n, hs, ws = s.shape
    by, bx = hs // 4, ws // 4
    blocks = s[:, :4 * by, :4 * bx].reshape(n, 4, by, 4, bx).transpose(0, 1, 3, 2, 4).reshape(n * 16, by * bx)
    medians = kth(blocks, 0.5).reshape(n, 16)
    return kth(medians, 0.5), medians


def band_extremes(x: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]:
    """The quartiles of the border's pixels, and the darkest and the lightest level (the 0.5th
    and 99.5th percentiles, from every other pixel) of each crop of ``(N, H, W)``."""
    n = x.shape[0]
    ring = kth_many(np.concatenate([x[:, 0, ::2], x[:, -1, ::2], x[:, 1:-1:2, 0], x[:, 1:-1:2, -1]], axis=1),
                    (0.25, 0.75))
    lo, hi = kth_many(x[:, ::2, ::2].reshape(n, -1), (0.005, 0.995))
    return (ring[0], ring[1]), lo, hi


# --------------------------------------------------------------------------- the pipeline

def _segment(x: np.ndarray, tile: int | None = None, dark: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Steps 2-4a on gray ``(N, H, W)``: polarity (``dark``, bool ``(N,)``, when not given),
    flattened background, the smoothed image and its ink mask, with the background level, the
    noise (raw and smoothed), the smoothed peak and the background tiles' paper levels (ink positive)."""
    n, h, w = x.shape
    # Global statistics from every other pixel of every other row: as good, a quarter of the work.
    # The paper under light ink is a low percentile of each tile, under dark ink a high one.
    if dark is None:
        dark = dark_ink(x)
    # A frame gets tiles of about ``tile`` pixels, but never fewer than a crop's four a side: a
    # small frame in one or two tiles takes light falling off across it for ink.
    most = 4 if tile is None else max(4, max(h, w) // tile)
    q_lo, q_hi = TILE_PERCENTILE / 100, 1 - TILE_PERCENTILE / 100
    # Each tile's paper with the ink as the positive direction (1 - x under dark ink). Crops of
    # one polarity (a single crop always) need only its percentile: the same values, less work.
    if dark.all():
        (t_hi,) = tile_values(x, most, (q_hi,))
        flat, paper = interpolate_tiles(t_hi, h, w) - x, 1.0 - t_hi
    elif not dark.any():
        (t_lo,) = tile_values(x, most, (q_lo,))
        flat, paper = x - interpolate_tiles(t_lo, h, w), t_lo
    else:
        t_lo, t_hi = tile_values(x, most, (q_lo, q_hi))
        bg_lo, bg_hi = interpolate_tiles(t_lo, h, w), interpolate_tiles(t_hi, h, w)
        flat = np.where(dark[:, None, None], bg_hi - x, x - bg_lo)
        paper = np.where(dark[:, None, None], 1.0 - t_hi, t_lo)
    f = flat[:, ::2, ::2].reshape(n, -1)
    base = kth(f, 0.5)
    sigma = kth(np.abs(f - base[:, None]), 0.5) * np.float32(1.4826)
    sm = box3(flat)
    smf = sm.reshape(n, h * w)
    # The smoothed image's own noise: smoothing cuts sensor noise about threefold, not the ink.
    fs = sm[:, ::2, ::2].reshape(n, -1)
    base_s = kth(fs, 0.5)
    sigma_s = kth(np.abs(fs - base_s[:, None]), 0.5) * np.float32(1.4826)
    top = np.maximum(smf.max(axis=1), np.float32(1e-6))
    thr = np.maximum(otsu(np.maximum(smf, 0), top), base_s + NOISE_SIGMAS * sigma_s)
    mask = sm > thr[:, None, None]
    return flat, sm, mask, base, sigma, base_s, sigma_s, top, paper


def _frames(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_normalise` after :func:`border_bands`: a crop with a band along a side is cut
    and normalised on its own, and refused when the digit runs into the cut."""
    cuts = border_bands(x)
    banded = cuts.any(axis=1)
    if not banded.any():
        return _normalise(x)
    n, h, w = x.shape
    frames = np.zeros((n, FRAME, FRAME), dtype=np.float32)
    code = np.zeros(n, dtype=np.int64)
    if not banded.all():
        frames[~banded], code[~banded] = _normalise(x[~banded])
    for i in np.flatnonzero(banded):
        top, bottom, left, right = cuts[i].tolist()
        frames[i:i + 1], code[i:i + 1] = _normalise(x[i:i + 1, top:h - bottom, left:w - right], cuts[i:i + 1] > 0)
    return frames, code


def _normalise(x: np.ndarray, cut: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Float32 gray ``(N, H, W)`` at working size -> ([0, 1] frames ``(N, 28, 28)``, reason codes ``(N,)``).

    ``cut``, bool ``(N, 4)``: the top, bottom, left and right borders where a band was cut off
    (:func:`border_bands`); a digit that touches one of them ran into the band and is refused
    as ``touches-borders``. Reason codes: 0 ok, then 1 + the index in :data:`REASONS`.
    """
    n, h, w = x.shape
    flat, sm, mask, base, sigma, base_s, sigma_s, top, paper = _segment(x)
    contrast_ok = (top - base_s) >= np.maximum(np.float32(MIN_CONTRAST), 1.5 * NOISE_SIGMAS * sigma_s)


    # Components on a grid of cells.
    c = max(1, math.ceil(max(h, w) / GRID))
    gh, gw = math.ceil(h / c), math.ceil(w / c)
    ink = np.zeros((n, gh * c, gw * c), dtype=np.float32)
    ink[:, :h, :w] = np.where(mask, np.maximum(flat, 0), np.float32(0))
    cell_mass = cell_sums(ink, c)
    on = cell_mass > 0
    lab = label_cells(on)
    big = gh * gw
    rows = np.arange(n)[:, None]
    mass = np.bincount((lab.reshape(n, big) + rows * (big + 1)).ravel(), weights=cell_mass.reshape(n, big).ravel(),
                       minlength=n * (big + 1)).reshape(n, big + 1)[:, :big]
    # The borders each component touches: one that spans three of them (a dark bezel, the
    # paper's edge, a shadow along a side) is the scene around the digit, never the digit while
    # another component is there, however much more ink it holds; alone, it is refused.
    hit = np.zeros((n, 4, big + 1), dtype=bool)  # per border, the labels on it: one assignment for the four
    at = [lab[:, 0, :], lab[:, (h - 1) // c, :], lab[:, :, 0], lab[:, :, (w - 1) // c]]
    hit.reshape(n, 4 * (big + 1))[rows, np.concatenate([a + i * (big + 1) for i, a in enumerate(at)], axis=1)] = True
    sides = hit.sum(axis=1)
    candidate = np.where(sides[:, :big] >= SPANS, -1.0, mass)
    main = np.where(candidate.max(axis=1) > 0, candidate.argmax(axis=1), mass.argmax(axis=1))
    is_main = lab == main[:, None, None]
    near = dilate_cells(is_main, REACH) & on
    table = np.zeros((n, big + 1), dtype=bool)
    table[rows, np.where(near, lab, big).reshape(n, big)] = True  # the off cells' ``big``: cleared below
    touch = sides > 0  # components on any border (the off cells' label, big, is none)
    touch[:, big] = False
    main_onehot = np.zeros((n, big + 1), dtype=bool)
    main_onehot[np.arange(n), main] = True
    keep_label = (table & ~touch) | main_onehot
    keep_label[:, big] = False
    keep = keep_label[rows, lab.reshape(n, big)].reshape(n, gh, gw)
    main_mass = mass[np.arange(n), main]
    rival = (~keep_label[:, :big] & ~touch[:, :big] & (mass >= RIVAL_SHARE * main_mass[:, None])).any(axis=1)
    all_borders = sides[np.arange(n), main] >= SPANS

    # Ink level: the median of the kept ink pixels, from a histogram (the same in torch).
    region = dilate_cells(keep, 1).repeat(c, axis=1).repeat(c, axis=2)[:, :h, :w]
    kept_mask = mask & keep.repeat(c, axis=1).repeat(c, axis=2)[:, :h, :w]
    if cut is not None:  # the digit's own pixels reach a line where a band was cut off
        edges = np.stack([kept_mask[:, 0].any(axis=1), kept_mask[:, -1].any(axis=1),
                          kept_mask[:, :, 0].any(axis=1), kept_mask[:, :, -1].any(axis=1)], axis=1)
        all_borders |= (edges & cut).any(axis=1)
    # Kept pixels stand above Otsu's level, so over 0: only the top needs clipping.
    idx = np.minimum((sm / top[:, None, None] * LEVEL_BINS).astype(np.int64), LEVEL_BINS - 1)
    hist = np.bincount((np.where(kept_mask, idx, LEVEL_BINS) + rows[:, :, None] * (LEVEL_BINS + 1)).ravel(),
                       minlength=n * (LEVEL_BINS + 1)).reshape(n, LEVEL_BINS + 1)[:, :LEVEL_BINS]
    count = hist.sum(axis=1)
    cum = np.cumsum(hist, axis=1)
    mid = np.argmax(cum * 2 >= count[:, None], axis=1)
    level = ((mid + 0.5) / LEVEL_BINS * top).astype(np.float32)
    floor = np.maximum(base + 3.0 * sigma, np.float32(INK_FLOOR) * level)
    span = np.maximum(level - floor, np.float32(1e-6))
    v = np.clip((flat - floor[:, None, None]) / span[:, None, None], 0.0, 1.0) * region

    # MNIST's box and centre of mass.
    hy = v.max(axis=2).sum(axis=1)
    wx = v.max(axis=1).sum(axis=1)
    total = v.sum(axis=(1, 2))
    extent = np.maximum(hy, wx)
    ok_mass = (total > 0) & (extent >= MIN_EXTENT)
    safe_total = np.where(total > 0, total, np.float32(1.0))
    cy = (v.sum(axis=2) @ (np.arange(h) + 0.5)) / safe_total
    cx = (v.sum(axis=1) @ (np.arange(w) + 0.5)) / safe_total
    scale = BOX / np.where(extent > 0, extent, np.float32(1.0)).astype(np.float64)
    if h == w:  # one call for both axes: the weights are built row by row, so they are the same
        both = resample_weights(np.concatenate([cy, cx]), np.concatenate([scale, scale]), h)
        ry, rx = both[:n], both[n:]
    else:
        ry, rx = resample_weights(cy, scale, h), resample_weights(cx, scale, w)
    out = np.clip(ry @ v @ rx.transpose(0, 2, 1), 0.0, 1.0)
    peak = out.reshape(n, -1).max(axis=1)
    out = out / np.where(peak > 0, peak, np.float32(1.0))[:, None, None]

    code = np.zeros(n, dtype=np.int64)
    code[solid_tiles(paper, level)] = 4
    code[all_borders] = 3
    code[rival] = 2
    code[~(contrast_ok & ok_mass & on.any(axis=(1, 2)))] = 1
    out[code > 0] = 0.0
    return out.astype(np.float32), code


def _messages(code: int, shape: tuple[int, ...]) -> str:
    return {
        1: f"crop of shape {shape} has no ink: nothing stands out from the background and its noise; "
           "expected a digit darker or lighter than its paper",
        2: f"crop of shape {shape} holds several separate blobs of ink: expected one digit (crop closer to it)",
        3: f"crop of shape {shape}: the ink touches three or four borders or runs into a band along one (a bezel, "
           "the paper's edge or a digit cropped too tight): expected one digit with some paper around it",
        4: f"crop of shape {shape} holds solid ink as large as a background tile (a blot or another object): "
           "expected a digit's strokes on paper",
    }[code]


def preprocess(crop: Any, *, channels: str = "rgb") -> np.ndarray:
    """A camera crop of one digit -> uint8 ``(28, 28)``, light ink on black, as MNIST's frames.

    Args:
        crop: ``(H, W)`` gray or ``(H, W, 3|4)`` colour; uint8, uint16, or floats in [0, 1];
            either polarity; at least 8x8 pixels.
        channels: colour order, ``"rgb"`` (PIL, most cameras) or ``"bgr"`` (OpenCV).

    Raises:
        PreprocessError: the crop holds no usable digit (``.reason`` says why).
        ValueError: the input itself is malformed (shape, dtype, values).
    """
    a = np.asarray(crop)
    frames, code = _frames(_gray_work(a, channels, batch=False))
    if code[0]:
        raise PreprocessError(REASONS[int(code[0]) - 1], _messages(int(code[0]), a.shape))
    return np.rint(frames[0] * 255.0).astype(np.uint8)


def preprocess_batch(crops: Any, *, channels: str = "rgb") -> Frames:
    """Many crops at once: an array ``(N, H, W[, C])`` of equal-sized crops, or a sequence
    of crops of any sizes (grouped by size internally). Refusals do not raise; they are
    reported per crop in :attr:`Frames.refusals`.

    Raises:
        ValueError: a crop is malformed (the message names its index).
    """
    if isinstance(crops, np.ndarray):
        _layout(crops, channels, batch=True)  # a bad shape is named as given, not as a chunk's
        frames = np.zeros((len(crops), FRAME, FRAME), dtype=np.float32)
        code = np.zeros(len(crops), dtype=np.int64)
        f = work_factor(*crops.shape[1:3])
        step = chunk_size(crops.shape[1] // f, crops.shape[2] // f)
        for i in range(0, len(crops), step):
            frames[i:i + step], code[i:i + step] = _frames(_gray_work(crops[i:i + step], channels, batch=True))
    else:
        items = list(crops)
        if not items:
            raise ValueError("an empty sequence of crops: expected at least one")
        gray = []
        for i, c in enumerate(items):
            try:
                gray.append(_gray_work(np.asarray(c), channels, batch=False)[0])
            except ValueError as e:
                raise ValueError(f"crop {i}: {e}") from None
        frames = np.zeros((len(items), FRAME, FRAME), dtype=np.float32)
        code = np.zeros(len(items), dtype=np.int64)
        by_shape: dict[tuple[int, int], list[int]] = {}  # at working size: a crop's frame is its own
        for i, g in enumerate(gray):
            by_shape.setdefault(g.shape, []).append(i)
        for (h, w), idx in by_shape.items():
            step = chunk_size(h, w)
            for j in range(0, len(idx), step):
                part = idx[j:j + step]
                frames[part], code[part] = _frames(np.stack([gray[i] for i in part]))
    if len(frames) == 0:
        raise ValueError("an empty batch of crops: expected at least one")
    images = np.rint(frames * 255.0).astype(np.uint8)
    return Frames(images, tuple(None if k == 0 else REASONS[int(k) - 1] for k in code))


# --------------------------------------------------------------------------- whole frames

#: A digit's box is widened by this share of its height before it is cut from the frame.
MARGIN = 0.2
#: A digit refused as ``solid-ink`` is cut again with a margin this many times wider: a bold
#: digit's box widened by MARGIN leaves its crop's background tiles mostly ink.
SOLID_RETRY = 2.0
#: Pieces of a frame at least this many pixels tall (at search size) are more than noise.
SPECK = 4
#: The other polarity's pieces must fill this much less of their boxes to be taken instead.
FILL_MARGIN = 0.1
#: Whole frames are searched at below twice this many pixels a side (block-averaged down first).
FRAME_WORK = 256
#: A second look at whole frames, at this share of the level, finds digits too faint for it ...
FAINT = 0.5
#: ... that are at least this share of the other digits' height (specks and a stroke's dots are not).
FAINT_HEIGHT = 0.6
#: ... and at least this share of their height away from them.
FAINT_GAP = 0.5
#: Scene ink in a run this many digit heights long, along either axis, is the scene's own (a
#: bezel's side, the table, a fold); what else of it stands digit-sized in the digits' row is a
#: digit the scene swallowed (:func:`merged_pieces`), refused as :data:`SWALLOWED`.
STRAIGHT = 1.5
SWALLOWED = "merged-with-scene"
#: Background tiles of whole frames, pixels a side at search size: about a digit's height (at least
#: four tiles a side, as a crop has).
FRAME_TILE = 40


@dataclass(frozen=True)
class Digit:
    """A digit found in a frame: ``box`` (x0, y0, x1, y1) in the frame's pixels (x1, y1
    exclusive), the 28x28 ``image`` (None when refused) and the ``refusal``: the
    preprocessing's reason (:data:`REASONS`), or ``merged-with-scene`` for a digit that ran into
    the scene (:func:`find_digits`)."""

    box: tuple[int, int, int, int]
    image: np.ndarray | None
    refusal: str | None = None


def label_pixels(mask: np.ndarray) -> np.ndarray:
    """8-connected components of a boolean ``(H, W)``, labelled as :func:`label_cells` labels
    them (each on pixel the flat index of its component's first pixel, off pixels ``H * W``),
    from the runs of each row: runs of adjacent rows that touch are joined (min-label hooking
    with pointer jumping on the runs, a few passes). A frame's mask has a few hundred runs but
    components hundreds of pixels long (a table's edge), over which :func:`label_cells`' 3x3
    passes crept a pixel at a time: 4-10x faster on whole frames, the same labels."""
    h, w = mask.shape
    size = h * w
    lab = np.full((h, w), size, dtype=np.int64)
    edges = np.diff(mask.astype(np.int8), axis=1, prepend=0, append=0)  # +1 at a run's start, -1 past its end
    row, start = np.nonzero(edges == 1)  # row-major: runs in order, and their ends in the same order
    end = np.nonzero(edges == -1)[1]
    k = len(start)
    if k == 0:
        return lab
    # Run b of row r + 1 touches run a of row r when b.start <= a.end and b.end >= a.start (ends
    # exclusive, diagonal contact included). Keys put the rows apart, so one sorted search finds,
    # for each run, the contiguous range of touching runs in the next row.
    stride = w + 2
    lo = np.searchsorted(row * stride + end, (row + 1) * stride + start, side="left")
    hi = np.searchsorted(row * stride + start, (row + 1) * stride + end, side="right")
    count = np.maximum(hi - lo, 0)
    u = np.repeat(np.arange(k), count)
    v = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count) + np.repeat(lo, count)
    comp = np.arange(k)
    while True:
        least = np.minimum(comp[u], comp[v])
        new = comp.copy()
        np.minimum.at(new, u, least)
        np.minimum.at(new, v, least)
        while True:  # pointer jumping: every run takes its root's label
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, comp):
            break
        comp = new
    first = np.full(k, size, dtype=np.int64)
    np.minimum.at(first, comp, row * w + start)
    lab[mask] = np.repeat(first[comp], end - start)  # the on pixels in row-major order are the runs'
    return lab


def component_boxes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-connected components of a boolean ``(H, W)``: the label image (:func:`label_pixels`),
    the labels in use ``(K,)`` and their boxes ``(K, 4)`` (x0, y0, x1, y1; x1, y1 exclusive)."""
    lab = label_pixels(mask)
    ys, xs = np.nonzero(lab < mask.size)
    if len(ys) == 0:
        return lab, np.zeros(0, dtype=lab.dtype), np.zeros((0, 4), dtype=np.int64)
    ids = lab[ys, xs]
    order = np.argsort(ids, kind="stable")
    ids, ys, xs = ids[order], ys[order], xs[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    boxes = np.stack([np.minimum.reduceat(xs, starts), np.minimum.reduceat(ys, starts),
                      np.maximum.reduceat(xs, starts) + 1, np.maximum.reduceat(ys, starts) + 1], axis=1)
    return lab, ids[starts], boxes.astype(np.int64)


def border_sides(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """int ``(K,)``: how many of an ``(H, W)`` frame's four borders each box ``(K, 4)`` (x0, y0,
    x1, y1; x1, y1 exclusive) touches."""
    h, w = shape
    x0, y0, x1, y1 = boxes.T
    return (x0 <= 0).astype(int) + (y0 <= 0) + (x1 >= w) + (y1 >= h)


def is_scene(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool ``(K,)``: the boxes of ink that touches two or more borders of an ``(H, W)`` frame:
    two that meet at a corner or more (a bezel, the table beyond the paper, the desk in a corner
    of a frame held askew, a wedge that read as a '1'), or two opposite ones (a fold, a ruling);
    never a digit, which has paper around it. (A crop's own rule, :data:`SPANS`, takes three.)"""
    return border_sides(boxes, shape) >= 2


def digit_pieces(boxes: np.ndarray, shape: tuple[int, int], min_height: float = 0.25) -> np.ndarray:
    """Which of the components' boxes ``(K, 4)`` (x0, y0, x1, y1; x1, y1 exclusive) of an
    ``(H, W)`` frame may be pieces of digits: their indices, in order.

    The scene is dropped first (:func:`is_scene`): ink that touches two borders that meet (a
    meter's bezel, the table beyond the paper's edge, the desk in a corner) or two opposite ones
    (a fold, a ruling, the paper's edge) is never a digit, which has paper around it. Then lines: a piece
    over four times as wide as tall and wider than 1.5 digit heights (an underline, a table's
    ruling; no digit is that wide, and a detached bar of a '5' or '7' is narrower); then
    frames: a piece whose box holds another piece's box (a box drawn around a form field).
    A digit's height is the tallest piece left that is no wider than twice its height;
    pieces shorter than ``min_height`` of it are specks.
    """
    idx = np.flatnonzero(~is_scene(boxes, shape))
    if len(idx) == 0:
        return idx
    b = boxes[idx]
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    shaped = bw <= 2 * bh
    tall = bh[shaped].max() if shaped.any() else bh.max()
    idx = idx[((bw <= 4 * bh) | (bw <= 1.5 * tall)) & (bh >= min_height * tall)]
    b = boxes[idx]
    # A box holding another box (not merely touching it) is drawn around it.
    return idx[~holds(b, b).any(axis=1)]


def holds(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """bool ``(M, K)``: box ``outer[i]`` holds box ``inner[j]`` strictly inside it, not merely
    touching its edges (boxes ``(M, 4)`` and ``(K, 4)``: x0, y0, x1, y1)."""
    o, b = outer[:, None], inner[None]
    return (o[..., 0] < b[..., 0]) & (o[..., 1] < b[..., 1]) & (o[..., 2] > b[..., 2]) & (o[..., 3] > b[..., 3])


def around(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """Where to search again when a piece covers a quarter of an ``(H, W)`` frame: a sheet of
    paper on a desk, or the band of ink the local flattening makes of the sheet's edge, or a box
    drawn around a field, any of which sets the digits' height or swallows a digit at search
    size. The largest piece, if it is ten times the area of any other piece at least
    ``2 * SPECK`` pixels tall: its box, two pixels inside its edge, grown to take in those
    pieces (a digit the band passed by). None otherwise."""
    if len(boxes) < 2:
        return None
    h = boxes[:, 3] - boxes[:, 1]
    area = (boxes[:, 2] - boxes[:, 0]) * h
    k = int(np.argmax(area))
    rest = np.flatnonzero((h >= 2 * SPECK) & (np.arange(len(boxes)) != k))
    # Ten times the largest other piece: a digit and a broken-off stroke of it are no sheet.
    if len(rest) == 0 or area[k] < 0.25 * shape[0] * shape[1] or area[k] < 10 * area[rest].max():
        return None
    roi = boxes[k] + np.array([2, 2, -2, -2])
    for j in rest:
        pad = int(math.ceil(MARGIN * h[j]))
        roi = np.array([min(roi[0], boxes[j, 0] - pad), min(roi[1], boxes[j, 1] - pad),
                        max(roi[2], boxes[j, 2] + pad), max(roi[3], boxes[j, 3] + pad)])
    return np.clip(roi, 0, [shape[1], shape[0], shape[1], shape[0]])


def inside_count(boxes: np.ndarray, others: np.ndarray) -> int:
    """How many of ``boxes`` ``(K, 4)`` lie strictly inside one of ``others`` ``(M, 4)`` (:func:`holds`)."""
    return int(holds(others, boxes).any(axis=0).sum())


def polarity_votes(work: np.ndarray, boxes: np.ndarray, dark: np.ndarray, margin: float = 0.5) -> float:
    """The share of the pieces ``boxes`` (x0, y0, x1, y1) of a frame ``(1, H, W)`` at search size
    whose own surroundings (the box widened by ``margin`` of its height: mostly paper) have ink
    of polarity ``dark`` by :func:`dark_ink`; 0 without pieces (or none at least
    :data:`MIN_SIDE` pixels a side). At :data:`MARGIN`, as :func:`find_digits` cuts a digit, a
    hole's surroundings were mostly its digit's ink and voted with the hole (one-off runs of
    ``benchmarks/frame_scenes.py`` on seed 11)."""
    votes = []
    h, w = work.shape[1:]
    for x0, y0, x1, y1 in boxes.tolist():
        pad = int(math.ceil(margin * (y1 - y0)))
        crop = work[:, max(0, y0 - pad):min(h, y1 + pad), max(0, x0 - pad):min(w, x1 + pad)]
        if min(crop.shape[1:]) >= MIN_SIDE:
            votes.append(bool(dark_ink(crop)[0] == dark[0]))
    return float(np.mean(votes)) if votes else 0.0


def long_runs(mask: np.ndarray, length: int, axis: int, gap: int = 0) -> np.ndarray:
    """The pixels of a boolean ``(H, W)`` in runs of at least ``length`` along ``axis`` (an
    opening by a line: erosion and dilation from window counts of cumulative sums), gaps of up
    to ``gap`` pixels along it bridged first (a closing by a line)."""
    def counts(a: np.ndarray) -> np.ndarray:  # c[j] - c[i]: how many of rows i..j-1 are on
        c = np.zeros((a.shape[0] + 1, a.shape[1]), dtype=np.int32)
        np.cumsum(a, axis=0, out=c[1:])
        return c

    m = mask if axis == 0 else mask.T
    n = m.shape[0]
    i = np.arange(n)
    if gap > 0:
        # On where the mask is on within `gap` before and within `gap` after along the axis.
        c = counts(m)
        m = m | ((c[i + 1] - c[np.maximum(i - gap, 0)] > 0) & (c[np.minimum(i + gap + 1, n)] - c[i] > 0))
    if length > n:
        return np.zeros(mask.shape, dtype=bool)
    c = counts(m)
    d = counts((c[length:] - c[:-length]) == length)  # a run of `length` starts at each such row
    # Row y is in a kept run if a run of `length` starts in [y - length + 1, y].
    last = n - length + 1
    out = (d[np.clip(i + 1, 0, last)] - d[np.clip(i - length + 1, 0, last)]) > 0
    return out if axis == 0 else out.T


def join_overlapping(boxes: np.ndarray) -> np.ndarray:
    """Boxes ``(K, 4)`` (x0, y0, x1, y1) left to right, those that overlap in x by half the
    narrower's width joined into one (pieces of one digit: a broken stroke, an 'i'-like gap)."""
    joined: list[list[int]] = []
    for b in boxes[np.argsort(boxes[:, 0], kind="stable")].tolist():
        if joined:
            m = joined[-1]
            if min(m[2], b[2]) - max(m[0], b[0]) >= 0.5 * min(m[2] - m[0], b[2] - b[0]):
                joined[-1] = [min(m[0], b[0]), min(m[1], b[1]), max(m[2], b[2]), max(m[3], b[3])]
                continue
        joined.append(b)
    return np.array(joined, dtype=np.int64).reshape(-1, 4)


def merged_pieces(scene: np.ndarray, kept: np.ndarray, min_height: float) -> np.ndarray:
    """Boxes ``(K, 4)`` of digits the scene swallowed: ``scene`` (bool ``(H, W)``, the ink left
    out as scene, and the fringe left out with it) less its straight parts (runs
    :data:`STRAIGHT` digit heights long along either axis, down a column across gaps of a
    quarter of a digit's height, and two pixels beside them: a bezel's sides, a table, a fold,
    a slanted edge's steps, a ragged edge), where what is left, its
    pieces joined as a digit's are (:func:`join_overlapping`), stands digit-sized in the row of
    the ``kept`` digits' boxes and clear of the frame's borders: a digit that ran into the bezel
    or the paper's edge. The digits' height is the median of the kept boxes, joined."""
    digits = join_overlapping(kept)  # a digit broken into pieces is one digit's height
    tall = float(np.median(digits[:, 3] - digits[:, 1]))
    length = int(math.ceil(STRAIGHT * tall))
    # Down a column, gaps of a quarter of a digit's height are bridged: a table beside the
    # digits, left out in parts (its fringe at the second level), is straight all the same.
    # Not along a row, where that would bridge a digit's strokes to the scene.
    gap = int(math.ceil(0.25 * tall))
    straight = long_runs(scene, length, 0, gap) | long_runs(scene, length, 1)
    rest = scene & ~dilate_cells(straight[None], 2)[0]
    if not rest.any():
        return np.zeros((0, 4), dtype=np.int64)
    _, _, boxes = component_boxes(rest)
    boxes = join_overlapping(boxes)  # a stroke cut from the bezel leaves the digit in pieces
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    top, bottom = kept[:, 1].min(), kept[:, 3].max()
    in_row = np.minimum(boxes[:, 3], bottom) - np.maximum(boxes[:, 1], top) >= 0.5 * bh
    clear = border_sides(boxes, scene.shape) == 0
    # Digit-sized: a short digit beside it sets a low height, a wide '0' or a cut-off piece
    # of a digit stays within these (seed 22's frames of the benchmark's two scenes).
    sized = (bh >= max(min_height, 0.4) * tall) & (bh <= STRAIGHT * tall) & (bw <= 2 * tall) & (bw >= SPECK)
    return boxes[in_row & clear & sized]


def _frame_pieces(work: np.ndarray, dark: np.ndarray,
                  min_height: float) -> tuple[np.ndarray, bool, float, np.ndarray | None, np.ndarray]:
    """The digit pieces' boxes (:func:`digit_pieces`, then :func:`faint_pieces`') of a frame
    ``(1, H, W)`` at search size, its ink of polarity ``dark``; whether scene was left out; how
    much of the (first) pieces' boxes their ink fills (strokes leave most of a digit's box paper,
    paper taken for ink fills it); the box of a piece drawn around others (:func:`around`),
    or None; and the boxes of digits the scene swallowed (:func:`merged_pieces`)."""
    none = np.zeros((0, 4), dtype=np.int64)
    _, sm, mask, _, _, base_s, sigma_s, top, _ = _segment(work, FRAME_TILE, dark)
    if not (top - base_s >= max(MIN_CONTRAST, 1.5 * NOISE_SIGMAS * float(sigma_s[0])))[0]:
        return none, False, 1.0, None, none
    shape = mask.shape[1:]
    noise = float(base_s[0]) + NOISE_SIGMAS * float(sigma_s[0])  # in float64, under numpy 1's rules and 2's
    level = max(float(otsu(np.maximum(sm, 0).reshape(1, -1), top)[0]), noise)  # _segment's
    rest, hidden = sm[0], np.zeros(shape, dtype=bool)
    ink = mask[0]
    lab, ids, boxes = component_boxes(ink)
    scene = is_scene(boxes, shape)
    scene_ink = None
    if scene.any():
        # The scene's dark (a bezel, the table) holds Otsu's level between itself and the ink,
        # and a faint digit then breaks into specks: threshold again without it.
        scene_ink = np.isin(lab, ids[scene])
        hide = dilate_cells(scene_ink[None], 2)[0]
        rest = np.where(hide, base_s[0], sm[0])
        peak = np.array([max(float(rest.max()), 1e-6)], dtype=np.float32)
        level = max(float(otsu(np.maximum(rest, 0).reshape(1, -1), peak)[0]), noise)
        ink = (rest > level) & ~hide
        hidden = dilate_cells(hide[None], 1)[0]
        lab, ids, boxes = component_boxes(ink)
        # The lower level lets the scene's own fringe through (beyond a table's edge, the light
        # interpolated between paper and table): ink along what was hidden is the scene's.
        fringe = np.isin(ids, lab[hidden & ink])
        # A digit that ran into the scene goes with it at either level.
        scene_ink |= np.isin(lab, ids[fringe])
        ids, boxes = ids[~fringe], boxes[~fringe]
    which = digit_pieces(boxes, shape, min_height)
    kept = boxes[which]
    ring = around(boxes[~is_scene(boxes, shape)], shape)
    if len(kept) == 0:
        return kept, bool(scene.any()), 1.0, ring, none
    count = np.bincount(lab.ravel(), minlength=lab.size + 1)[ids[which]].sum()  # the kept pieces' pixels
    area = ((kept[:, 2] - kept[:, 0]) * (kept[:, 3] - kept[:, 1])).sum()
    faint = faint_pieces(rest, hidden, level, kept)
    merged = none if scene_ink is None else merged_pieces(scene_ink, kept, min_height)
    return np.concatenate([kept, faint]), bool(scene.any()), float(count / area), ring, merged


def faint_pieces(sm: np.ndarray, hidden: np.ndarray, level: float, kept: np.ndarray) -> np.ndarray:
    """Boxes of digits too faint for the frame's level beside bold ones (a thin-stroked digit at
    search size): pieces of ``sm`` ``(H, W)`` above :data:`FAINT` of ``level``, away from what
    was ``hidden`` (the scene) and from every ``kept`` box, at least :data:`FAINT_HEIGHT` as tall
    as the kept pieces' median and digit-shaped."""
    ink = (sm > FAINT * level) & ~hidden
    lab, ids, boxes = component_boxes(ink)
    if len(boxes) == 0:
        return boxes
    h, w = ink.shape
    on_scene = np.isin(ids, lab[dilate_cells(hidden[None], 1)[0] & ink]) | is_scene(boxes, sm.shape)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    tall = float(np.median(kept[:, 3] - kept[:, 1]))
    # Within FAINT_GAP of a digit's height beside one (or over it), a faint stroke is that
    # digit's own (a '1' written twice over), which its crop takes in.
    reach = int(math.ceil(FAINT_GAP * tall))
    near = ((boxes[:, None, 0] < kept[None, :, 2] + reach) & (kept[None, :, 0] - reach < boxes[:, None, 2])
            & (boxes[:, None, 1] < kept[None, :, 3]) & (kept[None, :, 1] < boxes[:, None, 3])).any(axis=1)
    # Light falling off into a corner reaches half the level there: a faint digit has paper
    # all around it.
    inside = border_sides(boxes, (h, w)) == 0
    return boxes[~on_scene & ~near & inside & (bh >= FAINT_HEIGHT * tall) & (bw <= 2 * bh)]


def find_digits(frame: Any, *, channels: str = "rgb", min_height: float = 0.25, margin: float = MARGIN,
                max_digits: int = 64) -> list[Digit]:
    """The digits of a camera frame (a meter, a form field), left to right.

    Ink is segmented as in :func:`preprocess` (flattened background, Otsu above the noise) on
    the frame block-averaged to at most :data:`FRAME_WORK` pixels a side and grouped into
    8-connected components. The scene around the digits is left out (:func:`digit_pieces`):
    ink touching two borders that meet or two opposite ones (a meter's bezel, the table beyond
    the paper, the desk in a corner of a frame held askew, a fold), after which the frame is thresholded again
    without it (and ink along what was hidden, the scene's fringe, is the scene's too); long
    lines (an underline) and boxes drawn around other ink (a form field's).
    Digits must therefore have some paper between them and the frame's borders. Where scene was
    left out, or nothing is left, the other polarity is read too (a dark table over a quarter of
    the frame turns the polarity test: the paper becomes the "ink", the digits' holes its
    pieces) and taken when more of its pieces agree with it in their own surroundings
    (:func:`polarity_votes`: mostly paper, where the polarity test holds); as many, when the
    kept polarity's pieces lie inside the other's and none the other way (holes in digits); and
    failing that, when its pieces fill :data:`FILL_MARGIN` less of their boxes (strokes leave a
    digit's box mostly paper, paper taken for ink fills it); never when one of its pieces covers
    a quarter of the frame (the paper of a sheet on a desk). A piece that covers a quarter of
    the frame and dwarfs the others (:func:`around`: a sheet's edge, which the flattening turns
    into a band of ink, or a box around a field) is searched again inside, once, at full
    resolution. A second look at half the level finds digits too faint
    for it beside bold ones (:func:`faint_pieces`: a pencil beside a pen, a thin stroke at a
    photo's search size), which were missed, the reading a digit short. Pieces that overlap in
    x by half the narrower's width are one digit (a broken stroke, an 'i'-like gap); pieces
    shorter than ``min_height`` of the tallest digit-shaped piece are dropped as specks. Each
    digit's box, widened by ``margin`` of its height, is cut from the full-resolution frame and
    run through :func:`preprocess`; one refused as ``solid-ink`` is cut again with
    :data:`SOLID_RETRY` times the margin (a bold digit's tight crop is mostly ink) and kept
    refused unless that crop passes.
    A digit that ran into the scene (written over the bezel, cut by the paper's edge) went with
    it: where the scene, less its straight parts, still stands digit-sized in the digits' row
    (:func:`merged_pieces`), the list holds a digit there refused as ``merged-with-scene``, so a
    reading that acts only when every digit is accepted is not silently one digit short. A digit
    touching two opposite borders of the frame is still taken for scene without a word: device
    code that knows how many digits a reading holds should check the count as well.

    Raises:
        ValueError: the frame is malformed (shape, dtype, values).
    """
    return _find(np.asarray(frame), channels, min_height, margin, max_digits, inside=False)


def _find(full: np.ndarray, channels: str, min_height: float, margin: float, max_digits: int,
          inside: bool) -> list[Digit]:
    """:func:`find_digits` on a frame ``(H, W[, C])`` as given (made gray and float only at working
    size and in the digits' crops); ``inside``: already searching inside a sheet's edge or a
    field's box (once only)."""
    work = _gray_work(full, channels, batch=False, work=FRAME_WORK)  # checks the frame
    f = work_factor(*full.shape[:2], FRAME_WORK)  # as _gray_work picks it
    dark = dark_ink(work)
    boxes, scene, fill, ring, swallowed = _frame_pieces(work, dark, min_height)
    if scene or len(boxes) == 0:
        # A dark table or bezel over a quarter of the frame can turn the polarity test: the
        # paper beside it is then the "ink" (and the scene), the digits' holes the pieces:
        # read the other polarity too.
        other, _, fill_other, ring_other, swallowed_other = _frame_pieces(work, ~dark, min_height)
        # Not to pieces a quarter of the frame large, though: that is the paper (a sheet on a
        # desk) taken for ink.
        area = (other[:, 2] - other[:, 0]) * (other[:, 3] - other[:, 1])
        paper = bool((area >= 0.25 * work.shape[1] * work.shape[2]).any())
        # Each piece's surroundings are mostly paper, where the polarity test holds even when the
        # whole frame's failed: the polarity whose pieces more often agree with their own is kept.
        agree, agree_other = polarity_votes(work, boxes, dark), polarity_votes(work, other, ~dark)
        # A hole's surroundings can be mostly its digit's ink, which votes with it; but a hole
        # lies inside a piece of the other polarity, and a digit never inside one of its holes.
        holes, holes_other = inside_count(boxes, other), inside_count(other, boxes)
        # Strokes leave most of a digit's box paper, paper taken for ink fills it: the fill
        # settles what the votes and the holes leave open.
        switch = agree_other > agree or (agree_other == agree and (
            (holes > 0 and holes_other == 0) or (holes == holes_other == 0 and fill_other < fill - FILL_MARGIN)))
        if len(other) and (len(boxes) == 0 or (switch and not paper)):
            boxes, ring, swallowed = other, ring_other, swallowed_other
    if ring is not None and not inside:
        # The edge of a sheet on a desk (or a box around a field) sets the digits' height and
        # may join a digit near it, at this size: search again inside it, at full resolution.
        # What is left of the edge inside touches the region's borders: scene there.
        fx0, fy0, fx1, fy1 = (int(v) * f for v in ring)
        if min(fx1 - fx0, fy1 - fy0) >= MIN_SIDE:
            found = _find(full[fy0:fy1, fx0:fx1], channels, min_height, margin, max_digits, inside=True)
            if found:
                return _with_swallowed([Digit((d.box[0] + fx0, d.box[1] + fy0, d.box[2] + fx0, d.box[3] + fy0),
                                              d.image, d.refusal) for d in found], swallowed, f, full.shape)
    if len(boxes) == 0:
        return []
    out = []
    for piece in join_overlapping(boxes).tolist()[:max_digits]:
        digit = _cut(full, piece, margin, f, channels)
        if digit is not None and digit.refusal == "solid-ink":
            # A bold digit's tight crop is mostly ink, which the check for a blot in the
            # background tiles takes for one: with more paper around it, it is a digit again.
            wider = _cut(full, piece, SOLID_RETRY * margin, f, channels)
            digit = wider if wider is not None and wider.refusal is None else digit
        if digit is not None:
            out.append(digit)
    return _with_swallowed(out, swallowed, f, full.shape)


def _with_swallowed(found: list[Digit], swallowed: np.ndarray, f: int, shape: tuple[int, ...]) -> list[Digit]:
    """``found`` and, in their places left to right, a refused ``merged-with-scene`` digit for
    each box of ``swallowed`` (at search size, block size ``f``) that no digit found covers half
    of in x: a digit run into the scene is not read, but the reading holds it instead of silently
    one digit fewer."""
    if len(swallowed) == 0:
        return found
    out = list(found)
    for x0, y0, x1, y1 in swallowed.tolist():
        box = (int(x0) * f, int(y0) * f, min(shape[1], int(x1) * f), min(shape[0], int(y1) * f))
        if not any(min(d.box[2], box[2]) - max(d.box[0], box[0]) >= 0.5 * (box[2] - box[0]) for d in found):
            out.append(Digit(box, None, SWALLOWED))
    return sorted(out, key=lambda d: d.box[0])


def _cut(full: np.ndarray, piece: list[int], margin: float, f: int, channels: str) -> Digit | None:
    """The digit of ``piece``, a box at search size (block size ``f``), widened by ``margin`` of its
    height, cut from the full-resolution frame and run through :func:`preprocess`; None when
    the crop is under :data:`MIN_SIDE` pixels a side."""
    x0, y0, x1, y1 = piece
    hh, ww = full.shape[:2]
    pad = margin * (y1 - y0)
    box = (max(0, int((x0 - pad) * f)), max(0, int((y0 - pad) * f)),
           min(ww, int(math.ceil((x1 + pad) * f))), min(hh, int(math.ceil((y1 + pad) * f))))
    crop = full[box[1]:box[3], box[0]:box[2]]
    if min(crop.shape[:2]) < MIN_SIDE:
        return None
    try:
        return Digit(box, preprocess(crop, channels=channels))
    except PreprocessError as e:
        return Digit(box, None, e.reason)
