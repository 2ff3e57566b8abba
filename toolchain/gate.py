"""The confidence gate: scores, temperature scaling, the notebook's rule, and a
threshold with a guaranteed selective risk.

``accepted = confidence >= threshold``. A calibration is a JSON-able dict holding the
method, the score and every parameter the score needs; :func:`confidence` computes the
score from logits with torch ops only, so the same code runs in training, in reports and
inside the exported ONNX graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

CALIBRATION_SCHEMA = 1
METHODS = ("guaranteed", "seed")
SCORES = ("msp-energy", "msp", "energy", "maxlogit")
DEFAULT_SCORE = "msp-energy"
#: Percentile of the score-fitting split's energies below which ``msp-energy`` refuses outright.
#: 4.5 kept unseen letters at or under 1% accepted on 9 of 10 models (0.71% on the default; at 3.0,
#: 5 of 7 were over) for about 1.3 points of certified coverage (README, gate section).
DEFAULT_ENERGY_FLOOR = 4.5
#: Percentile of the score-fitting split's novelty residuals above which ``msp-energy`` refuses outright.
DEFAULT_NOVELTY_CEILING = 99.9
SCORE_DEFINITIONS = {
    "msp": "max over classes of softmax(logits / temperature)",
    "msp-energy": "max over classes of softmax(logits / temperature) where temperature * logsumexp(logits / "
                  "temperature) >= energy_floor and (if the model has one) the frame's novelty residual <= "
                  "novelty_ceiling, else 0",
    "energy": "sigmoid((temperature * logsumexp(logits / temperature) - center) / scale)",
    "maxlogit": "sigmoid((max over classes of logits - center) / scale)",
    "seed-minmax": "max over classes of (logit_c - logit_min_c) / (logit_max_c - logit_min_c), clipped to [0, 1]",
}


class GateError(ValueError):
    """The gate cannot be fitted as asked (bad options or data)."""


class CertificationError(GateError):
    """No threshold can be certified for the asked risk on the data given (a failed check)."""


# --------------------------------------------------------------------------- scores

def confidence(logits: torch.Tensor, calib: dict[str, Any], novelty: torch.Tensor | None = None) -> torch.Tensor:
    """The calibrated gate score in [0, 1] for ``logits (N, C)``, per ``calib``.

    ``novelty`` ``(N,)``: the frames' novelty residuals, needed when ``calib`` has a
    ``novelty_ceiling``.
    """
    score = calib["score"]
    if score == "seed-minmax":
        lo = torch.tensor(calib["logit_min"], dtype=logits.dtype, device=logits.device)
        hi = torch.tensor(calib["logit_max"], dtype=logits.dtype, device=logits.device)
        z = (logits - lo) / (hi - lo)
        return z.amax(dim=1).clamp(0.0, 1.0)
    t = float(calib["temperature"])
    if score == "msp":
        return torch.softmax(logits / t, dim=1).amax(dim=1)
    if score == "msp-energy":
        # The softmax ranks the model's own mistakes well but is blind to how much evidence
        # there is; the energy (a log-sum-exp of the logits) is low for frames unlike any digit.
        # Frames with less evidence than nearly all held-out digits are refused outright.
        msp = torch.softmax(logits / t, dim=1).amax(dim=1)
        energy = t * torch.logsumexp(logits / t, dim=1)
        keep = energy >= float(calib["energy_floor"])
        if calib.get("novelty_ceiling") is not None:
            # Frames far from the training frames' principal subspace (clothing, say) can still
            # score high with the network; the pixels themselves show they are no digit.
            if novelty is None:
                raise GateError("this gate refuses frames by their novelty residual: expected the residuals "
                                "(a model with a novelty basis) along with the logits")
            keep = keep & (novelty.to(logits.dtype) <= float(calib["novelty_ceiling"]))
        return torch.where(keep, msp, torch.zeros_like(msp))
    if score == "energy":
        raw = t * torch.logsumexp(logits / t, dim=1)
    elif score == "maxlogit":
        raw = logits.amax(dim=1)
    else:
        raise GateError(f"score {score!r}: expected one of {', '.join(SCORES)} or seed-minmax")
    return torch.sigmoid((raw - float(calib["center"])) / float(calib["scale"]))


def confidence_np(logits: np.ndarray, calib: dict[str, Any], novelty: np.ndarray | None = None) -> np.ndarray:
    """:func:`confidence` for numpy logits (computed in float64)."""
    nov = None if novelty is None else torch.from_numpy(np.asarray(novelty, dtype=np.float64))
    return confidence(torch.from_numpy(np.asarray(logits, dtype=np.float64)), calib, nov).numpy()


def _logsumexp(z: np.ndarray) -> np.ndarray:
    """Row-wise log-sum-exp, shifted by the row maximum so it cannot overflow."""
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


# --------------------------------------------------------------------------- temperature

def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``softmax(logits / T)``."""
    z = logits.astype(np.float64) / temperature
    return float(np.mean(_logsumexp(z) - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising held-out NLL (golden-section search on log T in [-4, 4]).

    NLL is convex in 1/T, hence unimodal in log T, so golden-section search finds the
    optimum without gradients or SciPy.
    """
    a, b = -4.0, 4.0
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(logits, labels, math.exp(c)), nll(logits, labels, math.exp(d))
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(logits, labels, math.exp(d))
    return math.exp((a + b) / 2)


# --------------------------------------------------------------------------- binomial bound

_LOG_FACT = np.zeros(1)


def _log_factorials(n: int) -> np.ndarray:
    """log(k!) for k = 0..n, cached and grown on demand."""
    global _LOG_FACT
    if len(_LOG_FACT) <= n:
        _LOG_FACT = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, 2 * n + 2, dtype=np.float64)))))
    return _LOG_FACT


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (exact to float precision)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lf = _log_factorials(n)
    i = np.arange(k + 1)
    terms = lf[n] - lf[i] - lf[n - i] + i * math.log(p) + (n - i) * math.log1p(-p)
    m = terms.max()
    return float(min(1.0, math.exp(m) * np.exp(terms - m).sum()))


def binomial_upper_bound(errors: int, n: int, delta: float) -> float:
    """One-sided Clopper-Pearson upper bound on an error rate.

    The p with ``P(Binomial(n, p) <= errors) = delta``: with probability at least
    ``1 - delta`` the true rate is below it. Found by bisection to 1e-15.
    """
    if n <= 0:
        return 1.0
    if errors >= n:
        return 1.0
    lo, hi = errors / n, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if binom_cdf(errors, n, mid) > delta:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return hi


@dataclass(frozen=True)
class Certificate:
    """A threshold and what was certified for it on the fitting data."""

    threshold: float
    bound: float
    accepted: int
    errors: int
    n: int
    tests: int

    @property
    def coverage(self) -> float:
        return self.accepted / self.n

    @property
    def risk(self) -> float:
        return self.errors / self.accepted if self.accepted else 0.0


def certify_threshold(scores: np.ndarray, correct: np.ndarray, target_risk: float, delta: float) -> Certificate:
    """Selection with guaranteed risk (Geifman & El-Yaniv, 2017).

    Binary search over the sorted scores for the lowest threshold whose Clopper-Pearson
    bound on the selective risk is at most ``target_risk``; each of the at most
    ``floor(log2 n) + 1`` tests runs at ``delta`` divided by that number, so by the union bound, with probability at
    least ``1 - delta`` over the draw of the (exchangeable) fitting data, the risk among
    accepted future inputs is at most ``target_risk``.

    Raises:
        GateError: no tested threshold can be certified (the data is too small or the
            model too weak for the asked risk).
    """
    _check_risk_delta(target_risk, delta)
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = len(scores)
    if n < 2:
        raise GateError(f"{n} held-out examples: expected at least 2 to fit a threshold")
    asc = np.sort(scores)
    desc_err = (~correct)[np.argsort(-scores, kind="stable")]
    cum_err = np.concatenate(([0], np.cumsum(desc_err)))
    tests = int(math.floor(math.log2(n))) + 1  # the most probes a binary search over n can make
    d = delta / tests
    lo, hi = 0, n - 1
    best: Certificate | None = None
    while lo <= hi:
        z = (lo + hi) // 2
        theta = float(asc[z])
        k = int(n - np.searchsorted(asc, theta, side="left"))  # scores >= theta (ties included)
        e = int(cum_err[k])
        b = binomial_upper_bound(e, k, d)
        if b <= target_risk:
            if best is None or theta < best.threshold:
                best = Certificate(theta, b, k, e, n, tests)
            hi = z - 1  # certified: try a lower threshold (more coverage)
        else:
            lo = z + 1
    if best is None:
        floor = binomial_upper_bound(0, n, d)
        raise CertificationError(
            f"cannot certify a selective risk of {target_risk} at delta {delta} with {n} held-out "
            f"examples: no threshold passed (even with no errors, {n} examples certify no less than "
            f"{floor:.4g}); raise --target-risk or --delta, or hold out more data"
        )
    return best


def certify_fixed_sequence(scores: np.ndarray, correct: np.ndarray, thresholds: np.ndarray,
                           target_risk: float, delta: float) -> Certificate:
    """Learn-then-Test with fixed-sequence testing (Angelopoulos et al., 2021).

    ``thresholds`` must be chosen without looking at ``scores``/``correct`` (here: from
    a separate part of the held-out data) and ordered from the most conservative down.
    Each is tested in turn at level ``delta`` (null: selective risk > ``target_risk``,
    rejected when the Clopper-Pearson bound is at most the target); testing stops at the
    first failure. Fixed-sequence testing controls the family-wise error at ``delta``
    without a Bonferroni split, so the bound is tighter than :func:`certify_threshold`'s.

    Raises:
        GateError: the first threshold already fails.
    """
    _check_risk_delta(target_risk, delta)
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = len(scores)
    asc_idx = np.argsort(scores, kind="stable")
    asc = scores[asc_idx]
    err_from_top = np.concatenate(([0], np.cumsum((~correct[asc_idx])[::-1])))
    best: Certificate | None = None
    for i, theta in enumerate(np.asarray(thresholds, dtype=np.float64)):
        k = int(n - np.searchsorted(asc, theta, side="left"))
        e = int(err_from_top[k])
        b = binomial_upper_bound(e, k, delta)
        if b > target_risk:
            break
        best = Certificate(float(theta), b, k, e, n, i + 1)
    if best is None:
        raise CertificationError(
            f"cannot certify a selective risk of {target_risk} at delta {delta} with {n} held-out "
            f"examples: the first threshold of the sequence already fails (even with no errors, {n} "
            f"examples certify no less than {binomial_upper_bound(0, n, delta):.4g}); raise "
            "--target-risk or --delta, or hold out more data"
        )
    return best


def _check_risk_delta(target_risk: float, delta: float) -> None:
    if not 0.0 < target_risk < 1.0:
        raise GateError(f"target risk {target_risk}: expected a value in (0, 1)")
    if not 0.0 < delta < 1.0:
        raise GateError(f"delta {delta}: expected a value in (0, 1)")


def threshold_grid(scores: np.ndarray, start_coverage: float = 0.5, step: float = 0.001) -> np.ndarray:
    """Thresholds at coverages start, start+step, ... 1 of ``scores``, most conservative first."""
    cov = np.arange(start_coverage, 1.0 + 1e-12, step)
    return np.quantile(np.asarray(scores, dtype=np.float64), np.clip(1.0 - cov, 0.0, 1.0), method="higher")


# --------------------------------------------------------------------------- fitting

def fit_seed_rule(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The notebook's rule: per-class min-max normalised logits, max over classes;
    threshold midway between (mean - std) of correct scores and (mean + std) of wrong ones."""
    calib: dict[str, Any] = {
        "method": "seed", "score": "seed-minmax", "score_definition": SCORE_DEFINITIONS["seed-minmax"],
        "logit_min": logits.min(axis=0).astype(float).tolist(),
        "logit_max": logits.max(axis=0).astype(float).tolist(),
    }
    s = confidence_np(logits, calib)
    ok = logits.argmax(1) == labels
    if ok.all() or not ok.any():
        raise GateError("the seed rule needs both correct and wrong predictions on the held-out data")
    lo = s[ok].mean() - s[ok].std()
    hi = s[~ok].mean() + s[~ok].std()
    calib["threshold"] = float((lo + hi) / 2)
    return calib


def split_for_scoring(n: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of held-out indices into (score-fitting, certification) parts."""
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(n * fraction))
    return np.sort(perm[:k]), np.sort(perm[k:])


def fit_guaranteed(logits: np.ndarray, labels: np.ndarray, *, target_risk: float, delta: float,
                   score: str = DEFAULT_SCORE, search: str = "ltt", score_fit_fraction: float = 0.1,
                   energy_floor: float = DEFAULT_ENERGY_FLOOR, novelty: np.ndarray | None = None,
                   novelty_ceiling: float = DEFAULT_NOVELTY_CEILING) -> dict[str, Any]:
    """Temperature scaling by NLL, then a threshold with a certified selective risk.

    The held-out data is split once (by default 10%/90%): ``score_fit_fraction`` of it fits the score (the
    temperature, and for energy/max-logit the squashing constants) and, for ``ltt``, the
    grid of candidate thresholds; the rest certifies the threshold. The score is so fixed
    before the certifying data is looked at, as the guarantee requires. For ``msp-energy``
    the energy floor and (given the frames' ``novelty`` residuals) the novelty ceiling are
    percentiles of the score-fitting part too.
    """
    _check_risk_delta(target_risk, delta)
    if score not in SCORES:
        raise GateError(f"score {score!r}: expected one of {', '.join(SCORES)}")
    if search not in ("ltt", "sgr"):
        raise GateError(f"search {search!r}: expected 'ltt' (fixed-sequence) or 'sgr' (binary search)")
    fit_idx, cert_idx = split_for_scoring(len(labels), score_fit_fraction)
    if len(fit_idx) < 100 or len(cert_idx) < 100:
        raise GateError(f"{len(labels)} held-out examples are too few to fit a score and certify a threshold: "
                        "expected at least 500")
    lf, yf = logits[fit_idx], labels[fit_idx]
    t = fit_temperature(lf, yf)
    calib: dict[str, Any] = {"method": "guaranteed", "score": score, "score_definition": SCORE_DEFINITIONS[score],
                             "temperature": t}
    if score == "msp-energy":
        if not 0.0 <= energy_floor < 100.0:
            raise GateError(f"energy floor {energy_floor}: expected a percentile in [0, 100)")
        calib["energy_floor"] = float(np.percentile(t * _logsumexp(lf / t), energy_floor))
        calib["energy_floor_percentile"] = energy_floor
        if not 0.0 < novelty_ceiling <= 100.0:
            raise GateError(f"novelty ceiling {novelty_ceiling}: expected a percentile in (0, 100]")
        if novelty is not None and novelty_ceiling < 100.0:
            calib["novelty_ceiling"] = float(np.percentile(novelty[fit_idx], novelty_ceiling))
            calib["novelty_ceiling_percentile"] = novelty_ceiling
    if score in ("energy", "maxlogit"):
        raw = t * _logsumexp(lf / t) if score == "energy" else lf.max(axis=1)
        # Centre and scale only squash the raw score into [0, 1]; the ranking (so the gate) is unchanged.
        calib["center"] = float(np.median(raw))
        calib["scale"] = float(max(np.std(raw), 1e-6))
    nov_f = None if novelty is None else novelty[fit_idx]
    nov_c = None if novelty is None else novelty[cert_idx]
    lc, yc = logits[cert_idx], labels[cert_idx]
    s = confidence_np(lc, calib, nov_c)
    ok = lc.argmax(1) == yc
    if search == "ltt":
        grid = threshold_grid(confidence_np(lf, calib, nov_f))
        cert = certify_fixed_sequence(s, ok, grid, target_risk, delta)
    else:
        cert = certify_threshold(s, ok, target_risk, delta)
    calib.update(threshold=cert.threshold, target_risk=target_risk, delta=delta, search=search,
                 certified_bound=cert.bound, tests=cert.tests,
                 certification={"n": cert.n, "accepted": cert.accepted, "errors": cert.errors},
                 score_fit={"n": len(fit_idx), "fraction": score_fit_fraction})
    return calib


def fit_gate(method: str, logits: np.ndarray, labels: np.ndarray, *, target_risk: float = 0.002,
             delta: float = 0.05, score: str = DEFAULT_SCORE, search: str = "ltt",
             energy_floor: float = DEFAULT_ENERGY_FLOOR, novelty: np.ndarray | None = None,
             novelty_ceiling: float = DEFAULT_NOVELTY_CEILING,
             split: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit a gate of ``method`` on held-out ``logits``/``labels`` (and the frames' novelty
    residuals, when the model has a novelty basis); returns calibration.json's content."""
    if method not in METHODS:
        raise GateError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if method == "seed":
        calib = fit_seed_rule(logits, labels)
    else:
        calib = fit_guaranteed(logits, labels, target_risk=target_risk, delta=delta, score=score, search=search,
                               energy_floor=energy_floor, novelty=novelty, novelty_ceiling=novelty_ceiling)
    st = gate_stats(confidence_np(logits, calib, novelty), logits.argmax(1) == labels, calib["threshold"])
    calib["fit"] = {"n": len(labels), "coverage": st["coverage"], "selective_risk": st["selective_risk"],
                    **(split or {})}
    return {"schema_version": CALIBRATION_SCHEMA, **calib}


# --------------------------------------------------------------------------- measures

def gate_stats(conf: np.ndarray, correct: np.ndarray, threshold: float) -> dict[str, float]:
    """Coverage and selective risk (error rate among accepted) at ``threshold``."""
    acc = conf >= threshold
    n_acc = int(acc.sum())
    return {"coverage": float(acc.mean()) if len(acc) else 0.0,
            "selective_risk": float((~correct[acc]).mean()) if n_acc else 0.0,
            "accepted": n_acc, "errors": int((~correct[acc]).sum())}


def ece(probs: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top-class probability, ``bins`` equal-width bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(probs, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - probs[m].mean())
    return float(total)


def risk_coverage(conf: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, selective risk) when accepting the k most confident inputs, k = 1..n."""
    order = np.argsort(-conf, kind="stable")
    err = np.cumsum(~correct[order])
    k = np.arange(1, len(conf) + 1)
    return k / len(conf), err / k


def aurc(conf: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve (lower is better)."""
    _, risk = risk_coverage(conf, correct)
    return float(risk.mean())


def softmax_np(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row softmax of ``logits / temperature`` in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    return np.exp(z - _logsumexp(z)[:, None])

