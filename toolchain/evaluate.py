"""Test-set evaluation: loss, accuracy, per-class accuracy, confusion, seed protocol."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .augment import seed_protocol
from .data import Dataset
from .train import predict_logits, predict_novelty, to_device_tensors

SEED_PROTOCOL_SEED = 0


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int = 10) -> np.ndarray:
    """``cm[true, predicted]`` counts."""
    return np.bincount(labels * num_classes + preds, minlength=num_classes**2).reshape(num_classes, num_classes)


def evaluate_test(model: torch.nn.Module, test: Dataset, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Everything the report needs from the test set, computed once.

    Returns a dict with ``accuracy``, ``loss``, ``per_class_accuracy``, ``confusion``,
    ``seed_protocol_accuracy`` and, for later use, ``logits`` / ``seed_logits`` and the
    novelty residuals ``novelty`` / ``seed_novelty`` (numpy; None without a novelty basis).
    """
    device = torch.device(device)
    model = model.to(device)
    x, y = to_device_tensors(test.images, test.labels, device)
    logits = predict_logits(model, x)
    seed_x = seed_protocol(x, SEED_PROTOCOL_SEED)
    seed_logits = predict_logits(model, seed_x)
    novelty, seed_novelty = predict_novelty(model, x), predict_novelty(model, seed_x)
    preds = logits.argmax(1)
    labels = y.cpu().numpy()
    cm = confusion_matrix(labels, preds.cpu().numpy())
    per_class = (np.diag(cm) / np.maximum(cm.sum(1), 1)).tolist()
    return {
        "accuracy": float((preds == y).float().mean().item()),
        "loss": float(F.cross_entropy(logits, y).item()),
        "per_class_accuracy": per_class,
        "per_class_count": cm.sum(1).astype(int).tolist(),
        "confusion": cm.tolist(),
        "seed_protocol_accuracy": float((seed_logits.argmax(1) == y).float().mean().item()),
        "seed_protocol_seed": SEED_PROTOCOL_SEED,
        "logits": logits.cpu().double().numpy(),
        "seed_logits": seed_logits.cpu().double().numpy(),
        "novelty": None if novelty is None else novelty.cpu().double().numpy(),
        "seed_novelty": None if seed_novelty is None else seed_novelty.cpu().double().numpy(),
        "seed_images": (seed_x[:32].cpu().numpy() * 255).round().astype(np.uint8),
    }


def per_class_table(metrics: dict[str, Any], class_names: list[str]) -> str:
    """The notebook's per-class printout, one line a class, then the overall figure."""
    lines = []
    for name, acc, n in zip(class_names, metrics["per_class_accuracy"], metrics["per_class_count"]):
        correct = int(round(acc * n))
        lines.append(f"Test Accuracy of {name:>5}: {100 * acc:6.2f}% ({correct:5d}/{n:5d})")
    total = sum(metrics["per_class_count"])
    lines.append(f"Test Accuracy (Overall): {100 * metrics['accuracy']:.2f}% "
                 f"({int(round(metrics['accuracy'] * total))}/{total})")
    lines.append(f"Seed-protocol accuracy (rotation +-25, inversion p=0.5): {100 * metrics['seed_protocol_accuracy']:.2f}%")
    return "\n".join(lines)
