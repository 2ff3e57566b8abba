"""Training: recipes, one epoch, evaluation, and the resumable main loop.

Data stays on the training device as uint8; each batch is scaled, augmented (one
rotation and inversion draw per image) and preprocessed there. The best model by
validation loss on the held-out split is kept; the test set is only used for reporting.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from runtime.fileio import ArtifactError

from . import __version__
from .augment import augment, make_outliers
from .checkpoint import load_checkpoint, save_checkpoint
from .data import Dataset
from .model import ArchConfig, Pipeline, PreprocessConfig, check_view_rotations


@dataclass(frozen=True)
class TrainConfig:
    """One training run's settings; a recipe is a set of defaults for these."""

    recipe: str = "default"
    arch: str = "lenet5"
    epochs: int = 14
    batch_size: int = 128
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 4e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # onecycle | constant
    rotation: float = 25.0
    # Nearest-neighbour rotation, as the seed protocol (torchvision's default) applies it at test time.
    rotation_mode: str = "nearest"
    translate: float = 0.0  # random shift, pixels
    invert_p: float = 0.0
    # Outlier exposure: this many synthetic non-digits per real image, trained toward the
    # uniform distribution, so the gate learns to refuse what is not a digit.
    outlier_fraction: float = 0.25
    outlier_weight: float = 0.2
    # The field's printed letters and symbols weigh this many times another outlier: at 1 the
    # model read most printed D, C and H as 0 and 4, even in sans faces it trained on. 10 was
    # chosen on two seeds' held-out renderings and fresh non-digit draws (docs/field.md).
    glyph_weight: float = 10.0
    polarity: str = "auto"
    # Test-time views (degrees): the kept model averages its logits over the frame and these
    # rotations of it. Training and model selection see single frames.
    # Two views (+-15) certify as much coverage as four (+-7.5, +-15) did over three models, at
    # three network passes instead of five: that keeps batch-1 inference >= 5x PyTorch eager.
    view_rotations: tuple[float, ...] = (-15.0, 15.0)
    # The field: this share of each batch is camera crops of training digits (toolchain.field's
    # renderer) turned back into frames by the torch twin of runtime.preprocess, drawn from a
    # bank of ``field_bank`` such frames of which ``field_refresh`` are rendered anew each epoch
    # (rendering every batch afresh would cost more than the training itself on 2 CPU cores).
    field_fraction: float = 0.25
    field_bank: int = 8192
    field_refresh: int = 1024
    holdout_fraction: float = 0.2
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "view_rotations", tuple(float(a) for a in self.view_rotations))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["view_rotations"] = list(self.view_rotations)  # as JSON and a reloaded checkpoint hold it
        return d


# The notebook's settings, exactly: classic LeNet, SGD lr 0.01 momentum 0.9, batch 100,
# constant rate, rotation 25 and inversion p=0.5 in training, no polarity handling, 940 epochs.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "seed": dict(arch="lenet5-classic", epochs=940, batch_size=100, optimizer="sgd", lr=0.01, momentum=0.9,
                 weight_decay=0.0, schedule="constant", rotation=25.0, rotation_mode="nearest", invert_p=0.5,
                 polarity="none", outlier_fraction=0.0, view_rotations=(), field_fraction=0.0),
}


def make_config(recipe: str = "default", **overrides: Any) -> TrainConfig:
    """A recipe's config with the given fields replaced (``None`` values are ignored)."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe {recipe!r}: expected one of {', '.join(RECIPES)}")
    names = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown training options {sorted(unknown)}")
    values = {**RECIPES[recipe], **{k: v for k, v in overrides.items() if v is not None}}
    cfg = TrainConfig(recipe=recipe, **values)
    validate_config(cfg)
    return cfg


def validate_config(cfg: TrainConfig) -> None:
    """Reject settings that cannot train, naming the field and the allowed values."""
    checks = [
        (cfg.epochs >= 1, f"epochs {cfg.epochs}: expected at least 1"),
        (cfg.batch_size >= 1, f"batch size {cfg.batch_size}: expected at least 1"),
        (cfg.lr > 0 and math.isfinite(cfg.lr), f"learning rate {cfg.lr}: expected a positive number"),
        (0.0 < cfg.holdout_fraction < 1.0, f"holdout fraction {cfg.holdout_fraction}: expected a value in (0, 1)"),
        (0.0 <= cfg.invert_p <= 1.0, f"invert probability {cfg.invert_p}: expected a value in [0, 1]"),
        (0.0 <= cfg.rotation <= 180.0, f"rotation {cfg.rotation}: expected degrees in [0, 180]"),
        (cfg.rotation_mode in ("nearest", "bilinear"),
         f"rotation mode {cfg.rotation_mode!r}: expected 'nearest' or 'bilinear'"),
        (0.0 <= cfg.translate <= 8.0, f"translate {cfg.translate}: expected pixels in [0, 8]"),
        (0.0 <= cfg.outlier_fraction <= 1.0, f"outlier fraction {cfg.outlier_fraction}: expected a value in [0, 1]"),
        (0.0 <= cfg.outlier_weight <= 10.0, f"outlier weight {cfg.outlier_weight}: expected a value in [0, 10]"),
        (0.0 <= cfg.glyph_weight <= 100.0, f"glyph weight {cfg.glyph_weight}: expected a value in [0, 100]"),
        (0.0 <= cfg.field_fraction < 1.0, f"field fraction {cfg.field_fraction}: expected a value in [0, 1)"),
        (cfg.field_bank >= 1 and 0 <= cfg.field_refresh <= cfg.field_bank,
         f"field bank {cfg.field_bank} / refresh {cfg.field_refresh}: expected a bank of at least 1 and a refresh "
         "no larger than it"),
        (cfg.optimizer in ("adamw", "sgd"), f"optimizer {cfg.optimizer!r}: expected 'adamw' or 'sgd'"),
        (cfg.schedule in ("onecycle", "constant"), f"schedule {cfg.schedule!r}: expected 'onecycle' or 'constant'"),
        (cfg.polarity in ("auto", "none"), f"polarity {cfg.polarity!r}: expected 'auto' or 'none'"),
        (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:"),
         f"device {cfg.device!r}: expected auto, cpu or cuda"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    check_view_rotations(cfg.view_rotations)
    from .model import ARCHITECTURES
    if cfg.arch not in ARCHITECTURES:
        raise ValueError(f"architecture {cfg.arch!r}: expected one of {', '.join(ARCHITECTURES)}")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested, but CUDA is not available here (torch {torch.__version__})")
    return torch.device(name)


def environment_report(device: torch.device) -> dict[str, Any]:
    """What the notebook printed at start: torch, CUDA, cuDNN, the device's properties."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            gpu=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
        )
    return env


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into (train, holdout) index arrays."""
    perm = np.random.default_rng(seed).permutation(n)
    n_hold = int(round(n * fraction))
    if n_hold < 1 or n_hold >= n:
        raise ValueError(f"holdout fraction {fraction} of {n} images leaves an empty split")
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def to_device_tensors(images: np.ndarray, labels: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(N, 1, 28, 28)`` and int64 labels, resident on ``device``."""
    x = torch.from_numpy(np.ascontiguousarray(images).copy()).unsqueeze(1).to(device)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64).copy()).to(device)
    return x, y


def _float_batches(x: torch.Tensor, batch: int) -> Iterator[torch.Tensor]:
    """``x`` in slices of ``batch``, uint8 scaled to [0, 1] floats (floats pass as they are)."""
    for i in range(0, x.shape[0], batch):
        xb = x[i:i + batch]
        yield xb.float() / 255.0 if xb.dtype == torch.uint8 else xb


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """Logits for uint8 images (or [0, 1] floats) ``(N, 1, 28, 28)``, in eval mode."""
    was_training = model.training
    model.eval()
    out = [model(xb).float() for xb in _float_batches(x, batch)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 10, device=x.device)


@torch.no_grad()
def predict_novelty(model: torch.nn.Module, x: torch.Tensor, batch: int = 4096) -> torch.Tensor | None:
    """Novelty residuals for uint8 images (or [0, 1] floats), or None when the model has no novelty basis."""
    if getattr(model, "novelty", None) is None:
        return None
    out = [model.novelty_score(xb).float() for xb in _float_batches(x, batch)]
    return torch.cat(out) if out else torch.empty(0, device=x.device)


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Loss, accuracy and logits of ``model`` on images ``x`` and labels ``y``."""
    logits = predict_logits(model, x)
    loss = F.cross_entropy(logits, y).item()
    acc = (logits.argmax(1) == y).float().mean().item()
    return {"loss": loss, "accuracy": acc, "logits": logits}


#: Classes whose mean frame must correlate best with MNIST's mean of the same digit for
#: :func:`looks_like_digits`.
DIGIT_CLASSES_MATCHED = 8


def class_means(images: np.ndarray, labels: np.ndarray, classes: int = 10) -> np.ndarray:
    """``(classes, H * W)``: each class's mean frame, light on dark (frames whose mean pixel is above
    the middle are inverted first, as the model's polarity handling does); zeros for an absent class."""
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    x = np.where(x.mean(axis=1, keepdims=True) > 0.5, 1.0 - x, x)
    out = np.zeros((classes, x.shape[1]), dtype=np.float32)
    for c in range(classes):
        if (labels == c).any():
            out[c] = x[labels == c].mean(axis=0)
    return out


def looks_like_digits(images: np.ndarray, labels: np.ndarray) -> bool:
    """Whether a training set is the ten digits in label order: at least
    :data:`DIGIT_CLASSES_MATCHED` of its class means correlate best with the embedded MNIST's
    mean of the same digit (a subset of MNIST: 10 of 10; Fashion-MNIST or letters: chance)."""
    if images.shape[1:] != (28, 28):
        return False
    from .data import embedded_mnist
    ref = embedded_mnist("test")
    a, b = class_means(images, labels), class_means(ref.images, ref.labels)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    corr = (a @ b.T) / np.maximum(np.linalg.norm(a, axis=1)[:, None] * np.linalg.norm(b, axis=1)[None], 1e-12)
    return int((corr.argmax(axis=1) == np.arange(10)).sum()) >= DIGIT_CLASSES_MATCHED


#: The field bank's share of non-digits, per unit of ``outlier_fraction`` (0.25 -> a fifth).
FIELD_OUTLIER_SHARE = 0.8
#: The field bank's share of digits that are printed (:func:`toolchain.field.glyph_bank`) instead of
#: handwritten: with printed letters among the non-digits, the model must learn the letters' shapes,
#: not that print is no digit. 0.1 was chosen on the held-out split's renderings (docs/field.md).
PRINTED_SHARE = 0.1


@dataclass
class FieldBank:
    """Field frames on the training device: uint8 ``x`` ``(B, 1, 28, 28)`` and labels ``y``."""

    x: torch.Tensor
    y: torch.Tensor
    cursor: int = 0

    @classmethod
    def build(cls, x: torch.Tensor, y: torch.Tensor, size: int, gen: torch.Generator, outliers: float,
              printed: bool = False) -> FieldBank:
        pick = torch.randint(0, x.shape[0], (size,), device=x.device, generator=gen)
        fx, fy = _field_batch(x[pick], y[pick], gen, outliers, printed=printed)
        return cls(fx, fy)

    def refresh(self, x: torch.Tensor, y: torch.Tensor, count: int, gen: torch.Generator, outliers: float,
                printed: bool = False) -> None:
        """Render ``count`` new frames over the oldest ones."""
        if count <= 0:
            return
        pick = torch.randint(0, x.shape[0], (count,), device=x.device, generator=gen)
        fx, fy = _field_batch(x[pick], y[pick], gen, outliers, printed=printed)
        slots = (torch.arange(count, device=x.device) + self.cursor) % self.x.shape[0]
        self.x[slots], self.y[slots] = fx, fy
        self.cursor = int((self.cursor + count) % self.x.shape[0])


#: Labels of non-digits in training batches: outliers, and the field's printed characters among them.
OUTLIER_LABEL, GLYPH_LABEL = -1, -2


def outlier_loss(logits: torch.Tensor, labels: torch.Tensor, n_out: int, cfg: TrainConfig) -> torch.Tensor:
    """Outlier exposure (Hendrycks et al.): cross-entropy to the uniform distribution of the rows
    labelled as non-digits, printed characters weighing ``cfg.glyph_weight`` times the others,
    summed and divided by ``n_out`` (the batch's synthetic outliers), times ``cfg.outlier_weight``."""
    out = labels < 0
    lo = -logits[out].log_softmax(1).mean(1)
    w = torch.where(labels[out] == GLYPH_LABEL, cfg.glyph_weight, 1.0).to(lo.dtype)
    return cfg.outlier_weight * (lo * w).sum() / max(n_out, 1)


def _field_batch(x_u8: torch.Tensor, y: torch.Tensor, gen: torch.Generator, outliers: float = 0.0,
                 chunk: int = 1024, printed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Field frames (uint8) of training digits; a crop the preprocessing refuses keeps its plain frame.

    The first ``outliers`` share are non-digits (:func:`toolchain.field.make_field_outliers`)
    shot and preprocessed the same way, labelled -1: after preprocessing, a non-digit is scaled
    and centred like a digit, and outlier exposure must see that too. With ``printed`` (digit
    data only, :func:`looks_like_digits`), printed letters are among the non-digits and
    :data:`PRINTED_SHARE` of the digits are printed digits in the glyph faces, labelled by their
    character.
    """
    from .field import TRAIN_LEVEL, TRAIN_RIVAL_SHARE, field_frames, glyph_bank, make_field_outliers
    y = y.clone()
    k = int(round(outliers * x_u8.shape[0]))
    if printed:  # a share of the digits are printed ones, labelled by their character
        _, printed_x, printed_y = glyph_bank(x_u8.device)
        swap = torch.rand(x_u8.shape[0], device=x_u8.device, generator=gen) < PRINTED_SHARE
        swap[:k] = False
        pick = torch.randint(0, printed_x.shape[0], (x_u8.shape[0],), device=x_u8.device, generator=gen)
        x_u8 = torch.where(swap.view(-1, 1, 1, 1), printed_x[pick].unsqueeze(1), x_u8)
        y = torch.where(swap, printed_y[pick].to(y.dtype), y)
    xs, glyph = [], torch.zeros(x_u8.shape[0], dtype=torch.bool, device=x_u8.device)
    for i in range(0, x_u8.shape[0], chunk):
        xb = x_u8[i:i + chunk].float() / 255.0
        if i < k:
            m = min(k - i, xb.shape[0])
            xo, glyph[i:i + m] = make_field_outliers(xb[:m], gen, y[i:i + m], glyphs=printed)
            xb = torch.cat([xo, xb[m:]])
        fr, code = field_frames(xb, TRAIN_LEVEL, gen, solid=False, bands=False, ink_floor=0.0,
                                rival_share=TRAIN_RIVAL_SHARE)
        xs.append(torch.where((code > 0).view(-1, 1, 1, 1), xb, fr))
    y[:k] = torch.where(glyph[:k], GLYPH_LABEL, OUTLIER_LABEL).to(y.dtype)
    return torch.round(torch.cat(xs) * 255).to(torch.uint8), y


def train_one_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, x: torch.Tensor,
                    y: torch.Tensor, cfg: TrainConfig, gen: torch.Generator,
                    on_batch: Callable[[int], None] | None = None,
                    bank: FieldBank | None = None) -> float:
    """One pass over ``x`` in shuffled batches with augmentation; returns the mean loss.

    With a field ``bank``, the first ``cfg.field_fraction`` of each batch is replaced by
    field frames (and their labels) drawn from it; those get no further augmentation.
    """
    model.train()
    n = x.shape[0]
    perm = torch.randperm(n, device=x.device, generator=gen)
    total = torch.zeros((), device=x.device)
    for i in range(0, n, cfg.batch_size):
        idx = perm[i:i + cfg.batch_size]
        xb = augment(x[idx].float() / 255.0, cfg.rotation, cfg.invert_p, gen, cfg.rotation_mode, cfg.translate)
        yb = y[idx]
        if bank is not None:
            k = int(round(cfg.field_fraction * idx.numel()))
            pick = torch.randint(0, bank.x.shape[0], (k,), device=x.device, generator=gen)
            xb = torch.cat([bank.x[pick].float() / 255.0, xb[k:]])
            yb = torch.cat([bank.y[pick], yb[k:]])
        n_out = int(round(cfg.outlier_fraction * idx.numel()))
        if n_out:
            xo = make_outliers(xb[-n_out:], gen, yb[-n_out:])
            xb = torch.cat([xb, xo])
            yb = torch.cat([yb, torch.full((n_out,), OUTLIER_LABEL, device=yb.device, dtype=yb.dtype)])
        logits = model(xb)
        if bank is not None or n_out:
            # Non-digits (label -1: synthetic outliers, and the bank's field outliers) are trained
            # toward the uniform distribution (Hendrycks et al., outlier exposure).
            out = yb < 0
            loss = F.cross_entropy(logits[~out], yb[~out])
            if cfg.outlier_weight > 0:
                loss = loss + outlier_loss(logits, yb, n_out, cfg)
        else:
            loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        total += loss.detach() * idx.numel()  # no .item(): keeps the GPU from syncing per batch
        if on_batch is not None:
            on_batch(idx.numel())
    return (total / n).item()


def _optimizer(model: torch.nn.Module, cfg: TrainConfig, steps_per_epoch: int) -> tuple[Any, Any]:
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        try:
            # The fused kernel updates all of LeNet's tensors in one pass: 9% faster per step on 2 CPU cores.
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError):  # a torch or device without the fused kernel
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = None
    if cfg.schedule == "onecycle":
        # One-cycle: a short warm-up then cosine decay to near zero; it gets LeNet to its
        # plateau in a dozen epochs, where a constant rate needs hundreds.
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs,
                                                    steps_per_epoch=steps_per_epoch, pct_start=0.15)
    return opt, sched


@dataclass
class TrainResult:
    """What :func:`fit` hands back: the best model and the run's record."""

    model: torch.nn.Module
    checkpoint: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    environment: dict[str, Any] = field(default_factory=dict)


def _seed_all(cfg: TrainConfig) -> None:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def fit(cfg: TrainConfig, train: Dataset, out_dir: Path, *, resume: bool = False,
        class_names: list[str] | None = None,
        on_epoch: Callable[[dict[str, float]], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
        on_start: Callable[[int, int], None] | None = None,
        eval_hook: Callable[[torch.nn.Module, int], dict[str, float]] | None = None,
        should_stop: Callable[[dict[str, float]], bool] | None = None) -> TrainResult:
    """Train per ``cfg``, keeping the best model (validation loss) in ``out_dir/checkpoint.pt``.

    Every epoch also writes ``out_dir/last.pt`` (model, optimiser, schedule, RNG states),
    atomically, so a run killed at any moment resumes from its last finished epoch with
    ``resume=True``. ``eval_hook(model, epoch)`` may add figures to each epoch's record
    (the benchmarks use it to follow test accuracy); it must not steer training.
    ``should_stop(record)`` ends the run after an epoch (the benchmarks' time budgets).
    """
    validate_config(cfg)
    device = resolve_device(cfg.device)
    _seed_all(cfg)
    env = environment_report(device)
    from .field import field_outlier_kinds
    tr_idx, ho_idx = split_indices(len(train), cfg.holdout_fraction, cfg.seed)
    # Printed letters as non-digits and printed digits as digits are digit knowledge: a dataset of
    # letters or clothing must not be taught that an 'A' is nothing or that a printed '3' is class 3.
    printed = cfg.field_fraction > 0 and looks_like_digits(train.images[tr_idx], train.labels[tr_idx])
    x_tr, y_tr = to_device_tensors(train.images[tr_idx], train.labels[tr_idx], device)
    x_ho, y_ho = to_device_tensors(train.images[ho_idx], train.labels[ho_idx], device)
    arch = ArchConfig(cfg.arch, num_classes=10)
    pre = PreprocessConfig(polarity=cfg.polarity, view_rotations=cfg.view_rotations)
    # channels_last lets oneDNN pick its faster convolution kernels (+16% images/s on 2 CPU
    # cores); for one-channel input it is only a stride change, so the data need no copy.
    # The model in training sees one view; only the kept model averages over test-time views.
    model = Pipeline(arch, replace(pre, view_rotations=())).to(device, memory_format=torch.channels_last)
    steps = math.ceil(x_tr.shape[0] / cfg.batch_size)
    opt, sched = _optimizer(model, cfg, steps)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "last.pt", out_dir / "checkpoint.pt"

    base = {
        "arch": arch.to_dict(),
        "preprocess": pre.to_dict(),
        "train_config": cfg.to_dict(),
        "class_names": class_names or [str(i) for i in range(10)],
        "split": {
            "holdout_fraction": cfg.holdout_fraction,
            "seed": cfg.seed,
            "holdout_indices": torch.from_numpy(ho_idx.astype(np.int64)),
            "n_train": len(tr_idx),
            "n_holdout": len(ho_idx),
            "dataset_source": train.source,
            "dataset_sha256": train.sha256,
        },
        "tool_version": __version__,
        "torch_version": str(torch.__version__),
        "calibration": None,
        # What the field's outlier exposure showed the model, for the reports' "seen in training".
        "field_outliers": field_outlier_kinds(glyphs=printed) if cfg.field_fraction > 0 and cfg.outlier_fraction > 0
        else [],
        "printed_digits": printed,
    }
    history: list[dict[str, float]] = []
    best_loss, best_epoch, start_epoch, seconds = math.inf, 0, 0, 0.0
    best_state: dict[str, torch.Tensor] | None = None
    saved_bank: dict[str, Any] | None = None
    if resume and last_path.is_file():
        state = load_checkpoint(last_path)
        saved_bank = state.get("field_bank")
        # A run from before printed characters weighed apart had them at one outlier's weight.
        saved = {"glyph_weight": 1.0, **state["train_config"]}
        # The one-cycle schedule is laid out over the whole run: only a constant rate can be extended.
        fixed = {"epochs"} if cfg.schedule == "constant" else set()
        if {k: v for k, v in saved.items() if k not in fixed} != {k: v for k, v in cfg.to_dict().items() if k not in fixed}:
            changed = sorted(k for k in set(saved) | set(cfg.to_dict()) if saved.get(k) != cfg.to_dict().get(k))
            raise ArtifactError(f"{last_path}: was written with different training settings ({', '.join(changed)}); "
                                "resume with the same options (--epochs may change only with a constant schedule, "
                                "as in --recipe seed) or use a new --out")
        if state["split"]["dataset_sha256"] != train.sha256:
            raise ArtifactError(f"{last_path}: was trained on other data ({state['split']['dataset_source']})")
        model.net.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler"):
            sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        history = list(state["history"])
        best_loss, best_epoch = state["best_val_loss"], state["best_epoch"]
        best_state = state["best_state_dict"]
        start_epoch, seconds = state["epoch"], state["seconds"]
    bank: FieldBank | None = None
    if cfg.field_fraction > 0 and start_epoch < cfg.epochs:
        if saved_bank is not None:  # the bank as it was, so a resumed run is the uninterrupted run
            bank = FieldBank(saved_bank["x"].to(device), saved_bank["y"].to(device), int(saved_bank["cursor"]))
        else:
            t0 = time.perf_counter()
            with torch.no_grad():
                bank = FieldBank.build(x_tr, y_tr, cfg.field_bank, gen, cfg.outlier_fraction * FIELD_OUTLIER_SHARE,
                                       printed=printed)
            seconds += time.perf_counter() - t0
    if on_start is not None:
        on_start(start_epoch, x_tr.shape[0])

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        # Every epoch but the one a bank was just rendered for refreshes a part of it.
        if bank is not None and epoch > 0 and not (epoch == start_epoch and saved_bank is None):
            with torch.no_grad():
                bank.refresh(x_tr, y_tr, cfg.field_refresh, gen, cfg.outlier_fraction * FIELD_OUTLIER_SHARE,
                             printed=printed)
        train_loss = train_one_epoch(model, opt, sched, x_tr, y_tr, cfg, gen, on_batch, bank)
        val = evaluate(model, x_ho, y_ho)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - t0
        rec = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val["loss"],
               "val_accuracy": val["accuracy"], "seconds": seconds,
               "lr": opt.param_groups[0]["lr"]}
        if eval_hook is not None:
            rec.update(eval_hook(model, epoch + 1))
        history.append(rec)
        if val["loss"] < best_loss:
            best_loss, best_epoch = val["loss"], epoch + 1
            best_state = {k: v.detach().cpu().clone() for k, v in model.net.state_dict().items()}
            save_checkpoint(best_path, {**base, "state_dict": best_state, "epoch": best_epoch,
                                        "val_loss": best_loss, "history": history})
        save_checkpoint(last_path, {
            **base, "state_dict": {k: v.detach().cpu() for k, v in model.net.state_dict().items()},
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched is not None else None,
            "generator": gen.get_state().cpu(), "history": history, "best_val_loss": best_loss,
            "best_epoch": best_epoch, "best_state_dict": best_state, "epoch": epoch + 1, "seconds": seconds,
            "field_bank": None if bank is None else {"x": bank.x.cpu(), "y": bank.y.cpu(), "cursor": bank.cursor},
        })
        if on_epoch is not None:
            on_epoch(rec)
        if should_stop is not None and should_stop(rec):
            break

    if best_state is None:
        raise ArtifactError(f"{out_dir}: no epoch finished, so there is no model to keep")
    best = Pipeline(arch, pre)
    best.net.load_state_dict(best_state)
    ckpt = {**base, "state_dict": best_state, "epoch": best_epoch, "val_loss": best_loss, "history": history}
    return TrainResult(best.eval(), ckpt, history, seconds, str(device), env)

