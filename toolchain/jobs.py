"""The work behind the CLI commands, as plain functions: train, calibrate, manifest.

Each writes its files atomically and finishes by rewriting ``manifest.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.fileio import ArtifactError, atomic_write_json, load_json_file

from . import gate, ood, report
from .checkpoint import build_pipeline, load_checkpoint, save_checkpoint
from .data import DataError, Dataset, fingerprint, load_dataset, load_idx_folder, load_recorded, read_csv, read_idx
from .evaluate import evaluate_test
from .manifest import write_manifest
from .model import Novelty, fit_novelty
from .train import TrainConfig, TrainResult, fit, predict_logits, predict_novelty

OOD_PER_KIND = 10_000
#: OOD kinds that outlier exposure synthesises in training; the others are never seen.
OOD_SEEN_IN_TRAINING = ("uniform-noise", "black", "white", "scrambled-digits")


def read_metrics(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "metrics.json"
    return load_json_file(path) if path.is_file() else {}


# --------------------------------------------------------------------------- the data an artifact was made with

def recorded_data(artifact: Path) -> dict[str, Any] | None:
    """Where ARTIFACT's checkpoint says its training and test data came from (None: not recorded)."""
    path = artifact / "checkpoint.pt" if artifact.is_dir() else artifact
    if not path.is_file():
        return None
    return load_checkpoint(path).get("data")


def load_splits(train_csv: Path | None, test_csv: Path | None, idx_dir: Path | None,
                need_train: bool = True, artifact: Path | None = None,
                ckpt: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """The splits the options name; a split no option names is read again from where ARTIFACT's
    checkpoint (``ckpt``, when the caller has it loaded already) recorded it, checked by SHA-256,
    else the embedded MNIST."""
    recorded = None
    if artifact is not None and not idx_dir:
        recorded = ckpt.get("data") if ckpt is not None else recorded_data(artifact)
    what = f"the checkpoint in {artifact}"

    def one(csv: Path | None, split: str) -> Any:
        if csv is not None or idx_dir is not None or not recorded:
            return load_dataset(csv=csv, idx_dir=idx_dir, split=split)
        return load_recorded(recorded.get(split), split, what=what)

    return one(train_csv, "train") if need_train else None, one(test_csv, "test")


# --------------------------------------------------------------------------- data for the gate

def load_ood_images(path: str | Path) -> np.ndarray:
    """Images of a user-given OOD dataset: a seed CSV, an IDX images file or an IDX folder."""
    path = Path(path)
    if path.is_dir():
        for split in ("test", "train"):
            try:
                return load_idx_folder(path, split, num_classes=256).images
            except DataError:
                continue
        raise DataError(f"{path}: no IDX image files (t10k-/train-images-idx3-ubyte[.gz]) in this folder")
    if path.suffix.lower() == ".csv":
        return read_csv(path, num_classes=1000).images  # labels of OOD data are not used
    arr = read_idx(path)
    if arr.ndim != 3 or arr.shape[1:] != (28, 28):
        raise DataError(f"{path}: images of shape {list(arr.shape)}: expected [N, 28, 28] (28x28 grayscale)")
    return arr


def holdout_from_checkpoint(ckpt: dict[str, Any], train: Dataset, where: str) -> Dataset:
    """The held-out split recorded in a checkpoint, taken from the training data it names."""
    split = ckpt.get("split") or {}
    idx = split.get("holdout_indices")
    if idx is None or len(idx) == 0:
        raise ArtifactError(f"{where}: the checkpoint records no held-out split: expected one written by "
                            "'lenet-tool train', or pass held-out data with --holdout-csv/--holdout-idx")
    if split.get("dataset_sha256") != train.sha256:
        raise ArtifactError(f"{where}: the checkpoint was trained on {split.get('dataset_source')!r}, "
                            f"not on {train.source!r}: pass the same training data")
    idx = np.asarray(idx, dtype=np.int64)
    if idx.min() < 0 or idx.max() >= len(train):
        raise ArtifactError(f"{where}: held-out indices outside the {len(train)} training images")
    return Dataset(train.images[idx], train.labels[idx], source=f"{train.source} (held-out split)")


@torch.no_grad()
def _outputs(model: torch.nn.Module, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits and novelty residuals (None without a novelty basis) of uint8 ``(N, 28, 28)`` images."""
    x = torch.from_numpy(np.ascontiguousarray(images).copy()).unsqueeze(1)
    nov = predict_novelty(model, x)
    return predict_logits(model, x).double().numpy(), None if nov is None else nov.double().numpy()


NOVELTY_SAMPLE = 10_000
#: metrics.json lists at most this many accepted held-out errors (most sure first); a weak model
#: at a loose target risk could otherwise put thousands there.
ACCEPTED_ERRORS_LISTED = 100


def add_novelty(ckpt: dict[str, Any], model: torch.nn.Module, train: Dataset, seed: int = 0) -> None:
    """Fit the novelty basis on a seeded sample of the training images (never held-out ones)
    and put it in the checkpoint and the model."""
    pool = np.setdiff1d(np.arange(len(train)), np.asarray(ckpt["split"]["holdout_indices"]))
    pick = np.sort(np.random.default_rng(seed).choice(pool, size=min(NOVELTY_SAMPLE, len(pool)), replace=False))
    x = torch.from_numpy(train.images[pick].copy()).unsqueeze(1).float() / 255.0
    basis = fit_novelty(model.pre.cpu(), x)
    ckpt["novelty"] = {**basis, "components": int(basis["basis"].shape[1]), "fitted_on": len(pick)}
    model.novelty = Novelty(basis["mean"], basis["basis"])


# --------------------------------------------------------------------------- calibrate

def _versus_seed_rule(rows: list[dict[str, Any]], conf: np.ndarray, correct: np.ndarray) -> dict[str, float] | None:
    """The chosen score's test risk at the notebook rule's coverage, and its coverage at that
    rule's risk: the score dominates the rule where the first is no higher and the second no lower."""
    seed = next((r for r in rows if r.get("score") == "seed-minmax" and "test" in r), None)
    if seed is None or not len(conf):
        return None
    cov, risk = gate.risk_coverage(conf, correct)
    k = max(int(round(seed["test"]["coverage"] * len(conf))), 1)
    within = np.flatnonzero(risk <= seed["test"]["selective_risk"])
    return {"seed_coverage": seed["test"]["coverage"], "seed_selective_risk": seed["test"]["selective_risk"],
            "risk_at_seed_coverage": float(risk[k - 1]),
            "coverage_at_seed_risk": float(cov[within.max()]) if len(within) else 0.0}


def accepted_errors(calib: dict[str, Any], logits: np.ndarray, labels: np.ndarray, novelty: np.ndarray | None,
                    rows: np.ndarray | None = None, field_start: int | None = None) -> list[dict[str, Any]]:
    """Held-out frames the gate accepts but labels differently, most confident first.

    ``rows``: each held-out frame's row in the training file (reported so it can be looked at).
    ``field_start``: frames from this index on are field renderings of held-out frames.
    """
    conf = gate.confidence_np(logits, calib, novelty)
    pred = logits.argmax(1)
    bad = np.flatnonzero((conf >= calib["threshold"]) & (pred != labels))
    bad = bad[np.argsort(-conf[bad], kind="stable")]
    return [{"holdout_index": int(i), **({"training_row": int(rows[i])} if rows is not None else {}),
             "field": field_start is not None and bool(i >= field_start),
             "label": int(labels[i]), "predicted": int(pred[i]), "confidence": float(conf[i])} for i in bad]


def calibrate(out_dir: Path, *, holdout: Dataset, test: Dataset, gate_cfg: gate.GateConfig | None = None,
              ood_images: np.ndarray | None = None, ood_name: str | None = None,
              split_info: dict[str, Any] | None = None, test_eval: dict[str, Any] | None = None,
              holdout_rows: np.ndarray | None = None) -> dict[str, Any]:
    """Fit the gate on ``holdout``; compare every method on ``test`` and OOD frames; write it all.

    ``holdout_rows``: the held-out frames' rows in the training file, to name the accepted
    held-out errors by (the checkpoint's split has them; user-given held-out data does not).

    Updates ``calibration.json``, the checkpoint's ``calibration``, ``metrics.json``'s
    ``gate`` section, the gate plots and the manifest.
    """
    ckpt_path = out_dir / "checkpoint.pt"
    ckpt = load_checkpoint(ckpt_path)
    model = build_pipeline(ckpt)
    field_info, field_start, groups = None, None, None
    if (ckpt["train_config"].get("field_fraction") or 0) > 0:
        # A model trained for the field is calibrated for it too: the gate is fitted and
        # certified on the held-out frames and on one camera rendering of each (seeded), so
        # its guarantee covers what a device's preprocessing produces.
        from .field import HOLDOUT_SEED, field_copies
        fx, kept = field_copies(holdout.images)
        field_start = len(holdout)
        field_info = {"seed": HOLDOUT_SEED, "frames": int(len(kept)), "refused_by_preprocess": int(len(holdout) - len(kept))}
        holdout = Dataset(np.concatenate([holdout.images, fx]), np.concatenate([holdout.labels, holdout.labels[kept]]),
                          source=f"{holdout.source} + one field rendering of each")
        if holdout_rows is not None:
            holdout_rows = np.concatenate([np.asarray(holdout_rows), np.asarray(holdout_rows)[kept]])
        # A digit and its rendering err together: the gate divides the frames by digit (and,
        # with --one-frame-per-digit, certifies with one frame of each).
        groups = np.concatenate([np.arange(field_start), np.asarray(kept)])
    lh, nh = _outputs(model, holdout.images)
    if test_eval is None:
        test_eval = evaluate_test(model, test)
    lt, yt, nt = test_eval["logits"], test.labels, test_eval["novelty"]
    ok_t = lt.argmax(1) == yt
    ood_sets = {k: ood.generate(k, OOD_PER_KIND, seed=1, digits=test.images) for k in ood.KINDS}
    if ood_images is not None:
        ood_sets[f"user:{ood_name or 'dataset'}"] = ood_images
    ood_outputs = {k: _outputs(model, v) for k, v in ood_sets.items()}

    split = {"split": "holdout", "source": holdout.source, **(split_info or {})}
    cfg = gate_cfg or gate.GateConfig()
    method = cfg.method
    chosen = gate.fit_gate(lh, holdout.labels, cfg, novelty=nh, split=split, groups=groups)
    rows = []
    candidates = [("seed", "seed-minmax"), ("guaranteed", "msp"), ("guaranteed", "energy"),
                  ("guaranteed", "msp-energy")]
    if (method, chosen["score"]) not in candidates:
        candidates.append((method, chosen["score"]))
    curves = {}
    fitted: dict[tuple[str, str], dict[str, Any]] = {}
    for m, s in candidates:
        try:
            c = chosen if (m, s) == (method, chosen["score"]) else gate.fit_gate(
                lh, holdout.labels, cfg.with_(method=m, score=s if s != "seed-minmax" else "msp"), novelty=nh,
                split=split, groups=groups)
        except gate.GateError as e:
            rows.append({"method": m, "score": s, "error": str(e)})
            continue
        fitted[(m, s)] = c
        conf = gate.confidence_np(lt, c, nt)
        st = gate.gate_stats(conf, ok_t, c["threshold"])
        seed_conf = gate.confidence_np(test_eval["seed_logits"], c, test_eval["seed_novelty"])
        seed_ok = test_eval["seed_logits"].argmax(1) == yt
        row = {"method": c["method"], "score": c["score"], "threshold": c["threshold"],
               "test": {**st, "aurc": gate.aurc(conf, ok_t)},
               "seed_protocol": gate.gate_stats(seed_conf, seed_ok, c["threshold"]),
               "ood_acceptance": {k: float((gate.confidence_np(lo, c, no) >= c["threshold"]).mean())
                                  for k, (lo, no) in ood_outputs.items()},
               "chosen": (m, c["score"]) == (method, chosen["score"])}
        if "temperature" in c:
            row["temperature"] = c["temperature"]
        rows.append(row)
        cov, risk = gate.risk_coverage(conf, ok_t)
        curves[f"{m} ({c['score']})"] = (cov, risk, st["coverage"], st["selective_risk"])

    t = chosen.get("temperature") or gate.fit_temperature(lh, holdout.labels)
    p_before = gate.softmax_np(lt).max(1)
    p_after = gate.softmax_np(lt, t).max(1)
    conf_chosen = gate.confidence_np(lt, chosen, nt)
    st = gate.gate_stats(conf_chosen, ok_t, chosen["threshold"])
    held_errors = accepted_errors(chosen, lh, holdout.labels, nh,
                                  None if holdout_rows is None else np.asarray(holdout_rows), field_start)
    gate_metrics = {
        "method": chosen["method"], "score": chosen["score"], "threshold": chosen["threshold"],
        "field_holdout": field_info,
        "requested_risk": cfg.target_risk if method == "guaranteed" else None,
        "target_risk": chosen.get("target_risk"), "delta": chosen.get("delta"),
        "certified": bool(chosen.get("certified")), "certification_line": gate.describe_certification(chosen),
        "test": {**st, "aurc": gate.aurc(conf_chosen, ok_t)},
        "ece_15_bins": {"before_temperature": gate.ece(p_before, ok_t), "after_temperature": gate.ece(p_after, ok_t),
                        "temperature": t},
        "ood_acceptance": next((r["ood_acceptance"] for r in rows if r.get("chosen")), {}),
        "versus_seed_rule": _versus_seed_rule(rows, conf_chosen, ok_t),
        # Where the certified risk goes: on MNIST most are frames whose given label is wrong.
        "accepted_holdout_error_count": len(held_errors),
        "accepted_holdout_errors": held_errors[:ACCEPTED_ERRORS_LISTED],
        "ood_seen_in_training": [k for k in OOD_SEEN_IN_TRAINING
                                 if (ckpt["train_config"].get("outlier_fraction") or 0) > 0]
                                + (["letters"] if "printed-letters" in (ckpt.get("field_outliers") or []) else []),
        "comparison": rows,
    }
    rdir = out_dir / "report"
    report.score_histogram(conf_chosen, ok_t, chosen["threshold"], f"{method} gate ({chosen['score']}), test set",
                           rdir / "gate_scores.png")
    seed_rule = fitted.get(("seed", "seed-minmax"))
    if seed_rule is not None:  # absent only when the held-out data has no wrong prediction to fit it on
        report.score_histogram(gate.confidence_np(lt, seed_rule), ok_t, seed_rule["threshold"],
                               "notebook's rule (seed-minmax), test set", rdir / "gate_scores_seed.png")
    report.accepted_errors(holdout.images[[r["holdout_index"] for r in held_errors]], held_errors,
                           "Held-out frames the gate accepts but gets wrong", rdir / "gate_accepted_errors.png")
    report.risk_coverage_plot(curves, chosen.get("target_risk"), rdir / "risk_coverage.png")
    report.reliability(p_before, p_after, ok_t, rdir / "reliability.png")

    atomic_write_json(out_dir / "calibration.json", chosen)
    ckpt["calibration"] = chosen
    save_checkpoint(ckpt_path, {k: v for k, v in ckpt.items() if k not in ("format", "format_version")})
    metrics = read_metrics(out_dir)
    metrics["gate"] = gate_metrics
    atomic_write_json(out_dir / "metrics.json", metrics)
    write_manifest(out_dir)
    return gate_metrics


# --------------------------------------------------------------------------- train

def train(cfg: TrainConfig, out_dir: Path, train_ds: Dataset, test_ds: Dataset, *, resume: bool = False,
          gate_cfg: gate.GateConfig | None = None, class_names: list[str] | None = None, ood_images: np.ndarray | None = None,
          ood_name: str | None = None, **callbacks: Callable[..., Any]) -> dict[str, Any]:
    """Train, evaluate on the test set, calibrate the gate and write the whole artifact."""
    result: TrainResult = fit(cfg, train_ds, out_dir, resume=resume, class_names=class_names, **callbacks)
    ckpt = result.checkpoint
    add_novelty(ckpt, result.model, train_ds, cfg.seed)
    # Where the data came from, so calibrate, export, verify and field read it again by default
    # (and refuse it if the files changed).
    origins = {"train": fingerprint(train_ds.origin), "test": fingerprint(test_ds.origin)}
    ckpt["data"] = origins
    save_checkpoint(out_dir / "checkpoint.pt", ckpt)
    test_eval = evaluate_test(result.model, test_ds)
    metrics: dict[str, Any] = {
        "schema_version": 1, "class_names": list(ckpt["class_names"]),
        "test": {k: test_eval[k] for k in ("accuracy", "loss", "per_class_accuracy", "per_class_count",
                                            "confusion", "seed_protocol_accuracy", "seed_protocol_seed")},
        "train": {"seconds": result.seconds, "device": result.device, "epochs": len(result.history),
                  "best_epoch": ckpt["epoch"], "best_val_loss": ckpt["val_loss"], "config": cfg.to_dict(),
                  "environment": result.environment, "history": result.history},
        "data": {"train": train_ds.source, "train_sha256": train_ds.sha256, "test": test_ds.source,
                 "test_sha256": test_ds.sha256, "train_origin": origins["train"], "test_origin": origins["test"]},
    }
    atomic_write_json(out_dir / "metrics.json", metrics)
    rdir = out_dir / "report"
    report.loss_curves(result.history, rdir / "loss_curves.png")
    report.sample_images(test_ds.images[:32], test_eval["seed_images"], test_ds.labels[:32], rdir / "samples.png")
    report.confusion(np.array(test_eval["confusion"]), ckpt["class_names"], rdir / "confusion_matrix.png")
    holdout = holdout_from_checkpoint(ckpt, train_ds, str(out_dir / "checkpoint.pt"))
    metrics["gate"] = calibrate(out_dir, holdout=holdout, test=test_ds, gate_cfg=gate_cfg, ood_images=ood_images,
                                ood_name=ood_name, test_eval=test_eval,
                                holdout_rows=np.asarray(ckpt["split"]["holdout_indices"]))
    return json.loads(json.dumps(read_metrics(out_dir)))


def recalibrate(artifact: Path, gate_cfg: gate.GateConfig, *, train_csv: Path | None = None,
                test_csv: Path | None = None, idx_dir: Path | None = None, holdout_csv: Path | None = None,
                holdout_idx: Path | None = None, ood_data: Path | None = None) -> dict[str, Any]:
    """``lenet-tool calibrate``: re-fit ARTIFACT's gate on user-given held-out data or, by default,
    on the checkpoint's held-out split of the training data (read again from where it was
    recorded unless given); returns the gate metrics (see :func:`calibrate`)."""
    ckpt_path = artifact / "checkpoint.pt"
    ckpt = load_checkpoint(ckpt_path)
    if holdout_csv or holdout_idx:
        holdout = load_dataset(csv=holdout_csv, idx_dir=holdout_idx, split="train")
        split_info: dict[str, Any] = {"split": "user", "dataset_sha256": holdout.sha256}
        rows = None
        test = load_splits(None, test_csv, idx_dir, need_train=False, artifact=artifact, ckpt=ckpt)[1]
    else:
        train_ds, test = load_splits(train_csv, test_csv, idx_dir, artifact=artifact, ckpt=ckpt)
        holdout = holdout_from_checkpoint(ckpt, train_ds, str(ckpt_path))
        split_info = {"dataset_sha256": ckpt["split"]["dataset_sha256"]}
        rows = ckpt["split"]["holdout_indices"]
    ood_images = load_ood_images(ood_data) if ood_data else None
    return calibrate(artifact, holdout=holdout, test=test, gate_cfg=gate_cfg, ood_images=ood_images,
                     ood_name=str(ood_data) if ood_data else None, split_info=split_info, holdout_rows=rows)
