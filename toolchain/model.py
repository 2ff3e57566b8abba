"""LeNet-5 variants and the preprocessing that travels with them.

The network takes normalised float images; :class:`Preprocess` turns [0, 1] pixels into
that form (optional polarity canonicalisation, then ``(x - mean) / std``). Both are
plain ``nn.Module``s so that export puts them inside the ONNX graph.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = ("lenet5", "lenet5-classic")


@dataclass(frozen=True)
class ArchConfig:
    """Everything needed to rebuild the network from a checkpoint."""

    name: str = "lenet5"
    num_classes: int = 10

    @property
    def activation(self) -> str:
        return "sigmoid" if self.name == "lenet5-classic" else "relu"

    @property
    def pooling(self) -> str:
        return "avg" if self.name == "lenet5-classic" else "max"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PreprocessConfig:
    """Pixel scaling, normalisation and polarity handling (baked into exports)."""

    mean: float = 0.5
    std: float = 0.5
    # "auto": an image whose mean pixel is above 0.5 (light paper, dark ink) is inverted
    # first, so the network only ever sees light-on-dark digits. "none": as the notebook.
    polarity: str = "auto"
    # Test-time views: the frame is also classified rotated by each of these angles (degrees)
    # and the logits of all views are averaged. Empty: the frame alone, as trained.
    view_rotations: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        # Checkpoints and JSON give lists; a tuple keeps the config hashable and comparable.
        object.__setattr__(self, "view_rotations", tuple(float(a) for a in self.view_rotations))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["view_rotations"] = list(self.view_rotations)
        return d


class Preprocess(nn.Module):
    """[0, 1] pixels ``(N, 1, 28, 28)`` -> the network's normalised input."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        super().__init__()
        if cfg.polarity not in ("auto", "none"):
            raise ValueError(f"polarity {cfg.polarity!r}: expected 'auto' or 'none'")
        if not cfg.std > 0:
            raise ValueError(f"std {cfg.std}: expected a positive number")
        self.cfg = cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.polarity == "auto":
            # Digits cover well under half of a frame, so the mean pixel tells the polarity.
            dark_on_light = x.mean(dim=(1, 2, 3), keepdim=True) > 0.5
            x = torch.where(dark_on_light, 1.0 - x, x)
        return (x - self.cfg.mean) / self.cfg.std


MAX_VIEW_ROTATION = 45.0
MAX_VIEWS = 8


def check_view_rotations(rotations: tuple[float, ...]) -> None:
    """Raise ValueError unless ``rotations`` are at most MAX_VIEWS non-zero angles within +-MAX_VIEW_ROTATION."""
    if len(rotations) > MAX_VIEWS:
        raise ValueError(f"{len(rotations)} view rotations: expected at most {MAX_VIEWS}")
    for a in rotations:
        if not (math.isfinite(a) and abs(a) <= MAX_VIEW_ROTATION and a != 0.0):
            raise ValueError(f"view rotation {a}: expected non-zero degrees in "
                             f"[-{MAX_VIEW_ROTATION:g}, {MAX_VIEW_ROTATION:g}]")


class Views(nn.Module):
    """Test-time views of a normalised batch: the frames as given plus rotated copies.

    :meth:`expand` stacks the views along the batch axis (view-major) so the network runs
    once; :meth:`combine` averages their logits. Rotation is bilinear (``grid_sample``'s,
    align_corners=False) with the background (pixel 0 after polarity handling) filled in, as
    the training augmentation fills it. Each rotated pixel is a fixed blend of at most four
    source pixels plus the background's share of the taps that fall outside the frame, so the
    rotation is precomputed as tap indices, weights and a constant: one element gather
    (``GatherElements`` in ONNX, which every runtime here supports), a weighted sum and an add.
    ONNX Runtime ran ``Gather`` on axis 1 one element at a time, a third of a batch-1 call's
    time (``benchmarks/views_forms.py`` times the forms).
    """

    def __init__(self, rotations: tuple[float, ...], background: float, size: int = 28,
                 classes: int | None = None) -> None:
        super().__init__()
        check_view_rotations(rotations)
        self.count = len(rotations) + 1
        self.size = size
        self.background = float(background)
        # Known up front, the logits' reshape exports as a constant, not shape arithmetic.
        self.classes = classes
        index, weight = self._taps(rotations, size)
        # A tap outside the frame reads the background: its share of each pixel is a constant.
        offset = self.background * (1.0 - weight.sum(dim=1))
        self.register_buffer("index", index, persistent=False)    # (V * 4 * size * size,)
        self.register_buffer("weight", weight, persistent=False)  # (V, 4, size * size)
        self.register_buffer("offset", offset, persistent=False)  # (V, size * size)

    @staticmethod
    def _taps(rotations: tuple[float, ...], size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Source pixel indices and bilinear weights of each rotated pixel; a tap that falls
        outside the frame has weight 0 (and index 0, any pixel would do)."""
        if not rotations:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, 4, size * size)
        thetas = [[[math.cos(math.radians(a)), -math.sin(math.radians(a)), 0.0],
                   [math.sin(math.radians(a)), math.cos(math.radians(a)), 0.0]] for a in rotations]
        grid = F.affine_grid(torch.tensor(thetas, dtype=torch.float64), [len(thetas), 1, size, size],
                             align_corners=False).reshape(len(thetas), -1, 2)
        ix, iy = ((grid[..., 0] + 1) * size - 1) / 2, ((grid[..., 1] + 1) * size - 1) / 2
        x0, y0 = ix.floor(), iy.floor()
        index, weight = [], []
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            xs, ys = x0 + dx, y0 + dy
            w = (1 - (ix - xs).abs()) * (1 - (iy - ys).abs())
            inside = (xs >= 0) & (xs < size) & (ys >= 0) & (ys < size)
            index.append(torch.where(inside, ys * size + xs, torch.zeros_like(xs)).long())
            weight.append(torch.where(inside, w, torch.zeros_like(w)))
        return torch.stack(index, 1).reshape(-1), torch.stack(weight, 1).float()

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, H, W)`` -> ``(V * N, 1, H, W)``, the frames themselves first."""
        if self.count == 1:
            return x
        # Shapes as -1 where they can be: the exported graph then holds constants, not shape arithmetic.
        pixels = self.size * self.size
        flat = x.reshape(-1, pixels)
        taps = torch.gather(flat, 1, self.index.unsqueeze(0).expand(flat.shape[0], -1))
        rotated = (taps.reshape(-1, self.count - 1, 4, pixels) * self.weight).sum(dim=2) + self.offset
        rotated = rotated.transpose(0, 1).reshape(-1, 1, self.size, self.size)  # view-major, as expand's contract
        return torch.cat([x, rotated], dim=0)

    def combine(self, logits: torch.Tensor) -> torch.Tensor:
        """``(V * N, C)`` -> ``(N, C)``: the mean logits over the views."""
        if self.count == 1:
            return logits
        return logits.reshape(self.count, -1, self.classes or logits.shape[-1]).mean(dim=0)


class LeNet(nn.Module):
    """LeNet-5: conv 6@5x5 pad 2, pool, conv 16@5x5, pool, fc 120, 84, classes."""

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        if cfg.name not in ARCHITECTURES:
            raise ValueError(f"architecture {cfg.name!r}: expected one of {', '.join(ARCHITECTURES)}")
        act: type[nn.Module] = nn.Sigmoid if cfg.activation == "sigmoid" else nn.ReLU
        pool: type[nn.Module] = nn.AvgPool2d if cfg.pooling == "avg" else nn.MaxPool2d
        self.cfg = cfg
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), act(), pool(2),
            nn.Conv2d(6, 16, 5), act(), pool(2),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), act(),
            nn.Linear(120, 84), act(),
        )
        self.head = nn.Linear(84, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Novelty(nn.Module):
    """How unlike the training frames a frame is: the RMS residual of its normalised pixels
    after projection onto the leading principal components of the training frames.

    The network's scores can be confident on large bright shapes (clothing, say) that look
    like no digit; such frames lie far from the digits' principal subspace. Two matrix
    products, so it runs inside every exported graph.
    """

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor) -> None:
        super().__init__()
        if mean.ndim != 1 or basis.ndim != 2 or basis.shape[0] != mean.shape[0]:
            raise ValueError(f"novelty mean {list(mean.shape)} and basis {list(basis.shape)}: expected [D] and [D, K]")
        self.register_buffer("mean", mean.float())
        self.register_buffer("basis", basis.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised frames ``(N, 1, H, W)`` -> residual ``(N,)``."""
        z = x.flatten(1) - self.mean
        r = z - (z @ self.basis) @ self.basis.T
        return r.square().mean(dim=1).sqrt()


def fit_novelty(pre: nn.Module, images01: torch.Tensor, components: int = 48) -> dict[str, torch.Tensor]:
    """Principal components of the normalised ``images01`` ``(N, 1, H, W)`` in [0, 1], for :class:`Novelty`."""
    with torch.no_grad():
        z = pre(images01).flatten(1).double()
    mean = z.mean(0)
    _, _, vt = torch.linalg.svd(z - mean, full_matrices=False)
    return {"mean": mean.float(), "basis": vt[:components].T.contiguous().float()}


class Pipeline(nn.Module):
    """Preprocess + network (+ test-time views): [0, 1] pixels in, logits out."""

    def __init__(self, arch: ArchConfig, pre: PreprocessConfig) -> None:
        super().__init__()
        self.pre = Preprocess(pre)
        self.views = Views(pre.view_rotations, background=(0.0 - pre.mean) / pre.std, classes=arch.num_classes)
        self.net = LeNet(arch)
        self.novelty: Novelty | None = None  # set from the checkpoint once fitted after training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.views.combine(self.net(self.views.expand(self.pre(x))))

    def novelty_score(self, x: torch.Tensor) -> torch.Tensor | None:
        """:class:`Novelty` residual of [0, 1] frames, or None when the model has none."""
        return None if self.novelty is None else self.novelty(self.pre(x))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
