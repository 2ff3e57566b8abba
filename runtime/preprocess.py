"""Turn a camera's grayscale crop of a digit into the 28x28 frame the model was trained on.

Done as MNIST itself was made: the ink is size-normalised into a 20x20 box keeping its
aspect ratio (area resampling, so thin strokes survive downscaling), then placed in a
28x28 frame so that its centre of mass is at the centre. Either polarity is accepted:
dark ink on light paper is inverted first. numpy only.
"""

from __future__ import annotations

import numpy as np

BOX = 20
FRAME = 28


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix: output pixel i averages the input span it covers (exact overlaps)."""
    edges_out = np.linspace(0.0, n_in, n_out + 1)
    lo, hi = edges_out[:-1, None], edges_out[1:, None]
    j = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def resize_area(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a 2-D float image by area averaging (box filter), up or down."""
    return _area_weights(img.shape[0], height) @ img @ _area_weights(img.shape[1], width).T


def preprocess(crop: np.ndarray, *, ink_threshold: float = 0.2) -> np.ndarray:
    """A 2-D grayscale crop of any size (uint8, or float in [0, 1]) -> uint8 ``(28, 28)``.

    Raises:
        ValueError: not 2-D, empty, non-finite, out of range, or no ink found.
    """
    a = np.asarray(crop)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"crop of shape {a.shape}: expected a non-empty 2-D grayscale image (H, W)")
    if a.dtype == np.uint8:
        x = a.astype(np.float64) / 255.0
    elif np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise ValueError("crop holds NaN or infinite values: expected finite pixels in [0, 1]")
        if a.min() < 0.0 or a.max() > 1.0:
            raise ValueError(f"crop values span [{a.min():.4g}, {a.max():.4g}]: expected floats in [0, 1] or uint8")
        x = a.astype(np.float64)
    else:
        raise ValueError(f"crop dtype {a.dtype}: expected uint8 or a float type in [0, 1]")
    # The background is most of the crop: its level (the median) says the polarity.
    if np.median(x) > 0.5:
        x = 1.0 - x
    x = np.clip(x - np.median(x), 0.0, None)
    peak = x.max()
    if peak <= 0.0:
        raise ValueError("crop has no ink: expected a digit darker or lighter than its background")
    x = x / peak
    rows = np.flatnonzero((x > ink_threshold).any(axis=1))
    cols = np.flatnonzero((x > ink_threshold).any(axis=0))
    x = x[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = x.shape
    scale = BOX / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.clip(resize_area(x, nh, nw), 0.0, 1.0)
    total = small.sum()
    ys, xs = np.mgrid[0:nh, 0:nw]
    cy, cx = (ys * small).sum() / total, (xs * small).sum() / total
    frame = np.zeros((FRAME, FRAME))
    top = int(round(FRAME / 2 - 0.5 - cy))
    left = int(round(FRAME / 2 - 0.5 - cx))
    top = min(max(top, 0), FRAME - nh)
    left = min(max(left, 0), FRAME - nw)
    frame[top:top + nh, left:left + nw] = small
    return np.round(frame * 255.0).astype(np.uint8)
