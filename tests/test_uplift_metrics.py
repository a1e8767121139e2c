"""Qini and uplift curves from randomised logs: hand-computed values on tiny logs, a brute-force loop over the
thresholds, and a synthetic randomised experiment whose effects are known."""

from __future__ import annotations

import numpy as np
import pytest

from coupon_spark.evaluation.uplift_metrics import auuc, qini_coefficient, uplift_curves

# ---- hand-computed -------------------------------------------------------------------------------------------


def test_equal_propensities_by_hand() -> None:
    # every propensity 0.5 (w = 2); W_t = W_c = 6
    score = np.array([3.0, 2.0, 1.0, 0.5, 0.2, 0.1])
    treated = np.array([1, 0, 1, 0, 1, 0], bool)
    control = ~treated
    reward = np.array([10.0, 2.0, 4.0, 4.0, 0.0, 1.0])
    c = uplift_curves(score, treated, control, np.full(6, 0.5), reward)
    # top k: (w_t, w_c, r_t, r_c) = (2,0,20,0) (2,2,20,4) (4,2,28,4) (4,4,28,12) (6,4,28,12) (6,6,28,14)
    np.testing.assert_allclose(c.fraction, [0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1])
    # qini = (r_t - r_c * w_t / w_c) / 6
    np.testing.assert_allclose(c.qini, [0, 20 / 6, 16 / 6, 20 / 6, 16 / 6, 10 / 6, 14 / 6])
    # uplift = (r_t / w_t - r_c / w_c) * fraction
    np.testing.assert_allclose(c.uplift, [0, 10 / 6, 8 / 3, 5 / 2, 8 / 3, (28 / 6 - 3) * 5 / 6, 28 / 6 - 14 / 6])
    # q - fraction * 7/3 at the interior points: (53, 34, 39, 20, -5) / 18; step 1/6, zero at both ends
    assert qini_coefficient(c) == pytest.approx(141 / 108)
    assert c.qini_coefficient == pytest.approx(141 / 108)
    # (7/6 + 5/3 + 8/3 + 5/2 + 8/3 + 25/18) / 6 = (217/18) / 6
    assert auuc(c) == pytest.approx(217 / 108)
    assert c.auuc == pytest.approx(217 / 108)
    assert (c.n_treated, c.n_control) == (3, 3)


def test_unequal_propensities_ties_and_ignored_rows_by_hand() -> None:
    # A: treated w=4 r=3; B: control w=2 r=1 (tied with A); C: another coupon (ignored, however high its score);
    # D: control w=2 r=2; E: treated w=2 r=0 (tied with D). W_t = 6, W_c = 4.
    score = np.array([1.0, 1.0, 5.0, 0.0, 0.0])
    treated = np.array([1, 0, 0, 0, 1], bool)
    control = np.array([0, 1, 0, 1, 0], bool)
    propensity = np.array([0.25, 0.5, 0.1, 0.5, 0.5])
    reward = np.array([3.0, 1.0, 100.0, 2.0, 0.0])
    c = uplift_curves(score, treated, control, propensity, reward)
    # after the tie at 1: w_t 4, w_c 2, r_t 12, r_c 2 -> fraction 0.6, qini (12 - 2 * 2) / 6, uplift (3 - 1) 0.6
    # all: w_t 6, w_c 4, r_t 12, r_c 6 -> qini (12 - 6 * 1.5) / 6 = 0.5, uplift (2 - 1.5) * 1
    np.testing.assert_allclose(c.fraction, [0, 0.6, 1])
    np.testing.assert_allclose(c.qini, [0, 4 / 3, 0.5])
    np.testing.assert_allclose(c.uplift, [0, 1.2, 0.5])
    assert c.qini_coefficient == pytest.approx((4 / 3 - 0.3) / 2)
    assert c.auuc == pytest.approx(0.6 * 1.2 / 2 + 0.4 * 1.7 / 2)
    assert (c.n_treated, c.n_control) == (2, 2)
    # the order of tied rows does not matter
    perm = np.array([1, 0, 2, 4, 3])
    p = uplift_curves(score[perm], treated[perm], control[perm], propensity[perm], reward[perm])
    np.testing.assert_allclose(p.qini, c.qini)
    np.testing.assert_allclose(p.uplift, c.uplift)


def test_zero_control_weight_at_the_top_counts_zero() -> None:
    c = uplift_curves(
        np.array([2.0, 1.0]), np.array([True, False]), np.array([False, True]), np.array([1.0, 1.0]), [5.0, 1.0]
    )
    # top 1: only the treated row: no control term
    np.testing.assert_allclose(c.qini, [0, 5.0, 4.0])
    np.testing.assert_allclose(c.uplift, [0, 2.5, 4.0])


# ---- against a brute-force loop ------------------------------------------------------------------------------


def brute_force(
    score: np.ndarray, treated: np.ndarray, control: np.ndarray, propensity: np.ndarray, reward: np.ndarray
) -> tuple[list[float], list[float], list[float]]:
    """The curves by a loop over every distinct threshold, summing the rows scored at or above it."""
    keep = [i for i in range(len(score)) if treated[i] or control[i]]
    total_t = sum(1 / propensity[i] for i in keep if treated[i])
    total = sum(1 / propensity[i] for i in keep)
    fraction, qini, uplift = [0.0], [0.0], [0.0]
    for threshold in sorted({score[i] for i in keep}, reverse=True):
        wt = wc = rt = rc = 0.0
        for i in keep:
            if score[i] >= threshold:
                if treated[i]:
                    wt += 1 / propensity[i]
                    rt += reward[i] / propensity[i]
                else:
                    wc += 1 / propensity[i]
                    rc += reward[i] / propensity[i]
        f = (wt + wc) / total
        fraction.append(f)
        qini.append((rt - (rc * wt / wc if wc else 0.0)) / total_t)
        uplift.append(((rt / wt if wt else 0.0) - (rc / wc if wc else 0.0)) * f)
    return fraction, qini, uplift


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_brute_force_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    score = rng.integers(0, 40, n) / 4.0  # many ties
    arm = rng.choice(3, n, p=[0.3, 0.4, 0.3])  # 0 the chosen coupon, 1 none, 2 another coupon
    propensity = rng.uniform(0.05, 1.0, n)
    reward = rng.normal(1.0, 3.0, n)
    treated, control = arm == 0, arm == 1
    c = uplift_curves(score, treated, control, propensity, reward)
    fraction, qini, uplift = brute_force(score, treated, control, propensity, reward)
    np.testing.assert_allclose(c.fraction, fraction)
    np.testing.assert_allclose(c.qini, qini)
    np.testing.assert_allclose(c.uplift, uplift)
    area = sum((fraction[i + 1] - fraction[i]) * (uplift[i + 1] + uplift[i]) / 2 for i in range(len(fraction) - 1))
    assert c.auuc == pytest.approx(area)
    gap = [q - f * qini[-1] for f, q in zip(fraction, qini, strict=True)]
    area = sum((fraction[i + 1] - fraction[i]) * (gap[i + 1] + gap[i]) / 2 for i in range(len(fraction) - 1))
    assert c.qini_coefficient == pytest.approx(area)


# ---- a randomised experiment with known effects ------------------------------------------------------------------


def test_a_perfect_ranking_beats_a_random_one_on_a_randomised_experiment() -> None:
    rng = np.random.default_rng(7)
    n = 40_000
    effect = rng.normal(0.0, 1.0, n)  # what the chosen coupon adds to the user's reward; positive on half
    # randomised logging: the chosen coupon (0.3), no coupon (0.5), another coupon (0.2)
    arm = rng.choice(3, n, p=[0.3, 0.5, 0.2])
    propensity = np.array([0.3, 0.5, 0.2])[arm]
    reward = rng.normal(2.0, 1.0, n) + effect * (arm == 0)
    treated, control = arm == 0, arm == 1
    perfect = uplift_curves(effect, treated, control, propensity, reward)
    random = uplift_curves(rng.permutation(effect), treated, control, propensity, reward)
    worst = uplift_curves(-effect, treated, control, propensity, reward)

    # what targeting the top users by their true effect earns, per user of the population
    true_curve = np.r_[0.0, np.cumsum(np.sort(effect)[::-1])] / n
    true_fraction = np.arange(n + 1) / n
    true_coef = np.sum(np.diff(true_fraction) * (true_curve[1:] + true_curve[:-1]) / 2) - true_curve[-1] / 2
    assert true_coef == pytest.approx(1 / (2 * np.sqrt(np.pi)), rel=0.05)  # E[Z Phi(Z)] = E[phi(Z)] for Z ~ N(0, 1)
    assert perfect.qini[-1] == pytest.approx(effect.mean(), abs=0.05)  # the estimated average effect
    assert perfect.qini_coefficient == pytest.approx(true_coef, rel=0.1)
    assert abs(random.qini_coefficient) < 0.05
    assert perfect.qini_coefficient > random.qini_coefficient + 0.2
    assert worst.qini_coefficient < -0.2
    # random targeting: about half the final uplift; the perfect ranking is far above it
    assert random.auuc == pytest.approx(random.uplift[-1] / 2, abs=0.05)
    assert perfect.auuc > random.auuc + 0.2


# ---- validation ----------------------------------------------------------------------------------------------

GOOD = {
    "score": np.array([1.0, 0.0]),
    "treated": np.array([True, False]),
    "control": np.array([False, True]),
    "propensity": np.array([0.5, 0.5]),
    "reward": np.array([1.0, 0.0]),
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"reward": np.array([1.0, 0.0, 2.0])}, "lengths"),
        ({"score": np.array([[1.0, 0.0]])}, "1-d"),
        ({"score": np.array([np.nan, 0.0])}, "score must be finite"),
        ({"reward": np.array([np.inf, 0.0])}, "reward must be finite"),
        ({"propensity": np.array([0.0, 0.5])}, r"propensity must be in \(0, 1\]"),
        ({"propensity": np.array([0.5, 1.5])}, r"propensity must be in \(0, 1\]"),
        ({"treated": np.array([2, 0])}, "treated must be boolean"),
        ({"control": np.array([True, True])}, "both treated and control"),
        ({"control": np.array([False, False])}, "0 control"),
        ({"treated": np.array([False, False])}, "0 treated"),
    ],
)
def test_bad_inputs_are_refused(change: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        uplift_curves(**(GOOD | change))
