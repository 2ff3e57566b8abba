"""Plots of the training artifact (matplotlib, headless, written atomically)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from runtime.fileio import atomic_write_bytes

from . import gate


def _save(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def loss_curves(history: list[dict[str, float]], path: Path) -> None:
    """Train and validation loss per epoch, with validation accuracy."""
    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    ax[0].plot(ep, [h["train_loss"] for h in history], label="train (augmented)")
    ax[0].plot(ep, [h["val_loss"] for h in history], label="validation (held out)")
    ax[0].set_yscale("log")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("cross-entropy")
    ax[0].legend()
    ax[1].plot(ep, [100 * h["val_accuracy"] for h in history], color="C2")
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("validation accuracy (%)")
    fig.suptitle("Training")
    _save(fig, path)


def sample_images(clean: np.ndarray, seed: np.ndarray, labels: np.ndarray, path: Path) -> None:
    """Test images as given and under the seed protocol (rotation, inversion)."""
    n = min(12, len(clean), len(seed))
    fig, ax = plt.subplots(2, n, figsize=(n * 0.9, 2.2))
    for i in range(n):
        for r, imgs in enumerate((clean, seed)):
            ax[r, i].imshow(imgs[i].reshape(28, 28), cmap="gray", vmin=0, vmax=255)
            ax[r, i].set_xticks([])
            ax[r, i].set_yticks([])
        ax[0, i].set_title(str(int(labels[i])), fontsize=8)
    ax[0, 0].set_ylabel("clean", fontsize=8)
    ax[1, 0].set_ylabel("seed\nprotocol", fontsize=8)
    _save(fig, path)


def confusion(cm: np.ndarray, class_names: list[str], path: Path) -> None:
    """Confusion matrix of the test set (counts; the diagonal dimmed so errors show)."""
    cm = np.asarray(cm)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(off, cmap="Reds")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="gray" if i == j else "black")
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Test confusion matrix")
    _save(fig, path)


def score_histogram(conf: np.ndarray, correct: np.ndarray, threshold: float, title: str, path: Path) -> None:
    """The notebook's plot: gate scores of correct and wrong predictions, threshold line."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = np.linspace(0, 1, 51)
    ax.hist(conf[correct], bins=bins, alpha=0.6, label=f"correct ({int(correct.sum())})", density=True)
    ax.hist(conf[~correct], bins=bins, alpha=0.6, label=f"wrong ({int((~correct).sum())})", density=True)
    ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.4f}")
    ax.set_yscale("log")
    ax.set_xlabel("gate score")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)


def risk_coverage_plot(curves: dict[str, tuple[np.ndarray, np.ndarray, float, float]], target: float | None,
                       path: Path) -> None:
    """Risk-coverage curves, one per score, each method's operating point marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, (cov, risk, op_cov, op_risk)) in enumerate(curves.items()):
        ax.plot(cov * 100, risk * 100, color=f"C{i}", label=name)
        ax.plot([op_cov * 100], [op_risk * 100], "o", color=f"C{i}")
    if target is not None:
        ax.axhline(target * 100, color="gray", ls=":", label=f"target risk {100 * target:.2g}%")
    ax.set_xlim(50, 100)
    ax.set_ylim(0, max(0.5, 1.2 * max(c[1][len(c[1]) // 2:].max() for c in curves.values()) * 100))
    ax.set_xlabel("coverage (%)")
    ax.set_ylabel("selective risk (%)")
    ax.set_title("Risk-coverage on the test set (dots: operating points)")
    ax.legend(fontsize=8)
    _save(fig, path)


def reliability(probs_before: np.ndarray, probs_after: np.ndarray, correct: np.ndarray, path: Path,
                bins: int = 15) -> None:
    """Reliability diagram of the top-class probability before and after temperature scaling."""
    edges = np.linspace(0, 1, bins + 1)
    mids = (edges[1:] + edges[:-1]) / 2
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="gray", ls=":")
    for name, p in (("before", probs_before), ("after", probs_after)):
        idx = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
        acc = [correct[idx == b].mean() if np.any(idx == b) else np.nan for b in range(bins)]
        ax.plot(mids, acc, "o-", label=f"{name} (ECE {100 * gate.ece(p, correct, bins):.2f}%)")
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability, test set, 15 bins")
    ax.legend()
    _save(fig, path)


def accepted_errors(images: np.ndarray, rows: list[dict[str, Any]], title: str, path: Path, limit: int = 24) -> None:
    """Frames the gate accepts yet labels differently from their given label, most confident
    first: where the certified risk is spent (on MNIST, mostly frames whose label is wrong)."""
    n = min(limit, len(rows))
    cols = min(n, 12) or 1
    lines = max(1, -(-n // cols))
    fig, axes = plt.subplots(lines, cols, figsize=(cols * 1.0, lines * 1.25), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, img, r in zip(axes.ravel(), images[:n], rows[:n]):
        ax.imshow(img.reshape(28, 28), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{r['label']}->{r['predicted']}\n{r['confidence']:.3f}", fontsize=7)
    fig.suptitle(f"{title} (given label -> model's, gate score)" if n else f"{title}: none", fontsize=9,
                 y=1.0 + 0.12 / lines)
    _save(fig, path)


def field_plot(res: dict[str, Any], path: Path) -> None:
    """Accuracy, coverage and selective risk per field level (``lenet-tool field``)."""
    names = list(res["levels"])
    rows = [res["levels"][k] for k in names]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    x = np.arange(len(names))
    a1.bar(x - 0.2, [100 * r["accuracy"] for r in rows], 0.4, label="accuracy")
    a1.bar(x + 0.2, [100 * r["coverage"] for r in rows], 0.4, label="coverage (accepted)")
    a1.set_ylim(50, 100)
    a1.set_xticks(x, names, rotation=45, ha="right")
    a1.set_ylabel("%")
    a1.legend(loc="lower left")
    a1.set_title("Camera crops per level")
    a2.bar(x, [100 * r["selective_risk"] for r in rows], 0.6, color="tab:red")
    a2.set_xticks(x, names, rotation=45, ha="right")
    a2.set_ylabel("selective risk, %")
    a2.set_title("Errors among accepted crops")
    _save(fig, path)
