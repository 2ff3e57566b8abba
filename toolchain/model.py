"""LeNet-5 variants and the preprocessing that travels with them.

The network takes normalised float images; :class:`Preprocess` turns [0, 1] pixels into
that form (optional polarity canonicalisation, then ``(x - mean) / std``). Both are
plain ``nn.Module``s so that export puts them inside the ONNX graph.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
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

    def to_dict(self) -> dict:
        return asdict(self)


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


class Pipeline(nn.Module):
    """Preprocess + network: [0, 1] pixels in, logits out."""

    def __init__(self, arch: ArchConfig, pre: PreprocessConfig) -> None:
        super().__init__()
        self.pre = Preprocess(pre)
        self.net = LeNet(arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.pre(x))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
