"""Compare an exported model's outputs with the PyTorch reference: every failure collected
into one report, with the tolerance that would have passed (as optimum and Polygraphy do)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Per-precision limits. ``near_threshold``: accept decisions whose reference confidence
    lies this close to the threshold may differ (a rounding difference flips them)."""

    logits_atol: float
    confidence_atol: float
    min_label_agreement: float
    min_accept_agreement: float
    near_threshold: float
    max_accuracy_drop: float
    #: Judge label agreement on the frames both sides accept (what a device acts on), not on all:
    #: for int8, where a frame near a tie between two classes flips with rounding (a 90% model has
    #: many) while the gate refuses such frames anyway. Accuracy and accept decisions still hold all.
    labels_on_accepted: bool = False


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(1e-4, 1e-5, 1.0, 1.0, 1e-5, 0.0),
    "fp16": Tolerance(5e-2, 5e-3, 0.999, 0.995, 5e-3, 0.001),
    # int8 moves confidences by a few hundredths: decisions within that band of the threshold can
    # go either way (a threshold in a dense part of the scores, as a 90% model's, has many there).
    "int8": Tolerance(2.0, 0.5, 0.995, 0.995, 0.05, 0.002, labels_on_accepted=True),
}


class ValidationError(ValueError):
    """An exported model disagrees with PyTorch beyond its tolerance."""

    def __init__(self, report: Report) -> None:
        self.report = report
        super().__init__(report.describe())


@dataclass
class Report:
    """What a comparison found, pass or fail."""

    name: str
    precision: str
    n: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    median_abs_logit_diff: float
    max_rel_logit_diff: float
    max_abs_confidence_diff: float
    floor_flips: int
    label_agreement: float
    accept_agreement: float
    accept_disagreements: int
    accept_disagreements_near_threshold: int
    accuracy_reference: float | None
    accuracy: float | None
    coverage_reference: float
    coverage: float
    selective_risk_reference: float | None
    selective_risk: float | None
    failures: list[str] = field(default_factory=list)
    would_pass: dict[str, float] = field(default_factory=dict)
    accepted_label_agreement: float | None = None  # labels on the frames both sides accept

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def describe(self) -> str:
        head = f"{self.name} ({self.precision}, {self.n} images): {'PASS' if self.passed else 'FAIL'}"
        lines = [head,
                 f"  logits |diff|: max {self.max_abs_logit_diff:.3g}, mean {self.mean_abs_logit_diff:.3g}, "
                 f"median {self.median_abs_logit_diff:.3g}, max rel {self.max_rel_logit_diff:.3g}",
                 f"  confidence |diff| max {self.max_abs_confidence_diff:.3g} ({self.floor_flips} refused outright on "
                 f"one side only); labels agree "
                 f"{100 * self.label_agreement:.3f}%" + ("" if self.accepted_label_agreement is None else
                                                         f" ({100 * self.accepted_label_agreement:.3f}% of accepted)") +
                 f"; accept decisions agree {100 * self.accept_agreement:.3f}% "
                 f"({self.accept_disagreements} differ, {self.accept_disagreements_near_threshold} of them within "
                 "the near-threshold margin)"]
        if self.accuracy is not None:
            lines.append(f"  accuracy {100 * self.accuracy:.2f}% (PyTorch {100 * self.accuracy_reference:.2f}%); "
                         f"coverage {100 * self.coverage:.2f}% (PyTorch {100 * self.coverage_reference:.2f}%); "
                         f"selective risk {100 * (self.selective_risk or 0):.3f}% "
                         f"(PyTorch {100 * (self.selective_risk_reference or 0):.3f}%)")
        for f in self.failures:
            lines.append(f"  FAILED: {f}")
        if self.failures:
            lines.append("  would have passed with: " + ", ".join(f"{k} {v:.3g}" for k, v in self.would_pass.items()))
        return "\n".join(lines)


def _gate(conf: np.ndarray, acc: np.ndarray, labels: np.ndarray | None, pred: np.ndarray) -> tuple[float, float | None]:
    cov = float(acc.mean())
    if labels is None or not acc.any():
        return cov, None
    return cov, float((pred[acc] != labels[acc]).mean())


def compare(name: str, precision: str, ref: dict[str, np.ndarray], got: dict[str, np.ndarray], threshold: float,
            labels: np.ndarray | None = None, tol: Tolerance | None = None) -> Report:
    """Shapes, then values, then labels and accept decisions, against ``tol`` (per precision).

    Always returns a :class:`Report`, passing or failing (a shape mismatch is a failing report
    with no numbers); whoever needs an exception raises :class:`ValidationError` with it.
    """
    tol = tol or TOLERANCES[precision]
    failures: list[str] = []
    n = int(len(ref["label"]))
    for k in ("logits", "confidence", "label", "accepted"):
        if np.shape(ref[k]) != np.shape(got[k]):
            failures.append(f"output {k!r} has shape {np.shape(got[k])}, PyTorch's is {np.shape(ref[k])}")
    if failures:
        return Report(name=name, precision=precision, n=n, max_abs_logit_diff=math.nan, mean_abs_logit_diff=math.nan,
                      median_abs_logit_diff=math.nan, max_rel_logit_diff=math.nan, max_abs_confidence_diff=math.nan,
                      floor_flips=0, label_agreement=0.0, accept_agreement=0.0, accept_disagreements=0,
                      accept_disagreements_near_threshold=0, accuracy_reference=None, accuracy=None,
                      coverage_reference=0.0, coverage=0.0, selective_risk_reference=None, selective_risk=None,
                      failures=failures)
    rl, gl = ref["logits"].astype(np.float64), got["logits"].astype(np.float64)
    d = np.abs(rl - gl)
    rel = d / np.maximum(np.abs(rl), 1e-6)
    # A score with an outright-refusal floor (msp-energy) is 0 on one side of it: a frame whose
    # energy lies within rounding of the floor jumps. Such flips are counted on their own (they
    # show in the accept decisions); the confidence tolerance applies where both sides agree.
    flips = (ref["confidence"] == 0) != (got["confidence"] == 0)
    dc = np.abs(ref["confidence"].astype(np.float64) - got["confidence"].astype(np.float64))[~flips]
    labels_agree = float((ref["label"] == got["label"]).mean())
    both = ref["accepted"].astype(bool) & got["accepted"].astype(bool)
    accepted_agree = float((ref["label"][both] == got["label"][both]).mean()) if both.any() else 1.0
    acc_diff = ref["accepted"] != got["accepted"]
    near = np.abs(ref["confidence"].astype(np.float64) - threshold) <= tol.near_threshold
    hard = acc_diff & ~near
    accept_agree = float(1 - acc_diff.mean())
    away_agree = float(1 - hard.sum() / max(int((~near).sum()), 1))
    cov_r, risk_r = _gate(ref["confidence"], ref["accepted"], labels, ref["label"])
    cov_g, risk_g = _gate(got["confidence"], got["accepted"], labels, got["label"])
    max_d = float(d.max()) if d.size else 0.0
    max_c = float(dc.max()) if dc.size else 0.0
    if not np.isfinite(gl).all():
        failures.append("logits hold NaN or infinite values")
    if max_d > tol.logits_atol:
        failures.append(f"max |logit difference| {max_d:.3g} > {tol.logits_atol:g}")
    if max_c > tol.confidence_atol:
        failures.append(f"max |confidence difference| {max_c:.3g} > {tol.confidence_atol:g}")
    if tol.labels_on_accepted:
        if accepted_agree < tol.min_label_agreement:
            failures.append(f"labels agree on {100 * accepted_agree:.3f}% of the frames both accept < "
                            f"{100 * tol.min_label_agreement:.3f}%")
    elif labels_agree < tol.min_label_agreement:
        failures.append(f"labels agree on {100 * labels_agree:.3f}% < {100 * tol.min_label_agreement:.3f}%")
    if tol.min_accept_agreement >= 1.0:
        if hard.any():
            failures.append(f"{int(hard.sum())} accept decisions differ away from the threshold "
                            f"(confidence more than {tol.near_threshold:g} from it)")
    elif tol.near_threshold > 0 and away_agree < tol.min_accept_agreement:
        failures.append(f"accept decisions agree on {100 * away_agree:.3f}% of the frames whose confidence is more "
                        f"than {tol.near_threshold:g} from the threshold < {100 * tol.min_accept_agreement:.3f}%")
    elif tol.near_threshold == 0 and accept_agree < tol.min_accept_agreement:
        failures.append(f"accept decisions agree on {100 * accept_agree:.3f}% < {100 * tol.min_accept_agreement:.3f}%")
    acc_ref = float((ref["label"] == labels).mean()) if labels is not None else None
    acc_got = float((got["label"] == labels).mean()) if labels is not None else None
    if acc_ref is not None and acc_got is not None and acc_ref - acc_got > tol.max_accuracy_drop + 1e-12:
        failures.append(f"accuracy drops by {100 * (acc_ref - acc_got):.3f} points > {100 * tol.max_accuracy_drop:g}")
    would = {"logits_atol": max_d, "confidence_atol": max_c,
             "min_label_agreement": accepted_agree if tol.labels_on_accepted else labels_agree,
             "min_accept_agreement": accept_agree}
    return Report(name=name, precision=precision, n=n, max_abs_logit_diff=max_d, mean_abs_logit_diff=float(d.mean()),
                  median_abs_logit_diff=float(np.median(d)), max_rel_logit_diff=float(rel.max()) if rel.size else 0.0,
                  max_abs_confidence_diff=max_c, floor_flips=int(flips.sum()), label_agreement=labels_agree,
                  accept_agreement=accept_agree, accept_disagreements=int(acc_diff.sum()),
                  accept_disagreements_near_threshold=int((acc_diff & near).sum()), accuracy_reference=acc_ref,
                  accuracy=acc_got, coverage_reference=cov_r, coverage=cov_g, selective_risk_reference=risk_r,
                  selective_risk=risk_g, failures=failures, would_pass=would, accepted_label_agreement=accepted_agree)
