"""Batched, on-device augmentation: one random angle and inversion draw per image.

The notebook's torchvision transforms drew these per sample on the CPU in the data
loader; here a whole batch is rotated with one ``affine_grid``/``grid_sample`` call on
whatever device holds the data.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rotate(x: torch.Tensor, degrees: torch.Tensor, mode: str = "bilinear",
           shift: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate each image of ``x`` ``(N, C, H, W)`` by its own angle (degrees), zero fill;
    ``shift`` ``(N, 2)`` optionally translates each by (x, y) pixels as well."""
    rad = degrees.to(x.dtype) * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    tx, ty = (zero, zero) if shift is None else (shift[:, 0] * 2 / x.shape[-1], shift[:, 1] * 2 / x.shape[-2])
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, max_degrees: float, invert_p: float, generator: torch.Generator | None = None,
            mode: str = "bilinear", translate: float = 0.0) -> torch.Tensor:
    """Random rotation in [-max_degrees, max_degrees] (and shift up to ``translate`` pixels),
    then inversion with probability ``invert_p``.

    ``x`` holds [0, 1] pixels; the draws come from ``generator`` (on ``x``'s device).
    """
    n = x.shape[0]
    if max_degrees > 0 or translate > 0:
        angles = (torch.rand(n, device=x.device, generator=generator) * 2 - 1) * max_degrees
        shift = None
        if translate > 0:
            shift = (torch.rand(n, 2, device=x.device, generator=generator) * 2 - 1) * translate
        x = rotate(x, angles, mode, shift)
    if invert_p > 0:
        flip = torch.rand(n, device=x.device, generator=generator) < invert_p
        x = torch.where(flip.view(n, 1, 1, 1), 1.0 - x, x)
    return x


def seed_protocol(images_u8: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The notebook's test-time transform, reproducibly: +-25 degree rotation, inversion p=0.5.

    Nearest-neighbour interpolation, as torchvision's ``RandomRotation`` defaults to.
    Takes uint8 ``(N, 1, 28, 28)`` and returns [0, 1] floats on the same device.
    """
    g = torch.Generator(device=images_u8.device).manual_seed(seed)
    x = images_u8.float() / 255.0
    return augment(x, 25.0, 0.5, g, mode="nearest")


def make_outliers(x: torch.Tensor, generator: torch.Generator | None = None,
                  labels: torch.Tensor | None = None) -> torch.Tensor:
    """Synthetic non-digits for outlier exposure, built on the device from a batch of digits.

    About 45% chimeras: the top (or left) 10-18 rows (columns) of one digit joined to the
    rest of the batch's previous digit, so digit-like strokes and proportions but no digit
    (where ``labels`` says the two share a class, shuffled tiles are used instead); 25%
    digits cut into 7x7 tiles and shuffled; 20% uniform noise; 10% blank frames.
    ``x`` holds [0, 1] pixels ``(N, 1, 28, 28)``.
    """
    n = x.shape[0]
    tiles = x.reshape(n, 4, 7, 4, 7).permute(0, 1, 3, 2, 4).reshape(n, 16, 49)
    perm = torch.rand(n, 16, device=x.device, generator=generator).argsort(dim=1)
    tiles = torch.gather(tiles, 1, perm.unsqueeze(-1).expand(-1, -1, 49))
    out = tiles.reshape(n, 4, 4, 7, 7).permute(0, 1, 3, 2, 4).reshape(n, 1, 28, 28)
    kind = torch.rand(n, device=x.device, generator=generator)
    noise = torch.rand(out.shape, device=x.device, generator=generator)
    blank = (torch.rand(n, device=x.device, generator=generator) < 0.5).to(x.dtype).view(n, 1, 1, 1).expand_as(out)
    out = torch.where((kind < 0.2).view(n, 1, 1, 1), noise, out)
    # Chimeras: one digit's top (or left) part joined to another digit's rest.
    other = x.roll(1, 0)
    cut = torch.randint(10, 19, (n, 1, 1, 1), device=x.device, generator=generator)
    pos = torch.arange(28, device=x.device)
    vert = torch.rand(n, 1, 1, 1, device=x.device, generator=generator) < 0.5
    mask = torch.where(vert, pos.view(1, 1, 28, 1) < cut, pos.view(1, 1, 1, 28) < cut)
    chim = torch.where(mask, x, other)
    use = (kind >= 0.45) & (kind < 0.9)
    if labels is not None:
        use = use & (labels != labels.roll(1, 0))
    out = torch.where(use.view(n, 1, 1, 1), chim, out)
    return torch.where((kind > 0.9).view(n, 1, 1, 1), blank, out)
