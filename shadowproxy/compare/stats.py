"""Pure statistics for comparing a production model's answers with a candidate's.

Every function takes plain data and returns plain values; there is no I/O and no hidden
state. The conventions are shared by all functions so that callers never special-case:

* Empty data never raises: point statistics return ``nan`` and intervals ``(nan, nan)``.
* Invalid arguments (a ``confidence`` outside (0, 1), mismatched lengths, negative counts)
  raise :class:`ValueError` whose message names the offending argument.
* Wherever SciPy implements a statistic, it is used as is; this module adds the
  conventions, the edge cases, the anytime-valid confidence sequences and a seeded,
  reproducible bootstrap.

References
----------
- Wilson, E. B. (1927). Probable inference, the law of succession, and statistical
  inference. *Journal of the American Statistical Association*, 22(158), 209-212.
- Howard, S. R., Ramdas, A., McAuliffe, J., & Sekhon, J. (2021). Time-uniform,
  nonparametric, nonasymptotic confidence sequences. *The Annals of Statistics*, 49(2),
  1055-1080. https://doi.org/10.1214/20-AOS1991
- Robbins, H. (1970). Statistical methods related to the law of the iterated
  logarithm. *The Annals of Mathematical Statistics*, 41(5), 1397-1409.
- Efron, B., & Tibshirani, R. J. (1993). *An Introduction to the Bootstrap*.
  Chapman & Hall, chapter 13 (percentile intervals).
- Yurdakul, B. (2018). Statistical properties of population stability index.
  Dissertation, Western Michigan University.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

__all__ = [
    "DEFAULT_CS_TARGET_N",
    "bootstrap_ci",
    "chi_square",
    "js_distance",
    "ks_test",
    "mean_confidence_sequence",
    "proportion_confidence_sequence",
    "psi",
    "quantile",
    "spearman",
    "wasserstein1",
    "wilson_interval",
]

NAN_PAIR: tuple[float, float] = (math.nan, math.nan)

#: Sample size at which the confidence sequences are tightest by default. Any fixed value
#: keeps them anytime-valid; it only moves where the width is closest to optimal.
DEFAULT_CS_TARGET_N = 1000


# -- validation helpers ------------------------------------------------------------------


def _check_confidence(confidence: float) -> float:
    """Return ``1 - confidence`` after checking it is a probability strictly in (0, 1)."""
    # `not (0 < c < 1)` also rejects nan, which plain comparisons would let through.
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return 1.0 - float(confidence)


def _check_count(successes: int, n: int) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    if not (0 <= successes <= n):
        raise ValueError(f"successes must be in [0, n={n}], got {successes!r}")


def _as_counts(counts: ArrayLike, name: str) -> np.ndarray:
    """Return a 1-D float array of non-negative counts, or raise naming ``name``."""
    arr = np.asarray(counts, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if np.any(~np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must contain finite, non-negative counts")
    return arr


def _same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(
            f"{name_a} and {name_b} must have the same length, got {len(a)} and {len(b)}"
        )


def _as_sample(values: ArrayLike) -> np.ndarray:
    return np.asarray(values, dtype=float).ravel()


# -- intervals for a proportion -----------------------------------------------------------


def wilson_interval(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion, valid at a single fixed ``n``.

    Parameters
    ----------
    successes : int
        Number of successes, ``0 <= successes <= n``.
    n : int
        Number of trials.
    confidence : float
        Confidence level in (0, 1), e.g. 0.95.

    Returns
    -------
    tuple of float
        ``(low, high)`` within [0, 1]; ``(nan, nan)`` when ``n == 0``.

    Notes
    -----
    Computed by :meth:`scipy.stats.binomtest` ``.proportion_ci(method="wilson")`` without
    continuity correction [1]_. The interval is only valid when ``n`` is fixed in
    advance; use :func:`proportion_confidence_sequence` when results are inspected
    repeatedly as data arrive.

    References
    ----------
    .. [1] Wilson, E. B. (1927). Probable inference, the law of succession, and
       statistical inference. *JASA*, 22(158), 209-212.
    """
    _check_confidence(confidence)
    _check_count(successes, n)
    if n == 0:
        return NAN_PAIR
    ci = sps.binomtest(int(successes), int(n)).proportion_ci(
        confidence_level=confidence, method="wilson"
    )
    # Clip away rounding residue so the interval always lies inside [0, 1].
    return float(np.clip(ci.low, 0.0, 1.0)), float(np.clip(ci.high, 0.0, 1.0))


# -- anytime-valid confidence sequences ---------------------------------------------------


def _mixture_rho(alpha: float, target_n: int) -> float:
    """Mixture precision that makes the boundary (nearly) tightest at ``target_n``.

    For intrinsic time ``v`` the two-sided boundary ``(v + rho) log((v + rho) / (rho
    alpha^2))`` is minimised over ``rho`` where ``r = (v + rho) / rho`` solves
    ``r - log r = 1 + 2 log(1/alpha)``; one fixed-point step ``r = 1 + 2 log(1/alpha) +
    log(1 + 2 log(1/alpha))`` gives the closed form below. Any fixed ``rho > 0`` keeps
    the guarantee; this choice only decides where the width is smallest.
    """
    two_log = 2.0 * math.log(1.0 / alpha)
    v_target = target_n / 4.0  # intrinsic time of [0, 1] data: variance proxy 1/4 per step
    return v_target / (two_log + math.log1p(two_log))


def _normal_mixture_radius(n: int, alpha: float, target_n: int) -> float:
    """Half-width of the two-sided normal-mixture confidence sequence for a [0, 1] mean.

    Observations in [0, 1] are sub-Gaussian with variance proxy ``1/4`` (Hoeffding), so
    ``S_n = sum(X_i - mu)`` with intrinsic time ``V_n = n / 4`` satisfies, with
    probability at least ``1 - alpha`` simultaneously for all ``n >= 1``,
    ``|S_n| < sqrt((V_n + rho) log((V_n + rho) / (rho alpha^2)))`` (the two-sided
    normal-mixture boundary of Howard et al. 2021; Robbins 1970). Ville's inequality
    applied to the Gaussian mixture of exponential supermartingales is what makes the
    bound hold uniformly over time.
    """
    rho = _mixture_rho(alpha, target_n)
    v = n / 4.0
    boundary = math.sqrt((v + rho) * math.log((v + rho) / (rho * alpha * alpha)))
    return boundary / n


def _check_target(target_n: int) -> None:
    if target_n < 1:
        raise ValueError(f"target_n must be >= 1, got {target_n!r}")


def proportion_confidence_sequence(
    successes: int,
    n: int,
    confidence: float,
    *,
    target_n: int = DEFAULT_CS_TARGET_N,
) -> tuple[float, float]:
    """Anytime-valid confidence sequence for a binomial proportion.

    Unlike :func:`wilson_interval`, the intervals hold *simultaneously* for every ``n``:
    ``P(exists n: p not in CS_n) <= 1 - confidence``. A promotion rule may therefore look
    at the interval after every request and stop whenever it likes without inflating
    the false-promotion rate. The running intersection of the intervals over ``n`` is
    also valid and never wider.

    Parameters
    ----------
    successes : int
        Number of successes so far, ``0 <= successes <= n``.
    n : int
        Number of trials so far.
    confidence : float
        Confidence level in (0, 1), uniform over all ``n``.
    target_n : int, optional
        Sample size at which the sequence is tuned to be tightest. Must be fixed before
        monitoring starts (choosing it from the data voids the guarantee).

    Returns
    -------
    tuple of float
        ``(low, high)`` within [0, 1] and containing ``successes / n``; ``(nan, nan)``
        when ``n == 0``.

    Notes
    -----
    Uses the two-sided normal-mixture (Robbins) boundary for sub-Gaussian observations
    with variance proxy 1/4, which holds for any observations bounded in [0, 1]
    (Howard, Ramdas, McAuliffe & Sekhon, 2021; Robbins, 1970). The boundary depends on
    the data only through ``successes`` and ``n``, which is why it fits this
    summary-statistic API.

    References
    ----------
    .. [1] Howard, S. R., Ramdas, A., McAuliffe, J., & Sekhon, J. (2021). Time-uniform,
       nonparametric, nonasymptotic confidence sequences. *Ann. Statist.* 49(2),
       1055-1080.
    .. [2] Robbins, H. (1970). Statistical methods related to the law of the iterated
       logarithm. *Ann. Math. Statist.* 41(5), 1397-1409.
    """
    alpha = _check_confidence(confidence)
    _check_count(successes, n)
    _check_target(target_n)
    if n == 0:
        return NAN_PAIR
    centre = successes / n
    radius = _normal_mixture_radius(n, alpha, target_n)
    return max(0.0, centre - radius), min(1.0, centre + radius)


def mean_confidence_sequence(
    mean: float,
    n: int,
    confidence: float,
    lower: float,
    upper: float,
    *,
    target_n: int = DEFAULT_CS_TARGET_N,
) -> tuple[float, float]:
    """Anytime-valid confidence sequence for the mean of observations in ``[lower, upper]``.

    Parameters
    ----------
    mean : float
        Sample mean of the first ``n`` observations; must lie in ``[lower, upper]``.
    n : int
        Number of observations so far.
    confidence : float
        Confidence level in (0, 1), uniform over all ``n``.
    lower, upper : float
        Known bounds of every observation, ``lower < upper``.
    target_n : int, optional
        Sample size at which the sequence is tuned to be tightest (fixed in advance).

    Returns
    -------
    tuple of float
        ``(low, high)`` within ``[lower, upper]`` and containing ``mean``;
        ``(nan, nan)`` when ``n == 0``.

    Notes
    -----
    The observations are rescaled to [0, 1] and the same normal-mixture boundary as in
    :func:`proportion_confidence_sequence` is applied (Howard et al., 2021), then mapped
    back. Being variance-agnostic, it is conservative for low-variance data.
    """
    alpha = _check_confidence(confidence)
    _check_target(target_n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise ValueError(f"lower and upper must be finite with lower < upper, got {lower}, {upper}")
    if n == 0:
        return NAN_PAIR
    if not (lower <= mean <= upper):
        raise ValueError(f"mean must lie in [lower, upper] = [{lower}, {upper}], got {mean!r}")
    width = upper - lower
    radius = _normal_mixture_radius(n, alpha, target_n) * width
    return max(lower, mean - radius), min(upper, mean + radius)


# -- distribution drift -------------------------------------------------------------------


def psi(expected_counts: ArrayLike, actual_counts: ArrayLike, eps: float = 1e-4) -> float:
    """Population Stability Index between two histograms over the same bins.

    Parameters
    ----------
    expected_counts, actual_counts : array_like
        Non-negative counts per bin (reference and current), same length.
    eps : float, optional
        Floor applied to each bin's proportion so that empty bins give a finite,
        large contribution instead of an infinite one.

    Returns
    -------
    float
        ``sum((a_i - e_i) * ln(a_i / e_i))`` over bins, with ``e_i``, ``a_i`` the
        floored proportions; always ``>= 0``. ``nan`` if either histogram is empty.

    Notes
    -----
    PSI is the symmetrised Kullback-Leibler divergence ``KL(a||e) + KL(e||a)`` [1]_.
    Floored proportions are not renormalised, matching common practice; each term is
    still non-negative because ``a_i - e_i`` and ``ln(a_i / e_i)`` share their sign.

    References
    ----------
    .. [1] Yurdakul, B. (2018). Statistical properties of population stability index.
       Dissertation, Western Michigan University.
    """
    if not (eps > 0.0):
        raise ValueError(f"eps must be > 0, got {eps!r}")
    e = _as_counts(expected_counts, "expected_counts")
    a = _as_counts(actual_counts, "actual_counts")
    _same_length(e, a, "expected_counts", "actual_counts")
    if e.sum() == 0 or a.sum() == 0:
        return math.nan
    e_p = np.maximum(e / e.sum(), eps)
    a_p = np.maximum(a / a.sum(), eps)
    return float(np.sum((a_p - e_p) * np.log(a_p / e_p)))


def js_distance(p_counts: ArrayLike, q_counts: ArrayLike) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two histograms.

    Parameters
    ----------
    p_counts, q_counts : array_like
        Non-negative counts per bin, same length; normalised internally.

    Returns
    -------
    float
        :func:`scipy.spatial.distance.jensenshannon` with ``base=2``: 0 for identical
        distributions, 1 for disjoint supports. ``nan`` if either histogram is empty.
    """
    p = _as_counts(p_counts, "p_counts")
    q = _as_counts(q_counts, "q_counts")
    _same_length(p, q, "p_counts", "q_counts")
    if p.sum() == 0 or q.sum() == 0:
        return math.nan
    # Clip only removes floating-point excursions (e.g. 1 + 1e-16) past the bounds.
    return float(np.clip(jensenshannon(p, q, base=2), 0.0, 1.0))


def wasserstein1(u_values: ArrayLike, v_values: ArrayLike) -> float:
    """First Wasserstein (earth mover's) distance between two 1-D samples.

    Returns :func:`scipy.stats.wasserstein_distance`, or ``nan`` if either is empty.
    """
    u, v = _as_sample(u_values), _as_sample(v_values)
    if u.size == 0 or v.size == 0:
        return math.nan
    return float(sps.wasserstein_distance(u, v))


def ks_test(u_values: ArrayLike, v_values: ArrayLike) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test.

    Returns
    -------
    tuple of float
        ``(statistic, p_value)`` from :func:`scipy.stats.ks_2samp` (two-sided, automatic
        exact/asymptotic method); ``(nan, nan)`` if either sample is empty.
    """
    u, v = _as_sample(u_values), _as_sample(v_values)
    if u.size == 0 or v.size == 0:
        return NAN_PAIR
    # scipy tries the exact p-value for samples of this size and, when it cannot finish
    # it (many tied values), falls back to the asymptotic one with a warning: the fallback
    # is the documented behaviour, the warning is noise in a server's log.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = sps.ks_2samp(u, v)
    return float(res.statistic), float(res.pvalue)


def binned_ks(reference_counts: ArrayLike, observed_counts: ArrayLike) -> tuple[float, float]:
    """Kolmogorov-Smirnov statistic and p-value between two histograms on the same bins.

    The input reference keeps bin counts, not raw values, so the statistic is taken where
    the two empirical CDFs can be compared: at the bin edges. That is the exact KS
    statistic of the two samples rounded to their bins, a lower bound of the unbinned one.
    The p-value is the asymptotic two-sample one (Kolmogorov distribution at
    ``D * sqrt(n m / (n + m))``, :data:`scipy.stats.kstwobign`).

    Returns
    -------
    tuple of float
        ``(statistic, p_value)``; ``(nan, nan)`` when either histogram is empty.
    """
    ref = _as_counts(reference_counts, "reference_counts")
    obs = _as_counts(observed_counts, "observed_counts")
    _same_length(ref, obs, "reference_counts", "observed_counts")
    n, m = ref.sum(), obs.sum()
    if n == 0 or m == 0:
        return NAN_PAIR
    d = float(np.max(np.abs(np.cumsum(ref) / n - np.cumsum(obs) / m)))
    effective = math.sqrt(n * m / (n + m))
    return d, float(sps.kstwobign.sf(d * effective))


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman rank correlation of paired observations.

    Returns
    -------
    float
        :func:`scipy.stats.spearmanr` correlation; ``nan`` when undefined (fewer than
        two pairs, or either input constant).

    Raises
    ------
    ValueError
        If ``x`` and ``y`` have different lengths.
    """
    xa, ya = _as_sample(x), _as_sample(y)
    _same_length(xa, ya, "x", "y")
    if xa.size < 2 or np.all(xa == xa[0]) or np.all(ya == ya[0]):
        # A rank correlation needs variation in both inputs; scipy would warn and
        # return nan here, we return nan silently as documented.
        return math.nan
    return float(sps.spearmanr(xa, ya).statistic)


def chi_square(reference_counts: ArrayLike, observed_counts: ArrayLike) -> tuple[float, float]:
    """Chi-square goodness of fit of observed category counts to reference proportions.

    Parameters
    ----------
    reference_counts : array_like
        Counts per category in the reference (e.g. production) traffic.
    observed_counts : array_like
        Counts per category in the observed (e.g. candidate) traffic, same categories.

    Returns
    -------
    tuple of float
        ``(statistic, p_value)`` from :func:`scipy.stats.chisquare` with expected counts
        ``reference proportion * observed total``; ``(nan, nan)`` when either total is
        zero or fewer than two categories remain.

    Notes
    -----
    Categories that are empty in both inputs carry no information and are dropped.
    Categories absent from the reference but present in the observed counts would get
    an expected count of zero and an infinite statistic, although the reference is
    itself a finite sample that may simply have missed rare categories. They are
    therefore pooled into a single "unseen" category whose reference count is 0.5
    (the Jeffreys/add-half pseudo-count); the test then still flags them strongly
    without producing ``inf``. Degrees of freedom are the number of categories kept
    minus one.
    """
    ref = _as_counts(reference_counts, "reference_counts")
    obs = _as_counts(observed_counts, "observed_counts")
    _same_length(ref, obs, "reference_counts", "observed_counts")
    if ref.sum() == 0 or obs.sum() == 0:
        return NAN_PAIR
    seen = ref > 0
    unseen_obs = obs[~seen].sum()
    ref_kept, obs_kept = ref[seen], obs[seen]
    if unseen_obs > 0:
        ref_kept = np.append(ref_kept, 0.5)
        obs_kept = np.append(obs_kept, unseen_obs)
    if ref_kept.size < 2:
        return NAN_PAIR
    expected = ref_kept / ref_kept.sum() * obs_kept.sum()
    res = sps.chisquare(obs_kept, expected)
    return float(res.statistic), float(res.pvalue)


# -- quantiles and the seeded bootstrap ---------------------------------------------------


def quantile(values: ArrayLike, q: float) -> float:
    """The ``q``-quantile of ``values`` (linear interpolation, :func:`numpy.quantile`).

    Returns ``nan`` for empty input; raises :class:`ValueError` if ``q`` is outside [0, 1].
    """
    if not (0.0 <= q <= 1.0):
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    arr = _as_sample(values)
    if arr.size == 0:
        return math.nan
    return float(np.quantile(arr, q))


Statistic = Callable[[np.ndarray], np.ndarray]


def _resample_chunk(
    samples: np.ndarray, statistic: Statistic, seeds: list[np.random.SeedSequence]
) -> np.ndarray:
    """Evaluate ``statistic`` on one chunk of resamples, one generator per resample.

    Giving every resample its own spawned stream is what makes the result independent
    of how resamples are grouped into chunks and of which thread evaluates a chunk.
    """
    n = samples.shape[0]
    idx = np.stack([np.random.default_rng(s).integers(0, n, size=n) for s in seeds])
    values = np.asarray(statistic(samples[idx]), dtype=float)
    if values.shape != (len(seeds),):
        raise ValueError(
            f"statistic must return shape ({len(seeds)},) for {len(seeds)} resamples, "
            f"got {values.shape}"
        )
    return values


def _fresh_root(seed: int | np.random.SeedSequence) -> np.random.SeedSequence:
    """A SeedSequence equivalent to ``seed`` that has not spawned any children yet.

    ``SeedSequence.spawn`` advances the object it is called on; spawning from a copy
    keeps the caller's object untouched, so passing the same seed twice repeats the
    result exactly.
    """
    if isinstance(seed, np.random.SeedSequence):
        return np.random.SeedSequence(
            seed.entropy, spawn_key=seed.spawn_key, pool_size=seed.pool_size
        )
    return np.random.SeedSequence(seed)


def bootstrap_ci(
    samples: np.ndarray,
    statistic: Statistic,
    confidence: float,
    seed: int | np.random.SeedSequence,
    resamples: int = 1000,
    chunk: int = 100,
    workers: int = 1,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval, reproducible for a given seed.

    Parameters
    ----------
    samples : numpy.ndarray
        Shape ``(n,)`` or ``(n, k, ...)``; rows are resampled together so paired
        observations (e.g. production and candidate scores of one request) stay paired.
    statistic : callable
        Vectorised statistic: receives an array of shape ``(b, n, ...)`` holding ``b``
        resamples and returns shape ``(b,)``. Must be thread-safe if ``workers > 1``.
    confidence : float
        Confidence level in (0, 1).
    seed : int or numpy.random.SeedSequence
        Root of the random streams.
    resamples : int, optional
        Number of bootstrap resamples (>= 1).
    chunk : int, optional
        Resamples evaluated per call of ``statistic``; bounds memory to ``chunk * n``.
    workers : int, optional
        Threads evaluating chunks concurrently (numpy releases the GIL in most kernels).

    Returns
    -------
    tuple of float
        ``(low, high)`` = the ``alpha/2`` and ``1 - alpha/2`` quantiles of the bootstrap
        distribution [1]_; ``(nan, nan)`` for empty ``samples``.

    Notes
    -----
    Resample ``i`` draws its indices from its own generator, the ``i``-th child of
    ``SeedSequence(seed).spawn(resamples)``. Chunks are contiguous slices of these
    children, so the result is bit-identical whatever ``chunk`` and ``workers`` are.

    References
    ----------
    .. [1] Efron, B., & Tibshirani, R. J. (1993). *An Introduction to the Bootstrap*,
       chapter 13. Chapman & Hall.
    """
    alpha = _check_confidence(confidence)
    for name, value in (("resamples", resamples), ("chunk", chunk), ("workers", workers)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    data = np.asarray(samples)
    if data.ndim == 0:
        raise ValueError("samples must have at least one dimension")
    if data.shape[0] == 0:
        return NAN_PAIR
    children = _fresh_root(seed).spawn(resamples)
    batches = [children[i : i + chunk] for i in range(0, resamples, chunk)]
    if workers == 1 or len(batches) == 1:
        parts = [_resample_chunk(data, statistic, b) for b in batches]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # map() preserves order, so concatenation is independent of scheduling.
            parts = list(pool.map(lambda b: _resample_chunk(data, statistic, b), batches))
    boot = np.concatenate(parts)
    low, high = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)
