"""The confidence gate: scores, temperature scaling, the notebook's rule, and a
threshold with a guaranteed selective risk.

``accepted = confidence >= threshold``. A calibration is a JSON-able dict holding the
method, the score and every parameter the score needs; :func:`confidence` computes the
score from logits with torch ops only, so the same code runs in training, in reports and
inside the exported ONNX graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where a score is computed: the CLI reads this module's defaults
    import torch  # for every command, 'serve' and 'info' included, and torch costs 2 s to import

CALIBRATION_SCHEMA = 1
METHODS = ("guaranteed", "seed")
SCORES = ("msp-energy", "msp", "energy", "maxlogit")
DEFAULT_SCORE = "msp-energy"
#: Percentile of the score-fitting split's energies below which ``msp-energy`` refuses outright.
#: 4.5 kept unseen letters at or under 1% accepted on 9 of 10 models (0.71% on the default; at 3.0,
#: 5 of 7 were over) for about 1.3 points of certified coverage (docs/gate.md).
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


#: Selective risks the gate falls back to, lowest first, when the asked one cannot be
#: certified (unless ``strict_risk``): MNIST's 0.2% is one dataset's number, not a law.
RISK_LADDER = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
#: Frames each part of the held-out split needs: the score-fitting part and the certifying part.
MIN_PART = 100
#: A fallback rung's threshold is planned where the certifying part is expected to reach this
#: share of the rung (see :func:`plan_ladder`).
PLAN_MARGIN = 0.5
#: The rung walked at is the lowest whose first test the score-fitting part predicts to pass with
#: at least this probability (see :func:`pass_probability`).
PLAN_PASS = 0.25
#: ... and, walking at the asked rung, a larger rung's pair the lowest threshold it predicts to pass with this.
PAIR_PASS = 0.99


@dataclass(frozen=True)
class GateConfig:
    """How the gate is fitted: one object, built once (CLI options or code), taken by the library.

    ``strict_risk``: fail (:class:`CertificationError`) when ``target_risk`` cannot be
    certified or the held-out data is too small, instead of certifying the lowest rung of
    :data:`RISK_LADDER` that can be, or falling back to the uncertified empirical rule.
    """

    method: str = "guaranteed"
    score: str = DEFAULT_SCORE
    search: str = "ltt"
    target_risk: float = 0.002
    delta: float = 0.05
    energy_floor: float = DEFAULT_ENERGY_FLOOR
    novelty_ceiling: float = DEFAULT_NOVELTY_CEILING
    strict_risk: bool = False
    score_fit_fraction: float = 0.1
    #: Where a digit has several held-out frames (a field model's), certify with one of each
    #: (:func:`split_for_scoring`): independent draws, as the bound assumes; half the certifying
    #: frames, so less coverage and far more spread between divisions (docs/gate.md).
    one_frame_per_digit: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise GateError(f"method {self.method!r}: expected one of {', '.join(METHODS)}")
        if self.score not in SCORES:
            raise GateError(f"score {self.score!r}: expected one of {', '.join(SCORES)}")
        if self.search not in ("ltt", "sgr"):
            raise GateError(f"search {self.search!r}: expected 'ltt' (fixed-sequence) or 'sgr' (binary search)")
        _check_risk_delta(self.target_risk, self.delta)
        if not 0.0 <= self.energy_floor < 100.0:
            raise GateError(f"energy floor {self.energy_floor}: expected a percentile in [0, 100)")
        if not 0.0 < self.novelty_ceiling <= 100.0:
            raise GateError(f"novelty ceiling {self.novelty_ceiling}: expected a percentile in (0, 100]")
        if not 0.0 < self.score_fit_fraction < 1.0:
            raise GateError(f"score-fit fraction {self.score_fit_fraction}: expected a value in (0, 1)")

    def with_(self, **changes: Any) -> GateConfig:
        """A copy with ``changes`` (validated again)."""
        return replace(self, **changes)

    @property
    def rungs(self) -> tuple[float, ...]:
        """The risks this gate may certify, the asked one first."""
        if self.strict_risk:
            return (self.target_risk,)
        return (self.target_risk,) + tuple(r for r in RISK_LADDER if r > self.target_risk * (1 + 1e-9))


def min_holdout(fraction: float) -> int:
    """The fewest held-out frames whose seeded split leaves :data:`MIN_PART` in each part."""
    n = 2 * MIN_PART
    while True:  # terminates: fraction is in (0, 1), so both parts grow without bound
        k = int(round(n * fraction))
        if k >= MIN_PART and n - k >= MIN_PART:
            return n
        n += 1


# --------------------------------------------------------------------------- scores

def logsumexp_rows(z: torch.Tensor) -> torch.Tensor:
    """Row-wise log-sum-exp of ``z (N, C)`` from basic ops (max, exp, sum, log), shifted by the row
    maximum so it cannot overflow.

    Not ``torch.logsumexp``: that exports as ONNX ``ReduceLogSumExp``, which OpenVINO 2026.4 computes
    over the whole tensor when the axes come as the opset-17 attribute (one energy for a whole
    batch, so the energy floor passed every frame of it: 3.1% of MNIST test frames accepted that
    ONNX Runtime refuses). Max, exp, sum and log mean the same on every runtime.
    """
    import torch

    m = z.amax(dim=1, keepdim=True)
    return (m + torch.log(torch.exp(z - m).sum(dim=1, keepdim=True))).squeeze(1)


def confidence(logits: torch.Tensor, calib: dict[str, Any], novelty: torch.Tensor | None = None) -> torch.Tensor:
    """The calibrated gate score in [0, 1] for ``logits (N, C)``, per ``calib``.

    ``novelty`` ``(N,)``: the frames' novelty residuals, needed when ``calib`` has a
    ``novelty_ceiling``.
    """
    import torch

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
        energy = t * logsumexp_rows(logits / t)
        keep = energy >= float(calib["energy_floor"])
        if calib.get("novelty_ceiling") is not None:
            # Frames far from the training frames' principal subspace (clothing, say) can still
            # score high with the network; the pixels themselves show they are no digit.
            if novelty is None:
                raise GateError("this gate refuses frames by their novelty residual: expected the residuals "
                                "(a model with a novelty basis) along with the logits")
            keep = keep & (novelty.to(logits.dtype) <= float(calib["novelty_ceiling"]))
        return msp * keep.to(msp.dtype)  # the same as a where(), in two graph nodes fewer
    if score == "energy":
        raw = t * logsumexp_rows(logits / t)
    elif score == "maxlogit":
        raw = logits.amax(dim=1)
    else:
        raise GateError(f"score {score!r}: expected one of {', '.join(SCORES)} or seed-minmax")
    return torch.sigmoid((raw - float(calib["center"])) / float(calib["scale"]))


def confidence_np(logits: np.ndarray, calib: dict[str, Any], novelty: np.ndarray | None = None) -> np.ndarray:
    """:func:`confidence` for numpy logits (computed in float64)."""
    import torch

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


def split_for_scoring(n: int, fraction: float, seed: int = 0, groups: np.ndarray | None = None,
                      one_per_group: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of held-out indices into (score-fitting, certification) parts.

    With ``groups`` (int ``(n,)``: the held-out digit each frame shows, its raw frame and its
    camera rendering alike), the split is by digit: ``fraction`` of the digits fit the score,
    the others certify, each with all of its frames, or with ``one_per_group`` with one of them
    picked by a seeded coin. A digit's key and coin are drawn by its id, so a frame that leaves
    the set (a rendering the preprocessing refuses) moves no other frame, and no digit is on
    both sides. Two frames of one digit are no independent draws (a mislabelled digit is wrong,
    and sure, in both), which the certificate's binomial bound assumes: only one frame a digit
    makes its draws independent (:attr:`GateConfig.one_frame_per_digit`).
    """
    if groups is None:
        perm = np.random.default_rng(seed).permutation(n)
        k = int(round(n * fraction))
        return np.sort(perm[:k]), np.sort(perm[k:])
    groups = np.asarray(groups, dtype=np.int64)
    if groups.shape != (n,) or (n and groups.min() < 0):
        raise GateError(f"groups of shape {groups.shape}: expected ({n},) non-negative digit ids")
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    # Row by row, so digit d's (key, coin) is the same whatever the largest id.
    key, coin = np.random.default_rng(seed).random((int(groups.max()) + 1, 2)).T
    fit = key[groups] < fraction
    cert = np.flatnonzero(~fit)
    if one_per_group:
        cert = cert[np.argsort(groups[cert], kind="stable")]
        g = groups[cert]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        counts = np.diff(np.r_[starts, len(g)])
        cert = np.sort(cert[starts + (coin[g[starts]] * counts).astype(np.int64)])
    return np.flatnonzero(fit), cert


def _fit_score(logits: np.ndarray, labels: np.ndarray, cfg: GateConfig,
               novelty: np.ndarray | None) -> dict[str, Any]:
    """The score's parameters (temperature, energy floor, novelty ceiling, squashing), fitted on these frames."""
    t = fit_temperature(logits, labels)
    score = cfg.score
    calib: dict[str, Any] = {"score": score, "score_definition": SCORE_DEFINITIONS[score], "temperature": t}
    if score == "msp-energy":
        calib["energy_floor"] = float(np.percentile(t * _logsumexp(logits / t), cfg.energy_floor))
        calib["energy_floor_percentile"] = cfg.energy_floor
        if novelty is not None and cfg.novelty_ceiling < 100.0:
            calib["novelty_ceiling"] = float(np.percentile(novelty, cfg.novelty_ceiling))
            calib["novelty_ceiling_percentile"] = cfg.novelty_ceiling
    if score in ("energy", "maxlogit"):
        raw = t * _logsumexp(logits / t) if score == "energy" else logits.max(axis=1)
        # Centre and scale only squash the raw score into [0, 1]; the ranking (so the gate) is unchanged.
        calib["center"] = float(np.median(raw))
        calib["scale"] = float(max(np.std(raw), 1e-6))
    return calib


def pass_probability(e_fit: int, k_fit: int, k_cert: int, rung: float, delta: float) -> float:
    """The probability that ``k_cert`` certifying frames err few enough times for their
    Clopper-Pearson bound to reach ``rung``, predicted from ``e_fit`` errors among ``k_fit``
    score-fitting frames: the beta-binomial predictive of the error count under the error
    rate's Jeffreys posterior, Beta(e_fit + 1/2, k_fit - e_fit + 1/2).

    A point estimate (``e_fit / k_fit``) would take two errors among a thousand frames for a
    rate, although the rate could as well be a fifth of that or three times it."""
    if k_cert <= 0 or k_fit <= 0:
        return 0.0
    # The bound reaches the rung exactly when P(Binomial(k_cert, rung) <= e) <= delta.
    m = min(k_cert, int(k_cert * rung + 10.0 * math.sqrt(k_cert * rung) + 10))
    lf = _log_factorials(k_cert)
    j = np.arange(m + 1)
    i = j.astype(np.float64)
    log_choose = lf[k_cert] - lf[j] - lf[k_cert - j]
    log_pmf = log_choose + i * math.log(rung) + (k_cert - i) * math.log1p(-rung)
    most = int(np.searchsorted(np.cumsum(np.exp(log_pmf)), delta, side="right")) - 1
    if most < 0:
        return 0.0
    a, b = e_fit + 0.5, k_fit - e_fit + 0.5
    e = i[:most + 1]
    # log Gamma(e + a) - log Gamma(a) and log Gamma(k_cert - e + b) - log Gamma(k_cert + b), as running sums.
    up = np.concatenate(([0.0], np.cumsum(np.log(a + e[:-1]))))
    down = -np.concatenate(([0.0], np.cumsum(np.log(k_cert + b - 1.0 - e[:-1]))))
    # The pmf's Gamma(a) from ``up`` cancels the one of B(a, b).
    log_bb = (log_choose[:most + 1] + up + down + math.lgamma(k_cert + b) - math.lgamma(k_cert + a + b)
              - math.lgamma(b) + math.lgamma(a + b))
    return float(min(1.0, np.exp(log_bb).sum()))


def plan_ladder(fit_scores: np.ndarray, fit_ok: np.ndarray, thresholds: np.ndarray, n_cert: int,
                rungs: tuple[float, ...], delta: float,
                walk_pass: float | None = PLAN_PASS) -> tuple[list[tuple[float, float]], float]:
    """The fixed sequence :func:`certify_ladder` tests, planned from the score-fitting part only.

    The walk rung is the lowest rung whose test at the most conservative threshold the
    score-fitting part predicts to pass with probability :data:`PLAN_PASS`
    (:func:`pass_probability`). Every larger rung is paired with a threshold, so that where the
    certifying data disappoints the gate falls back to a larger risk at a useful coverage rather
    than to the first threshold: walking at the asked (lowest) rung, the lowest threshold that the
    pair is predicted to pass with :data:`PAIR_PASS` (a pair that fails ends the sequence before
    the walk); walking at a larger rung already, the lowest threshold at which the fit part's
    error rate, taken as the certifying part's, gives a Clopper-Pearson bound of
    :data:`PLAN_MARGIN` of the rung, with all thresholds above it. ``walk_pass=None`` plans as
    before this rule: the walk rung from that error rate too, and every pair at the margin.
    Looking only at the score-fitting part keeps the plan independent of the data that
    certifies, as the fixed-sequence guarantee requires.

    Returns ([(rung, threshold), ...] largest rung first, walk rung).
    """
    fit_scores = np.asarray(fit_scores, dtype=np.float64)
    wrong = ~np.asarray(fit_ok, dtype=bool)
    top = max(rungs)
    # How many fit frames each threshold accepts, and how many of them err (the surest first).
    accepted = len(fit_scores) - np.searchsorted(np.sort(fit_scores), np.asarray(thresholds, dtype=np.float64))
    errors_above = np.concatenate(([0], np.cumsum(wrong[np.argsort(-fit_scores, kind="stable")])))

    def counts(j: int) -> tuple[int, int, int]:
        """At threshold j: the fit part's errors and accepted frames, and the certifying frames
        expected to be accepted."""
        k = int(accepted[j])
        return int(errors_above[k]), k, max(1, int(round(k / len(fit_scores) * n_cert)))

    def expected_bound(j: int) -> float:
        """The bound the certifying part reaches at threshold j if it errs at the fit part's rate."""
        e, k, k_cert = counts(j)
        return 1.0 if k == 0 else binomial_upper_bound(int(round(e / k * k_cert)), k_cert, delta)

    if walk_pass is None:
        walk = next((r for r in sorted(rungs) if expected_bound(0) <= r), top)
    else:
        walk = next((r for r in sorted(rungs) if pass_probability(*counts(0), r, delta) >= walk_pass), top)
    # Walking at the asked rung, the larger rungs' pairs are insurance, for a walk whose first
    # test fails; each can end the sequence before the walk, so each goes where the fit part
    # predicts it to pass with PAIR_PASS. Walking at a larger rung already, they are planned for
    # coverage, at half the rung.
    insurance = walk_pass is not None and walk == min(rungs)
    expected: list[float] = []
    if not insurance:
        for j in range(len(thresholds)):
            expected.append(expected_bound(j))
            if expected[-1] > PLAN_MARGIN * top:  # no planned pair stops here or below
                break
    plan = []
    for r in sorted((r for r in rungs if r > walk), reverse=True):
        j = 0
        if insurance:
            while j + 1 < len(thresholds) and pass_probability(*counts(j + 1), r, delta) >= PAIR_PASS:
                j += 1
        else:
            # Half the rung: a planned pair that fails ends the sequence before the walk.
            while j + 1 < len(expected) and expected[j + 1] <= PLAN_MARGIN * r:
                j += 1
        plan.append((r, float(thresholds[j])))
    return plan, walk


def certify_ladder(scores: np.ndarray, correct: np.ndarray, thresholds: np.ndarray,
                   plan: list[tuple[float, float]], walk_rung: float, delta: float) -> tuple[Certificate, float]:
    """Fixed-sequence testing over (risk, threshold) pairs; returns the certificate and its risk.

    The sequence, fixed before ``scores`` are looked at (:func:`plan_ladder`): each
    (rung, threshold) of ``plan``, then ``thresholds`` one by one at ``walk_rung``. Every test
    runs at ``delta`` and testing stops at the first failure, so (Learn-then-Test) with
    probability at least ``1 - delta`` the returned threshold's selective risk is at most the
    returned rung. With an empty plan this is :func:`certify_fixed_sequence`.

    Raises:
        CertificationError: the sequence's first test already fails.
    """
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    passed: tuple[Certificate, float] | None = None
    for i, (risk, theta) in enumerate(plan, 1):
        acc = scores >= theta
        k, e = int(acc.sum()), int((~correct[acc]).sum())
        bound = binomial_upper_bound(e, k, delta)
        if bound > risk:
            if passed is None:
                raise CertificationError(
                    f"cannot certify a selective risk of even {risk} at delta {delta} with {len(scores)} held-out "
                    f"examples: the threshold planned for it errs on {e} of the {k} frames it accepts "
                    f"(bound {bound:.4g})")
            return passed
        passed = Certificate(float(theta), bound, k, e, len(scores), i), risk
    try:
        cert = certify_fixed_sequence(scores, correct, thresholds, walk_rung, delta)
    except CertificationError:
        if passed is None:
            raise
        return passed
    return Certificate(cert.threshold, cert.bound, cert.accepted, cert.errors, cert.n, cert.tests + len(plan)), walk_rung


def empirical_threshold(scores: np.ndarray, correct: np.ndarray, risk: float) -> float:
    """The lowest threshold whose selective risk on these frames is at most ``risk`` (no guarantee).

    Ties are kept together (a threshold accepts every frame at or above it); where even the
    most confident frames err more often, the threshold lies above every score.
    """
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    err = np.cumsum(~np.asarray(correct, dtype=bool)[order])
    k = np.arange(1, len(s) + 1)
    boundary = np.append(s[1:] < s[:-1], True)  # k frames accepted only where the next score is lower
    ok = np.flatnonzero(boundary & (err <= risk * k))
    if not len(ok):
        return float(np.nextafter(s[0], np.inf)) if len(s) else 1.0
    return float(s[ok.max()])


def fit_uncertified(logits: np.ndarray, labels: np.ndarray, cfg: GateConfig, *, reason: str,
                    novelty: np.ndarray | None = None) -> dict[str, Any]:
    """The documented fallback when nothing can be certified: the same score, fitted on every held-out
    frame, and :func:`empirical_threshold` at the asked risk. It carries ``certified: False`` and
    ``reason``; it is an estimate, with no bound on the risk of future frames."""
    calib = {"method": "empirical", **_fit_score(logits, labels, cfg, novelty)}
    s = confidence_np(logits, calib, novelty)
    calib.update(threshold=empirical_threshold(s, logits.argmax(1) == labels, cfg.target_risk),
                 requested_risk=cfg.target_risk, target_risk=cfg.target_risk, delta=None, certified=False,
                 reason=reason, score_fit={"n": len(labels), "fraction": 1.0})
    return calib


def fit_guaranteed(logits: np.ndarray, labels: np.ndarray, cfg: GateConfig,
                   novelty: np.ndarray | None = None, groups: np.ndarray | None = None) -> dict[str, Any]:
    """Temperature scaling by NLL, then a threshold with a certified selective risk.

    The held-out data is split once (by default 10%/90%): ``cfg.score_fit_fraction`` of it fits the score (the
    temperature, and for energy/max-logit the squashing constants), the grid of candidate
    thresholds for ``ltt``, and the rung of :attr:`GateConfig.rungs` to walk at; the rest
    certifies the threshold. The score is so fixed before the certifying data is looked at, as
    the guarantee requires. For ``msp-energy`` the energy floor and (given the frames'
    ``novelty`` residuals) the novelty ceiling are percentiles of the score-fitting part too.

    ``groups``: the held-out digit each frame shows, when there are several frames of one digit
    (a field model's held-out frames and their camera renderings): the split is then by digit,
    and with ``cfg.one_frame_per_digit`` each certifying digit certifies with one frame
    (:func:`split_for_scoring`).

    Unless ``cfg.strict_risk``, a held-out set too small to split, or one on which no rung can
    be certified, gets :func:`fit_uncertified` instead of an error.
    """
    n = len(labels)
    fit_idx, cert_idx = split_for_scoring(n, cfg.score_fit_fraction, groups=groups,
                                          one_per_group=cfg.one_frame_per_digit)
    if len(fit_idx) < MIN_PART or len(cert_idx) < MIN_PART:
        reason = (f"{n} held-out examples are too few to fit a score and certify a threshold: expected at least "
                  f"{min_holdout(cfg.score_fit_fraction)} ({MIN_PART} to fit the score on, as "
                  f"{cfg.score_fit_fraction:.0%} of them, and {MIN_PART} to certify with)")
        if cfg.strict_risk:
            raise CertificationError(reason)
        return fit_uncertified(logits, labels, cfg, reason=reason, novelty=novelty)
    nov_f = None if novelty is None else novelty[fit_idx]
    nov_c = None if novelty is None else novelty[cert_idx]
    lf, yf = logits[fit_idx], labels[fit_idx]
    calib: dict[str, Any] = {"method": "guaranteed", **_fit_score(lf, yf, cfg, nov_f)}
    lc, yc = logits[cert_idx], labels[cert_idx]
    s = confidence_np(lc, calib, nov_c)
    ok = lc.argmax(1) == yc
    sf = confidence_np(lf, calib, nov_f)
    grid = threshold_grid(sf)
    plan, walk = plan_ladder(sf, lf.argmax(1) == yf, grid, len(cert_idx), cfg.rungs, cfg.delta)
    try:
        if cfg.search == "ltt":
            cert, risk = certify_ladder(s, ok, grid, plan, walk, cfg.delta)
        else:
            cert, risk = certify_threshold(s, ok, walk, cfg.delta), walk
    except CertificationError as e:
        if cfg.strict_risk:
            raise
        return fit_uncertified(logits, labels, cfg, reason=str(e), novelty=novelty)
    calib.update(threshold=cert.threshold, requested_risk=cfg.target_risk, target_risk=risk, delta=cfg.delta,
                 certified=True, search=cfg.search, certified_bound=cert.bound, tests=cert.tests,
                 ladder=list(cfg.rungs),
                 certification={"n": cert.n, "accepted": cert.accepted, "errors": cert.errors},
                 score_fit={"n": len(fit_idx), "fraction": cfg.score_fit_fraction,
                            "divided_by": "frame" if groups is None else
                            "digit, one frame of each certifying" if cfg.one_frame_per_digit else "digit"})
    return calib


def fit_gate(logits: np.ndarray, labels: np.ndarray, cfg: GateConfig | None = None, *,
             novelty: np.ndarray | None = None, split: dict[str, Any] | None = None,
             groups: np.ndarray | None = None) -> dict[str, Any]:
    """Fit a gate per ``cfg`` on held-out ``logits``/``labels`` (and the frames' novelty
    residuals, when the model has a novelty basis; ``groups``, the digit each frame shows when a
    digit has several, :func:`fit_guaranteed`); returns calibration.json's content."""
    cfg = cfg or GateConfig()
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if cfg.method == "seed":
        calib = {**fit_seed_rule(logits, labels), "certified": False}
    else:
        calib = fit_guaranteed(logits, labels, cfg, novelty, groups)
    st = gate_stats(confidence_np(logits, calib, novelty), logits.argmax(1) == labels, calib["threshold"])
    calib["fit"] = {"n": len(labels), "coverage": st["coverage"], "selective_risk": st["selective_risk"],
                    **(split or {})}
    return {"schema_version": CALIBRATION_SCHEMA, **calib}


def describe_certification(calib: dict[str, Any]) -> str:
    """One line saying what the gate certifies (or that it certifies nothing, and why)."""
    if calib.get("method") == "seed":
        return "Gate: the notebook's rule, which certifies no risk"
    asked = calib.get("requested_risk", calib.get("target_risk"))
    if not calib.get("certified", True):
        return (f"Gate: NOT certified ({calib.get('reason')}); its threshold keeps the held-out selective risk at "
                f"or under {_pct(asked)}, an estimate with no guarantee")
    got, delta = calib["target_risk"], calib["delta"]
    if asked is None or got <= asked * (1 + 1e-9):
        return f"Gate: certified selective risk <= {_pct(got)} with probability >= {1 - delta:g}, as asked"
    return (f"Gate: certified selective risk <= {_pct(got)} with probability >= {1 - delta:g}; the asked "
            f"{_pct(asked)} could not be certified on this held-out data (ladder "
            f"{', '.join(_pct(r) for r in calib.get('ladder', []))}; --strict-risk fails instead)")


def _pct(x: float) -> str:
    return f"{100 * x:g}%"


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

