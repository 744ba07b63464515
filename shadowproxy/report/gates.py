"""Gate evaluation and the promotion decisions built on it.

A gate is decided on the metric's confidence interval, not on its point estimate, so a
candidate is promoted only when the evidence is strong enough, and rejected only when it is
clearly bad:

* a ``min`` gate passes when the whole interval is at or above the threshold
  (``ci_low >= threshold``), fails when the whole interval is below it
  (``ci_high < threshold``), and is undecided while the interval straddles it;
* a ``max`` gate is the mirror image (passes when ``ci_high <= threshold``, fails when
  ``ci_low > threshold``);
* a metric without an interval (a count such as ``threads``) is compared by its value; a
  missing end of an interval falls back to the value;
* a metric without a value (``None`` or NaN) is undecided: "not measured yet";
* a metric the source cannot give (an entry with an ``unavailable`` reason, such as the
  sample-based figures of a Prometheus source) is undecided with that reason, never passed;
* an entry with ``"interval": "bounds"`` carries the range every value the binned data
  allows instead of a confidence interval (figures of a Prometheus source); it is judged
  the same way.

Below ``promotion.min_samples`` *every* gate is undecided, even one whose interval already
lies on the wrong side. The intervals of small samples are the least trustworthy (few
pairs, rare labels, a warm-up still in the latency figures), and ``min_samples`` is the
operator's statement of how much traffic they trust; deciding early in one direction only
would make it mean different things for passing and failing gates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from shadowproxy.config.model import Gate
from shadowproxy.report.text import interval, metric_label, num, percent

__all__ = [
    "Decision",
    "GateResult",
    "candidate_decision",
    "evaluate_gates",
    "normalised_margin",
    "overall_decision",
    "recommend",
]

Decision = Literal["promote", "reject", "insufficient_data"]
Op = Literal["min", "max"]


@dataclass(frozen=True)
class GateResult:
    """The outcome of one gate for one candidate.

    ``passed`` is ``True`` (passed), ``False`` (failed) or ``None`` (not decided yet), and
    ``reason`` says why in plain language.
    """

    metric: str
    op: Op
    threshold: float
    value: float | None
    ci_low: float | None
    ci_high: float | None
    passed: bool | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Return the result with the keys of the report contract.

        Returns
        -------
        dict
            ``metric, op, threshold, value, ci_low, ci_high, passed, reason``.
        """
        return asdict(self)


def _finite_or_none(x: Any) -> float | None:
    # NaN cannot be compared and is not valid JSON: it means "not measurable" here.
    if x is None or isinstance(x, bool):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _ops(gate: Gate) -> list[tuple[Op, float]]:
    ops: list[tuple[Op, float]] = []
    if gate.min is not None:
        ops.append(("min", float(gate.min)))
    if gate.max is not None:
        ops.append(("max", float(gate.max)))
    if not ops:
        raise ValueError(f"gate on {gate.metric!r} has neither 'min' nor 'max'")
    return ops


def _describe(
    metric: str, value: float, lo: float | None, hi: float | None, confidence: float,
    bounds: bool = False,
) -> str:  # fmt: skip
    text = f"{metric_label(metric)} {num(value)}"
    if bounds:
        # Every value the binned data allows, not a confidence interval; an open end is
        # unbounded.
        low_text = "−∞" if lo is None else num(lo)
        high_text = "∞" if hi is None else num(hi)
        text += f" (bounds {low_text}–{high_text})"
    elif lo is not None or hi is not None:
        text += f" ({percent(confidence)} CI {interval(lo, hi)})"
    return text


def _judge(op: Op, threshold: float, lo: float, hi: float) -> tuple[bool | None, str]:
    # Returns the outcome and the phrase that completes "<metric> ... is <phrase>".
    t = num(threshold)
    if op == "min":
        if lo >= threshold:
            return True, f"at or above the minimum {t}"
        if hi < threshold:
            return False, f"below the minimum {t}"
        return None, f"straddles the minimum {t}"
    if hi <= threshold:
        return True, f"at or below the maximum {t}"
    if lo > threshold:
        return False, f"above the maximum {t}"
    return None, f"straddles the maximum {t}"


def evaluate_gates(
    gates: Iterable[Gate],
    metrics: Mapping[str, Mapping[str, Any]],
    samples: int,
    min_samples: int,
    confidence: float = 0.95,
) -> list[GateResult]:
    """Decide every gate for one candidate.

    Parameters
    ----------
    gates : iterable of Gate
        The ``promotion.gates`` of the config, in order.
    metrics : mapping
        ``{metric: {"value", "ci_low", "ci_high"}}`` from the comparator; a missing metric
        or a ``None`` value is "not measured yet", and an entry with an ``unavailable``
        reason is undecided with that reason. The ``samples`` metric falls back to
        ``samples`` when the comparator does not list it.
    samples : int
        Paired requests observed for the candidate.
    min_samples : int
        Pairs needed before any gate is decided (see the module notes).
    confidence : float, optional
        The level of the intervals, only used in the reasons.

    Returns
    -------
    list of GateResult
        One result per gate bound, in the order of ``gates``.
    """
    results: list[GateResult] = []
    short = samples < min_samples
    for gate in gates:
        entry: Mapping[str, Any] = metrics.get(gate.metric) or {}
        if gate.metric == "samples" and not entry:
            entry = {"value": samples}
        value = _finite_or_none(entry.get("value"))
        ci_low = _finite_or_none(entry.get("ci_low"))
        ci_high = _finite_or_none(entry.get("ci_high"))
        missing = entry.get("unavailable")
        for op, threshold in _ops(gate):
            passed: bool | None
            if missing:
                passed, reason = None, f"{metric_label(gate.metric)} not decided: {missing}"
            elif value is None:
                passed, reason = None, f"{metric_label(gate.metric)} not measured yet"
            else:
                head = _describe(
                    gate.metric,
                    value,
                    ci_low,
                    ci_high,
                    confidence,
                    entry.get("interval") == "bounds",
                )
                if short:
                    passed = None
                    reason = (
                        f"{head}: not decided, {samples} of the {min_samples} samples needed "
                        f"({min_samples - samples} more)"
                    )
                else:
                    bounds = entry.get("interval") == "bounds"
                    has_ci = ci_low is not None or ci_high is not None or bounds
                    # A confidence interval that could not be computed leaves the value;
                    # bounds with an open end (what binned data allows) are unbounded there.
                    lo = (-math.inf if bounds else value) if ci_low is None else ci_low
                    hi = (math.inf if bounds else value) if ci_high is None else ci_high
                    passed, phrase = _judge(op, threshold, lo, hi)
                    if passed is None:
                        reason = f"{head}: the interval {phrase}; more samples are needed"
                    elif has_ci:
                        reason = f"{head}: the whole interval is {phrase}"
                    else:
                        reason = f"{head} is {phrase}"
            results.append(
                GateResult(
                    metric=gate.metric,
                    op=op,
                    threshold=threshold,
                    value=value,
                    ci_low=ci_low,
                    ci_high=ci_high,
                    passed=passed,
                    reason=reason,
                )
            )
    return results


def candidate_decision(results: Sequence[GateResult], samples: int, min_samples: int) -> Decision:
    """Decide one candidate from its gate results.

    Parameters
    ----------
    results : sequence of GateResult
        The candidate's gates, from :func:`evaluate_gates`.
    samples : int
        Paired requests observed.
    min_samples : int
        Pairs needed before a candidate can be promoted.

    Returns
    -------
    {"promote", "reject", "insufficient_data"}
        ``reject`` if any gate failed, ``promote`` if every gate passed (and there are
        enough samples, which matters when no gate is configured), else
        ``insufficient_data``.
    """
    if any(r.passed is False for r in results):
        return "reject"
    if samples >= min_samples and all(r.passed is True for r in results):
        return "promote"
    return "insufficient_data"


def overall_decision(decisions: Sequence[str]) -> Decision:
    """The report's top-level decision from the candidates' decisions.

    Parameters
    ----------
    decisions : sequence of str
        One decision per considered candidate.

    Returns
    -------
    {"promote", "reject", "insufficient_data"}
        ``promote`` when at least one candidate is promoted; ``insufficient_data`` when none
        is rejected but some are undecided (or there is no candidate at all: nothing was
        measured, so nothing can be rejected); else ``reject``. A rejected candidate next
        to an undecided one therefore gives ``reject``, as the contract words it; the
        per-candidate decisions in the report still show which one may pass later.
    """
    if "promote" in decisions:
        return "promote"
    if not decisions or "reject" not in decisions:
        return "insufficient_data"
    return "reject"


def normalised_margin(result: GateResult) -> float | None:
    """How far a gate's conservative interval end lies inside its threshold.

    The distance from the threshold to the worst end of the interval (``ci_low`` for a
    ``min`` gate, ``ci_high`` for a ``max`` gate; the value when there is no interval),
    divided by ``|threshold|`` so that gates of different units compare (by 1 when the
    threshold is 0). Positive means inside.

    Parameters
    ----------
    result : GateResult
        A gate result.

    Returns
    -------
    float or None
        The margin, or ``None`` when the gate has no value.
    """
    if result.value is None:
        return None
    scale = abs(result.threshold) or 1.0
    if result.op == "min":
        worst = result.value if result.ci_low is None else result.ci_low
        return (worst - result.threshold) / scale
    worst = result.value if result.ci_high is None else result.ci_high
    return (result.threshold - worst) / scale


def recommend(candidates: Sequence[tuple[str, int, Decision, Sequence[GateResult]]]) -> str | None:
    """Pick the promoted candidate to roll out.

    Among the promoted candidates, the one whose *smallest* normalised margin (see
    :func:`normalised_margin`) is largest: the candidate that is furthest from failing its
    tightest gate. Ties go to more samples, then to the earlier candidate in the config.

    Parameters
    ----------
    candidates : sequence of (name, samples, decision, results)
        Every considered candidate, in config order.

    Returns
    -------
    str or None
        The recommended name, or ``None`` when no candidate is promoted.
    """
    best: tuple[float, int, int] | None = None
    best_name: str | None = None
    for index, (name, samples, decision, results) in enumerate(candidates):
        if decision != "promote":
            continue
        margins = [m for m in map(normalised_margin, results) if m is not None]
        # A candidate with no gates is unconstrained: infinitely far from failing.
        key = (min(margins, default=math.inf), samples, -index)
        if best is None or key > best:
            best, best_name = key, name
    return best_name
