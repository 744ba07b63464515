"""Tests for shadowproxy.compare.stats against scipy and independent reference formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon
from scipy.special import ndtri

from shadowproxy.compare import stats

# -- independent references ---------------------------------------------------------------


def wilson_reference(
    k: np.ndarray | int, n: int, confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """Closed form of Wilson (1927), vectorised over ``k``."""
    z = ndtri(0.5 + confidence / 2.0)
    p = np.asarray(k, dtype=float) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def psi_reference(expected: list[float], actual: list[float], eps: float = 1e-4) -> float:
    e_tot, a_tot = sum(expected), sum(actual)
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        ep, ap = max(e / e_tot, eps), max(a / a_tot, eps)
        total += (ap - ep) * math.log(ap / ep)
    return total


count_lists = st.lists(st.integers(0, 1000), min_size=1, max_size=12)
confidences = st.floats(0.5, 0.999)


def _paired_counts(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    k = draw(st.integers(1, 12))
    p = draw(st.lists(st.integers(0, 1000), min_size=k, max_size=k).filter(lambda c: sum(c) > 0))
    q = draw(st.lists(st.integers(0, 1000), min_size=k, max_size=k).filter(lambda c: sum(c) > 0))
    return p, q


paired_counts = st.composite(_paired_counts)()


# -- Wilson -------------------------------------------------------------------------------


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_wilson_matches_closed_form(confidence: float) -> None:
    n = 37
    lo_ref, hi_ref = wilson_reference(np.arange(n + 1), n, confidence)
    for k in range(n + 1):
        lo, hi = stats.wilson_interval(k, n, confidence)
        assert lo == pytest.approx(lo_ref[k], abs=1e-12)
        assert hi == pytest.approx(hi_ref[k], abs=1e-12)


def test_wilson_coverage() -> None:
    rng = np.random.default_rng(20240601)
    p, n = 0.3, 60
    hits = [stats.wilson_interval(int(rng.binomial(n, p)), n, 0.95) for _ in range(1000)]
    coverage = np.mean([lo <= p <= hi for lo, hi in hits])
    assert 0.90 <= coverage <= 0.99


@given(n=st.integers(1, 2000), frac=st.floats(0, 1), c=confidences)
def test_wilson_contains_estimate_and_stays_in_unit_interval(n: int, frac: float, c: float) -> None:
    k = round(frac * n)
    lo, hi = stats.wilson_interval(k, n, c)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


@given(n=st.integers(1, 2000), frac=st.floats(0, 1), c=st.floats(0.5, 0.99))
def test_wilson_wider_at_higher_confidence(n: int, frac: float, c: float) -> None:
    k = round(frac * n)
    lo, hi = stats.wilson_interval(k, n, c)
    lo2, hi2 = stats.wilson_interval(k, n, c + 0.009)
    assert lo2 <= lo + 1e-12 and hi2 >= hi - 1e-12
    assert hi2 - lo2 > hi - lo


# -- confidence sequences -----------------------------------------------------------------


def test_confidence_sequence_wider_than_wilson() -> None:
    for n in [1, 5, 20, 100, 1000, 10_000, 1_000_000]:
        for frac in [0.0, 0.1, 0.5, 0.93, 1.0]:
            k = round(frac * n)
            w_lo, w_hi = stats.wilson_interval(k, n, 0.95)
            c_lo, c_hi = stats.proportion_confidence_sequence(k, n, 0.95)
            assert c_hi - c_lo > w_hi - w_lo, (k, n)


def _running_cover(bounds: list[tuple[float, float]], p: float) -> bool:
    lows, highs = np.array(bounds).T
    return bool(np.maximum.accumulate(lows)[-1] <= p <= np.minimum.accumulate(highs)[-1])


def test_confidence_sequence_is_anytime_valid() -> None:
    # Peek after every observation and keep the running intersection: a fixed-n interval
    # fails this often, an anytime-valid sequence must still cover p in >= 95% of runs.
    rng = np.random.default_rng(7)
    p, horizon, reps = 0.3, 400, 200
    draws = rng.random((reps, horizon)) < p
    successes = np.cumsum(draws, axis=1)
    ns = np.arange(1, horizon + 1)
    cs_cover, wilson_cover = [], []
    for row in successes:
        cs = [
            stats.proportion_confidence_sequence(int(k), int(n), 0.95)
            for k, n in zip(row, ns, strict=True)
        ]
        cs_cover.append(_running_cover(cs, p))
        w_lo, w_hi = wilson_reference(row, ns, 0.95)  # type: ignore[arg-type]
        wilson_cover.append(bool(w_lo.max() <= p <= w_hi.min()))
    assert np.mean(cs_cover) >= 0.95
    # The contrast shows the test has teeth: repeated peeking breaks the fixed-n interval.
    assert np.mean(wilson_cover) < 0.9


def test_mean_confidence_sequence_is_anytime_valid_for_bounded_data() -> None:
    rng = np.random.default_rng(11)
    lower, upper, reps, horizon = -2.0, 3.0, 200, 300
    obs = rng.uniform(-2.0, 1.0, size=(reps, horizon))  # true mean -0.5
    means = np.cumsum(obs, axis=1) / np.arange(1, horizon + 1)
    covered = []
    for row in means:
        cs = [
            stats.mean_confidence_sequence(float(m), n, 0.9, lower, upper)
            for n, m in enumerate(row, start=1)
        ]
        covered.append(_running_cover(cs, -0.5))
    assert np.mean(covered) >= 0.9


def test_mean_sequence_rescales_proportion_sequence() -> None:
    lo, hi = stats.proportion_confidence_sequence(30, 100, 0.95)
    m_lo, m_hi = stats.mean_confidence_sequence(10 + 0.3 * 5, 100, 0.95, 10.0, 15.0)
    assert m_lo == pytest.approx(10 + 5 * lo)
    assert m_hi == pytest.approx(10 + 5 * hi)


def test_confidence_sequence_matches_normal_mixture_formula() -> None:
    # Two-sided normal-mixture boundary, Howard et al. (2021), sigma^2 = 1/4.
    alpha, n, k, target = 0.05, 250, 100, 1000
    ell = 2 * math.log(1 / alpha)
    rho = (target / 4) / (ell + math.log(1 + ell))
    v = n / 4
    radius = math.sqrt((v + rho) * math.log((v + rho) / (rho * alpha**2))) / n
    lo, hi = stats.proportion_confidence_sequence(k, n, 1 - alpha, target_n=target)
    assert lo == pytest.approx(k / n - radius, rel=1e-12)
    assert hi == pytest.approx(k / n + radius, rel=1e-12)


def test_target_n_moves_where_the_sequence_is_tightest() -> None:
    narrow_small = stats.proportion_confidence_sequence(50, 100, 0.95, target_n=100)
    narrow_large = stats.proportion_confidence_sequence(50, 100, 0.95, target_n=100_000)
    assert narrow_small[1] - narrow_small[0] < narrow_large[1] - narrow_large[0]


@given(n=st.integers(1, 10**6), frac=st.floats(0, 1), c=confidences)
def test_confidence_sequence_contains_estimate(n: int, frac: float, c: float) -> None:
    k = round(frac * n)
    lo, hi = stats.proportion_confidence_sequence(k, n, c)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


@given(n=st.integers(1, 10**6), frac=st.floats(0, 1), c=st.floats(0.5, 0.99))
def test_confidence_sequence_wider_at_higher_confidence(n: int, frac: float, c: float) -> None:
    k = round(frac * n)
    lo, hi = stats.proportion_confidence_sequence(k, n, c)
    lo2, hi2 = stats.proportion_confidence_sequence(k, n, c + 0.009)
    assert lo2 <= lo and hi2 >= hi


@given(
    n=st.integers(1, 10**5),
    frac=st.floats(0, 1),
    c=confidences,
    bounds=st.tuples(st.floats(-1e3, 1e3), st.floats(1e-3, 1e3)),
)
def test_mean_sequence_contains_mean_within_bounds(
    n: int, frac: float, c: float, bounds: tuple[float, float]
) -> None:
    lower, width = bounds
    upper = lower + width
    mean = min(upper, lower + frac * width)
    lo, hi = stats.mean_confidence_sequence(mean, n, c, lower, upper)
    assert lower <= lo <= mean <= hi <= upper


# -- drift statistics ---------------------------------------------------------------------


def test_psi_matches_hand_formula() -> None:
    rng = np.random.default_rng(3)
    expected = rng.integers(0, 500, size=10).tolist()
    actual = rng.integers(0, 500, size=10).tolist()
    actual[2] = 0  # exercise the eps floor
    assert stats.psi(expected, actual) == pytest.approx(psi_reference(expected, actual), rel=1e-12)
    assert stats.psi(expected, actual, eps=1e-2) == pytest.approx(
        psi_reference(expected, actual, eps=1e-2), rel=1e-12
    )


@given(paired_counts)
def test_psi_non_negative_and_zero_for_same_distribution(pq: tuple[list[int], list[int]]) -> None:
    p, q = pq
    assert stats.psi(p, q) >= 0.0
    assert stats.psi(p, p) == 0.0
    # Same proportions at a different scale are the same distribution.
    assert stats.psi(p, [3 * c for c in p]) == pytest.approx(0.0, abs=1e-12)


def test_js_distance_equals_scipy() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        p, q = rng.integers(0, 100, size=(2, 8))
        assert stats.js_distance(p, q) == float(jensenshannon(p, q, base=2))
    assert stats.js_distance([1, 0], [0, 5]) == 1.0


@given(paired_counts)
def test_js_distance_bounded_and_symmetric(pq: tuple[list[int], list[int]]) -> None:
    p, q = pq
    d = stats.js_distance(p, q)
    assert 0.0 <= d <= 1.0
    assert d == pytest.approx(stats.js_distance(q, p), abs=1e-12)
    assert stats.js_distance(p, p) == pytest.approx(0.0, abs=1e-7)


def test_wasserstein_matches_scipy_and_sorted_difference() -> None:
    rng = np.random.default_rng(9)
    u, v = rng.normal(0, 1, 200), rng.normal(0.5, 2, 200)
    assert stats.wasserstein1(u, v) == pytest.approx(sps.wasserstein_distance(u, v), rel=1e-12)
    # For equal sample sizes W1 is the mean gap between order statistics.
    assert stats.wasserstein1(u, v) == pytest.approx(np.mean(np.abs(np.sort(u) - np.sort(v))))


def test_ks_matches_scipy() -> None:
    rng = np.random.default_rng(13)
    u, v = rng.normal(0, 1, 150), rng.normal(0.3, 1, 170)
    ref = sps.ks_2samp(u, v)
    assert stats.ks_test(u, v) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue))
    grid = np.concatenate([u, v])
    ecdf_gap = np.max(np.abs((u[:, None] <= grid).mean(0) - (v[:, None] <= grid).mean(0)))
    assert stats.ks_test(u, v)[0] == pytest.approx(ecdf_gap)


def test_spearman_matches_scipy_and_rank_pearson() -> None:
    rng = np.random.default_rng(17)
    x = rng.normal(size=80)
    y = x + rng.normal(size=80)
    y[:10] = np.round(y[:10])  # ties
    rho = stats.spearman(x, y)
    assert rho == pytest.approx(sps.spearmanr(x, y).statistic, rel=1e-12)
    assert rho == pytest.approx(np.corrcoef(sps.rankdata(x), sps.rankdata(y))[0, 1], rel=1e-12)


def test_spearman_undefined_is_nan_without_warning(recwarn: pytest.WarningsRecorder) -> None:
    assert math.isnan(stats.spearman([1, 2, 3], [4, 4, 4]))
    assert math.isnan(stats.spearman([1], [2]))
    assert math.isnan(stats.spearman([], []))
    assert len(recwarn) == 0


def test_chi_square_matches_scipy() -> None:
    ref = [500, 300, 150, 50]
    obs = [48, 35, 12, 5]
    expected = np.array(ref) / sum(ref) * sum(obs)
    res = sps.chisquare(obs, expected)
    assert stats.chi_square(ref, obs) == (pytest.approx(res.statistic), pytest.approx(res.pvalue))
    manual = float(np.sum((np.array(obs) - expected) ** 2 / expected))
    assert stats.chi_square(ref, obs)[0] == pytest.approx(manual)


def test_chi_square_pools_categories_missing_from_reference() -> None:
    ref = [60, 40, 0, 0, 0]
    obs = [50, 30, 5, 5, 0]  # last category empty in both: dropped
    stat, pvalue = stats.chi_square(ref, obs)
    pooled_ref = np.array([60, 40, 0.5])
    pooled_obs = np.array([50, 30, 10])
    res = sps.chisquare(pooled_obs, pooled_ref / pooled_ref.sum() * pooled_obs.sum())
    assert math.isfinite(stat)
    assert (stat, pvalue) == (pytest.approx(res.statistic), pytest.approx(res.pvalue))
    assert pvalue < 1e-6


def test_chi_square_same_proportions_is_not_significant() -> None:
    stat, pvalue = stats.chi_square([100, 200, 300], [10, 20, 30])
    assert stat == pytest.approx(0.0, abs=1e-12)
    assert pvalue == pytest.approx(1.0)


def test_quantile_matches_numpy() -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0]
    assert stats.quantile(values, 0.5) == pytest.approx(3.5)
    assert stats.quantile(values, 0.9) == pytest.approx(float(np.quantile(values, 0.9)))


# -- degenerate inputs and argument checks ------------------------------------------------


def test_empty_data_gives_nan_without_raising() -> None:
    def is_nan_pair(pair: tuple[float, float]) -> bool:
        return all(math.isnan(x) for x in pair)

    assert is_nan_pair(stats.wilson_interval(0, 0, 0.95))
    assert is_nan_pair(stats.proportion_confidence_sequence(0, 0, 0.95))
    assert is_nan_pair(stats.mean_confidence_sequence(math.nan, 0, 0.95, 0.0, 1.0))
    assert math.isnan(stats.psi([0, 0], [1, 2]))
    assert math.isnan(stats.js_distance([1, 2], [0, 0]))
    assert math.isnan(stats.wasserstein1([], [1.0]))
    assert is_nan_pair(stats.ks_test([1.0], []))
    assert is_nan_pair(stats.chi_square([1, 2], [0, 0]))
    assert is_nan_pair(stats.chi_square([5, 0], [3, 0]))  # a single category: no test
    assert math.isnan(stats.quantile([], 0.5))
    assert is_nan_pair(stats.bootstrap_ci(np.array([]), lambda a: a.mean(axis=1), 0.95, seed=1))


@pytest.mark.parametrize("confidence", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_invalid_confidence_raises_naming_it(confidence: float) -> None:
    calls = [
        lambda: stats.wilson_interval(1, 2, confidence),
        lambda: stats.proportion_confidence_sequence(1, 2, confidence),
        lambda: stats.mean_confidence_sequence(0.5, 2, confidence, 0.0, 1.0),
        lambda: stats.bootstrap_ci(np.ones(3), lambda a: a.mean(axis=1), confidence, 0),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="confidence"):
            call()


def test_mismatched_lengths_raise_naming_arguments() -> None:
    with pytest.raises(ValueError, match="expected_counts"):
        stats.psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="p_counts"):
        stats.js_distance([1, 2], [1])
    with pytest.raises(ValueError, match="reference_counts"):
        stats.chi_square([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="x and y"):
        stats.spearman([1, 2, 3], [1, 2])


def test_other_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="successes"):
        stats.wilson_interval(5, 3, 0.95)
    with pytest.raises(ValueError, match="mean"):
        stats.mean_confidence_sequence(2.0, 5, 0.95, 0.0, 1.0)
    with pytest.raises(ValueError, match="lower"):
        stats.mean_confidence_sequence(0.5, 5, 0.95, 1.0, 1.0)
    with pytest.raises(ValueError, match="actual_counts"):
        stats.psi([1, 2], [1, -2])
    with pytest.raises(ValueError, match="q must"):
        stats.quantile([1.0], 1.5)
    with pytest.raises(ValueError, match="statistic"):
        stats.bootstrap_ci(np.ones(5), lambda a: a, 0.95, seed=0)


# -- bootstrap ----------------------------------------------------------------------------


def _mean(a: np.ndarray) -> np.ndarray:
    return a.mean(axis=1)


def test_bootstrap_identical_across_workers_and_chunks() -> None:
    samples = np.random.default_rng(1).exponential(size=50)
    base = stats.bootstrap_ci(samples, _mean, 0.95, seed=42, resamples=500, chunk=100)
    for chunk, workers in [(100, 4), (7, 1), (7, 4), (500, 1), (1, 3), (64, 8)]:
        got = stats.bootstrap_ci(
            samples, _mean, 0.95, seed=42, resamples=500, chunk=chunk, workers=workers
        )
        assert got == base, (chunk, workers)


def test_bootstrap_seed_semantics() -> None:
    samples = np.random.default_rng(2).normal(size=40)
    a = stats.bootstrap_ci(samples, _mean, 0.9, seed=1, resamples=300)
    b = stats.bootstrap_ci(samples, _mean, 0.9, seed=2, resamples=300)
    assert a != b
    ss = np.random.SeedSequence(1)
    # A SeedSequence equal to the int seed reproduces it, and reusing it repeats it.
    assert stats.bootstrap_ci(samples, _mean, 0.9, seed=ss, resamples=300) == a
    assert stats.bootstrap_ci(samples, _mean, 0.9, seed=ss, resamples=300) == a


def test_bootstrap_matches_documented_resampling_scheme() -> None:
    samples = np.random.default_rng(3).normal(size=25)
    children = np.random.SeedSequence(99).spawn(200)
    boots = [samples[np.random.default_rng(c).integers(0, 25, size=25)].mean() for c in children]
    expected = tuple(np.quantile(boots, [0.05, 0.95]))
    got = stats.bootstrap_ci(samples, _mean, 0.9, seed=99, resamples=200, chunk=33)
    assert got == pytest.approx(expected, rel=1e-12)


def test_bootstrap_keeps_rows_paired() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=60)
    paired = np.column_stack([x, x + 1.0])  # difference is exactly 1 in every row

    def mean_diff(a: np.ndarray) -> np.ndarray:
        return (a[:, :, 1] - a[:, :, 0]).mean(axis=1)

    lo, hi = stats.bootstrap_ci(paired, mean_diff, 0.95, seed=0, resamples=200)
    assert lo == pytest.approx(1.0) and hi == pytest.approx(1.0)


def test_bootstrap_coverage_of_normal_mean() -> None:
    rng = np.random.default_rng(2024)
    mu, n, reps = 1.5, 100, 250
    data = rng.normal(mu, 2.0, size=(reps, n))
    covered = [
        lo <= mu <= hi
        for lo, hi in (
            stats.bootstrap_ci(row, _mean, 0.95, seed=i, resamples=300, chunk=150)
            for i, row in enumerate(data)
        )
    ]
    assert 0.90 <= np.mean(covered) <= 0.99


@settings(max_examples=25, deadline=None)
@given(c=st.floats(0.5, 0.95), seed=st.integers(0, 2**32))
def test_bootstrap_wider_at_higher_confidence(c: float, seed: int) -> None:
    samples = np.random.default_rng(seed).normal(size=20)
    lo, hi = stats.bootstrap_ci(samples, _mean, c, seed=seed, resamples=200)
    lo2, hi2 = stats.bootstrap_ci(samples, _mean, c + 0.04, seed=seed, resamples=200)
    assert lo2 <= lo <= hi <= hi2
