"""The torch module that becomes the exported graph: uint8 image in, gated answer out."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from toolchain.gate import confidence


class GatedModel(nn.Module):
    """uint8 ``(N, 1, 28, 28)`` -> logits, confidence, label, accepted.

    Scaling, normalisation and polarity handling (the checkpoint's preprocessing), the
    test-time views, the novelty residual and the calibrated gate are inside, so a consumer
    with only an ONNX runtime gets a gated answer from the file alone. With ``half=True``
    the network runs in fp16 while the preprocessing, the gate and every input and output
    stay fp32 (or uint8/int64/bool).
    """

    def __init__(self, pipeline: nn.Module, calibration: dict[str, Any], half: bool = False) -> None:
        super().__init__()
        self.pre = pipeline.pre
        self.views = pipeline.views
        self.novelty = pipeline.novelty
        self.net = copy.deepcopy(pipeline.net).half() if half else pipeline.net
        self.half_net = half
        self.calibration = dict(calibration)
        self.threshold = float(calibration["threshold"])

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        canon = self.pre(image.to(torch.float32) / 255.0)
        x = self.views.expand(canon)
        logits = self.views.combine(self.net(x.half()).float() if self.half_net else self.net(x))
        novelty = self.novelty(canon) if self.novelty is not None else None
        conf = confidence(logits, self.calibration, novelty)
        return logits, conf, logits.argmax(dim=1), conf >= self.threshold
