"""The gate: exact binomial bounds, certification on synthetic scores, the seed rule."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from toolchain import gate


def exact_cdf(k: int, n: int, p: float) -> float:
    q = Fraction(p)
    return float(sum(Fraction(math.comb(n, i)) * q**i * (1 - q) ** (n - i) for i in range(k + 1)))


@pytest.mark.parametrize("k, n, p", [(0, 10, 0.3), (3, 50, 0.05), (10, 200, 0.07), (25, 1000, 0.02)])
def test_binom_cdf_matches_exact_fractions(k, n, p):
    assert gate.binom_cdf(k, n, p) == pytest.approx(exact_cdf(k, n, p), rel=1e-10)


@pytest.mark.parametrize("errors, n, delta", [(0, 100, 0.05), (0, 3000, 0.05), (3, 1000, 0.01), (12, 9000, 0.05),
                                              (40, 500, 0.1)])
def test_clopper_pearson_bound_is_exact(errors, n, delta):
    b = gate.binomial_upper_bound(errors, n, delta)
    # At the bound, P(X <= errors) is delta; just below it, more.
    assert exact_cdf(errors, n, b) == pytest.approx(delta, rel=1e-6)
    assert exact_cdf(errors, n, b * (1 - 1e-4)) > delta
    if errors == 0:
        assert b == pytest.approx(1 - delta ** (1 / n), rel=1e-9)  # closed form


def test_bound_edge_cases():
    assert gate.binomial_upper_bound(5, 5, 0.05) == 1.0
    assert gate.binomial_upper_bound(0, 0, 0.05) == 1.0


def _synthetic(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = rng.random(n)
    p_err = 0.2 * (1 - s) ** 3  # known error rate at each score
    return s, rng.random(n) >= p_err


def _true_risk(theta: float) -> float:
    # E[0.2 (1-s)^3 | s >= theta] for s ~ U(0, 1) = 0.2 (1-theta)^3 / 4
    return 0.2 * (1 - theta) ** 3 / 4


@pytest.mark.parametrize("search", ["ltt", "sgr"])
def test_certification_holds_on_synthetic_scores(search):
    rng = np.random.default_rng(0)
    target, delta, trials = 0.01, 0.1, 100
    violations, coverages = 0, []
    for _ in range(trials):
        s, ok = _synthetic(10000, rng)
        try:
            if search == "ltt":
                grid = gate.threshold_grid(rng.random(1000))  # from independent data, as in fit_guaranteed
                cert = gate.certify_fixed_sequence(s, ok, grid, target, delta)
            else:
                cert = gate.certify_threshold(s, ok, target, delta)
        except gate.CertificationError:
            coverages.append(0.0)  # refusing to certify is the safe outcome, never a violation
            continue
        violations += _true_risk(cert.threshold) > target
        coverages.append(1 - cert.threshold)
        assert cert.bound <= target
    # The guarantee: P(true risk > target) <= delta. Allow for the trials' own sampling noise.
    assert violations / trials <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)
    # And it is not vacuous: the best threshold (true risk = target) has coverage 1 - 0.5848.
    assert np.mean(coverages) > 0.45


def test_certification_refuses_what_it_cannot_certify():
    rng = np.random.default_rng(1)
    s, ok = _synthetic(300, rng)
    with pytest.raises(gate.CertificationError, match=r"cannot certify a selective risk of 0.001 at delta 0.05 "
                       r"with 300 held-out examples"):
        gate.certify_threshold(s, ok, 0.001, 0.05)
    with pytest.raises(gate.CertificationError, match="first threshold of the sequence already fails"):
        gate.certify_fixed_sequence(s, ok, gate.threshold_grid(rng.random(300)), 0.001, 0.05)


@pytest.mark.parametrize("risk, delta, message", [(0.0, 0.05, r"target risk 0.0: expected a value in \(0, 1\)"),
                                                  (1.5, 0.05, "target risk 1.5"),
                                                  (0.01, 1.0, r"delta 1.0: expected a value in \(0, 1\)")])
def test_bad_gate_options(risk, delta, message):
    with pytest.raises(gate.GateError, match=message):
        gate.certify_threshold(np.ones(10), np.ones(10, bool), risk, delta)


def test_temperature_recovers_known_value():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(20000, 10)) * 3
    labels = np.array([rng.choice(10, p=p) for p in gate.softmax_np(z, 2.0)])
    # Data drawn from softmax(z / 2): fitting on logits z must find T close to 2.
    assert gate.fit_temperature(z, labels) == pytest.approx(2.0, rel=0.05)


def test_seed_rule_is_the_notebooks():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 10))
    labels = rng.integers(0, 10, 500)
    c = gate.fit_seed_rule(logits, labels)
    lo, hi = logits.min(0), logits.max(0)
    s = ((logits - lo) / (hi - lo)).max(1)
    ok = logits.argmax(1) == labels
    expected = ((s[ok].mean() - s[ok].std()) + (s[~ok].mean() + s[~ok].std())) / 2
    assert c["threshold"] == pytest.approx(expected, rel=1e-12)
    assert np.allclose(gate.confidence_np(logits, c), s)


def test_confidence_scores_in_unit_interval_and_torch_numpy_agree():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 10)) * 5
    labels = logits.argmax(1)
    labels[:20] = (labels[:20] + 1) % 10
    for score in gate.SCORES:
        c = gate.fit_gate("guaranteed", np.tile(logits, (5, 1)), np.tile(labels, 5), target_risk=0.2, delta=0.1,
                          score=score)
        conf = gate.confidence(torch.from_numpy(logits).float(), c).numpy()
        assert conf.min() >= 0 and conf.max() <= 1
        assert np.allclose(conf, gate.confidence_np(logits, c), atol=1e-6)


def test_ece_and_aurc_on_known_values():
    probs = np.array([0.9, 0.9, 0.6, 0.6])
    correct = np.array([True, False, True, True])
    # bins: 0.9 -> acc 0.5 (|0.5-0.9| * 0.5), 0.6 -> acc 1.0 (|1-0.6| * 0.5)
    assert gate.ece(probs, correct) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    ok = np.array([True, True, False, True])
    assert gate.aurc(conf, ok) == pytest.approx(np.mean([0, 0, 1 / 3, 1 / 4]))


def test_msp_energy_refuses_frames_with_little_evidence():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 10)) * 6
    labels = logits.argmax(1)
    c = gate.fit_gate("guaranteed", logits, labels, target_risk=0.05, delta=0.1, score="msp-energy", energy_floor=10.0)
    fit_idx, _ = gate.split_for_scoring(len(labels), 0.1)
    t = c["temperature"]
    energy = t * np.log(np.exp(logits / t).sum(1))
    assert c["energy_floor"] == pytest.approx(np.percentile(energy[fit_idx], 10.0))
    conf = gate.confidence_np(logits, c)
    low = energy < c["energy_floor"]
    assert low.any() and (conf[low] == 0).all()
    assert np.allclose(conf[~low], gate.softmax_np(logits[~low], t).max(1), atol=1e-6)
    # A confident-looking frame with little evidence: same softmax as a strong one, scaled logits.
    weak = np.array([[2.0] + [0.0] * 9]) * 0.5
    assert gate.confidence_np(weak, c)[0] == 0.0
    with pytest.raises(gate.GateError, match=r"energy floor 100.0: expected a percentile in \[0, 100\)"):
        gate.fit_gate("guaranteed", logits, labels, target_risk=0.05, delta=0.1, score="msp-energy",
                      energy_floor=100.0)


def test_novelty_ceiling_refuses_far_frames():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4000, 10)) * 6
    labels = logits.argmax(1)
    novelty = rng.gamma(2.0, 0.1, size=4000)
    c = gate.fit_gate("guaranteed", logits, labels, target_risk=0.05, delta=0.1, score="msp-energy",
                      novelty=novelty, novelty_ceiling=95.0)
    fit_idx, _ = gate.split_for_scoring(len(labels), 0.1)
    assert c["novelty_ceiling"] == pytest.approx(np.percentile(novelty[fit_idx], 95.0))
    conf = gate.confidence_np(logits, c, novelty)
    far = novelty > c["novelty_ceiling"]
    assert far.any() and (conf[far] == 0).all()
    assert np.array_equal(conf[~far], gate.confidence_np(logits[~far], {**c, "novelty_ceiling": None}))
    with pytest.raises(gate.GateError, match="this gate refuses frames by their novelty residual: expected the "
                                             "residuals"):
        gate.confidence_np(logits, c)
    plain = gate.fit_gate("guaranteed", logits, labels, target_risk=0.05, delta=0.1, score="msp-energy",
                          novelty=novelty, novelty_ceiling=100.0)
    assert "novelty_ceiling" not in plain


def test_fashion_ood_sample_is_verified():
    from toolchain import ood
    imgs = ood.generate("fashion", 500)
    assert imgs.shape == (500, 28, 28) and imgs.dtype == np.uint8 and imgs.mean() > 30
