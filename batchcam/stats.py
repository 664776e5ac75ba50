"""Pre-registered tests behind the book's verdicts (chapter 7).

The evidence protocol: before a grid runs, each claim is written down as a test — which two groups of per-seed
numbers are compared (:func:`compare`), in which direction, paired or not, at which level ``alpha``, with which
non-inferiority ``margin`` if the claim is "no worse than" — together with the design's minimum detectable effect
(:func:`min_detectable_effect`, from the analytic :func:`power`). The p-values of one family of claims are
Holm-adjusted together (:func:`holm`) and :func:`decide` maps each comparison to one word of :data:`VERDICTS` by
fixed rules, so no verdict depends on looking at the numbers first. Every distribution comes from
:mod:`scipy.stats`. :func:`simulate_false_positive_rate` measures how often a rule says "supported" for identical
groups: chapter 7 compares :func:`old_rule` (mean gap larger than a std) with :func:`new_rule` (this protocol).
scipy is an optional dependency (the ``test`` extra): ``batchcam/__init__.py`` does not import this module.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from scipy import optimize, stats

__all__ = ["Comparison", "compare", "holm", "power", "min_detectable_effect", "decide", "VERDICTS",
           "simulate_false_positive_rate", "old_rule", "new_rule", "ALTERNATIVES", "MIN_PARAMETRIC_N"]

VERDICTS = ("supported", "not supported", "contradicted", "not established (underpowered)", "not testable here")
ALTERNATIVES = ("two-sided", "greater", "less")
# Below this many samples in the smaller group, compare() uses an exact (or seeded) permutation test.
MIN_PARAMETRIC_N = 5
_N_RESAMPLES = 9999
_D_MAX = 100.0  # min_detectable_effect searches d in [0, _D_MAX] standard deviations
_OPPOSITE = {"greater": "less", "less": "greater"}
_TESTS = {(False, False): "Welch t", (True, False): "paired t", (False, True): "permutation (independent)",
          (True, True): "permutation (paired sign-flip)"}  # keyed by (paired, permutation)
# scipy >= 1.15 names the generator `rng`; older releases call it `random_state`.
_RNG_KW = "rng" if "rng" in inspect.signature(stats.permutation_test).parameters else "random_state"


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`compare` (chapter 7). ``effect`` = mean(a) − mean(b) (paired: mean of differences,
    the same number); ``ci_low``/``ci_high`` its 1 − alpha interval (one-sided tests: one bound, the other ±inf);
    ``p`` the p-value of ``test`` for ``alternative`` (shifted by ``margin`` if any), ``p_opposite`` that of the
    opposite direction (= ``p`` when two-sided; :func:`decide` uses it for "contradicted"); ``p_holm`` is None
    until set, e.g. ``dataclasses.replace(c, p_holm=q)`` with ``q`` from :func:`holm`."""

    effect: float
    ci_low: float
    ci_high: float
    p: float
    p_opposite: float
    n_a: int
    n_b: int
    test: str
    alternative: str
    margin: Optional[float]
    alpha: float
    p_holm: Optional[float] = None

    def as_dict(self) -> dict:
        """The fields as a plain dict of Python scalars (±inf kept as floats)."""
        return dataclasses.asdict(self)


def _sample(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of per-run values, got shape {arr.shape}; flatten it.")
    if arr.size < 2:
        raise ValueError(f"{name} has {arr.size} value(s); a comparison needs at least 2 per group: run more seeds.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf; drop or rerun the failed runs before comparing.")
    return arr


def _check(alternative: str, alpha: float) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative={alternative!r} is not one of {ALTERNATIVES}; pick one of them.")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha!r} must lie strictly between 0 and 1, e.g. 0.05.")


def _mean_gap(x, y, axis):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)  # paired: equal to the mean of the differences


def _permutation_p(a: np.ndarray, b: np.ndarray, paired: bool, alternative: str) -> float:
    """p of the permutation test of mean(a) − mean(b); paired "samples" swaps within pairs (sign flips)."""
    res = stats.permutation_test((a, b), _mean_gap, permutation_type="samples" if paired else "independent",
                                 vectorized=True, axis=-1, n_resamples=_N_RESAMPLES, alternative=alternative,
                                 **{_RNG_KW: np.random.default_rng(0)})
    return float(res.pvalue)


def _t_test(a: np.ndarray, b: np.ndarray, paired: bool, alternative: str):
    if paired:
        return stats.ttest_rel(a, b, alternative=alternative)
    return stats.ttest_ind(a, b, equal_var=False, alternative=alternative)


def compare(a: Sequence[float], b: Sequence[float], *, paired: bool, alternative: str = "two-sided",
            margin: Optional[float] = None, alpha: float = 0.05) -> Comparison:
    """Compare two groups of per-run values, e.g. one metric over seeds for method ``a`` and baseline ``b``
    (chapter 7).

    Arguments: ``a``, ``b`` — 1-D sequences, ≥ 2 finite values each. ``paired`` — True when run ``i`` of ``a``
    and of ``b`` share seed, initialisation and data order (then ``len(a) == len(b)``). ``alternative`` —
    "two-sided", "greater" (H1: mean(a) > mean(b)) or "less". ``margin`` — non-inferiority margin ``m >= 0``
    in the metric's units, one-sided only: with "greater", H0: effect ≤ −m vs H1: effect > −m (``a + m``
    compared with ``b``); with "less" the mirror, H0: effect ≥ m vs H1: effect < m (``a − m`` vs ``b``).
    ``alpha`` — the level; the interval's confidence is 1 − alpha.

    Tests: Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``) unpaired, ``ttest_rel`` paired; when the
    smaller group has fewer than :data:`MIN_PARAMETRIC_N` values, ``scipy.stats.permutation_test`` instead
    (paired: sign flips, ``permutation_type="samples"``; unpaired: ``"independent"``; exact when there are at
    most 9999 permutations, else 9999 seeded resamples). The interval is always the t interval of the effect
    (Welch or paired, scipy's ``confidence_interval``; needs scipy ≥ 1.11), also under a permutation test, and
    is not shifted by the margin: two-sided for two-sided tests, else a one-sided bound (``ci_low`` for
    "greater" with ``ci_high = +inf``, the mirror for "less").

    Returns a :class:`Comparison`. Raises ValueError naming the problem for NaN/inf, fewer than 2 values,
    unequal lengths when paired, no spread at all, a bad alternative or alpha, a negative or two-sided margin.
    """
    a, b = _sample(a, "a"), _sample(b, "b")
    _check(alternative, alpha)
    if paired and a.size != b.size:
        raise ValueError(f"paired=True needs groups of equal length, got {a.size} and {b.size}; "
                         "pair the runs by seed or pass paired=False.")
    if (np.ptp(a - b) == 0) if paired else (np.ptp(a) == 0 and np.ptp(b) == 0):
        raise ValueError("the runs have no spread (the differences, or both groups, are constant), so the t statistic "
                         "and its interval are undefined; report the values without a test.")
    if margin is not None and not (math.isfinite(margin) and margin >= 0 and alternative != "two-sided"):
        raise ValueError(f"margin={margin!r}: a non-inferiority margin is a finite number >= 0 (the tolerated loss in "
                         "metric units) and needs alternative='greater' (higher is better) or 'less'.")
    shift = 0.0 if margin is None else (float(margin) if alternative == "greater" else -float(margin))
    permutation = min(a.size, b.size) < MIN_PARAMETRIC_N
    test = _TESTS[bool(paired), permutation]
    unshifted = _t_test(a, b, paired, alternative)

    def p_of(alt: str) -> float:
        if permutation:
            return _permutation_p(a + shift, b, paired, alt)
        if alt == alternative and shift == 0.0:
            return float(unshifted.pvalue)
        return float(_t_test(a + shift, b, paired, alt).pvalue)

    p = p_of(alternative)
    p_opp = p if alternative == "two-sided" else p_of(_OPPOSITE[alternative])
    ci = unshifted.confidence_interval(confidence_level=1.0 - alpha)
    effect = float(np.mean(a - b)) if paired else float(np.mean(a) - np.mean(b))
    return Comparison(effect, float(ci.low), float(ci.high), p, p_opp, int(a.size), int(b.size), test, alternative,
                      None if margin is None else float(margin), float(alpha))


def holm(p_values: Sequence[float]) -> list:
    """Holm–Bonferroni adjusted p-values of one family of tests (chapter 7).

    Arguments: ``p_values`` — the family's raw p-values, each in [0, 1]. Returns a list of floats in the input
    order: the i-th smallest p times (m − i + 1), made monotone by a running maximum (step-down), capped at 1.
    Rejecting where the adjusted p < alpha controls the family-wise error rate at alpha.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"p_values must be a flat sequence of numbers in [0, 1] (no NaN), got {p_values!r}.")
    m, order, adjusted = p.size, np.argsort(p, kind="stable"), np.empty(p.size)
    adjusted[order] = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    return [float(x) for x in adjusted]


def power(effect_sd: float, n: int, *, paired: bool, alternative: str = "two-sided", alpha: float = 0.05) -> float:
    """Analytic power of the t-test of :func:`compare` at a true standardised effect (chapter 7).

    Arguments: ``effect_sd`` — Cohen's d, the true mean(a) − mean(b) over the common sd (paired: d of the
    differences); its sign matters for one-sided tests. ``n`` — runs per group (pairs when paired).
    ``alternative``, ``alpha`` — as in :func:`compare`. Returns the probability that p < alpha, from the
    noncentral t (``scipy.stats.nct``): paired df = n − 1, noncentrality d·√n; unpaired (Welch with equal n and
    sd) df = 2n − 2, noncentrality d·√(n/2). Below :data:`MIN_PARAMETRIC_N`, compare runs an exact permutation
    test: if its smallest attainable p is not below alpha (3 pairs: 1/8; 3 + 3 unpaired: 1/20) the power is 0,
    else the t-test power is returned as an approximation.
    """
    _check(alternative, alpha)
    if n < 2:
        raise ValueError(f"n={n!r}: power needs at least 2 runs per group.")
    if n < MIN_PARAMETRIC_N:  # compare's exact permutation test: its smallest p is 1 / #permutations
        if (2.0 if alternative == "two-sided" else 1.0) / (2 ** n if paired else math.comb(2 * n, n)) >= alpha:
            return 0.0
    df, nc = (n - 1, effect_sd * math.sqrt(n)) if paired else (2 * n - 2, effect_sd * math.sqrt(n / 2))
    crit = stats.t.ppf(1 - (alpha / 2 if alternative == "two-sided" else alpha), df)
    # P(T < −crit | nc) = P(T > crit | −nc): both tails by ``sf`` (scipy's nct.cdf far in a tail can give NaN).
    upper = stats.nct.sf(crit, df, nc) if alternative != "less" else 0.0
    lower = stats.nct.sf(crit, df, -nc) if alternative != "greater" else 0.0
    return float(upper + lower)


def min_detectable_effect(n: int, sd: float, alpha: float = 0.05, power: float = 0.8, *, paired: bool = False,
                          alternative: str = "two-sided") -> float:
    """The smallest true effect the test of :func:`compare` detects with probability ``power`` (chapter 7).

    Arguments: ``n`` — runs per group (pairs when paired); ``sd`` — the sd of one run (paired: of the
    differences) in the metric's units; ``power`` — the target, in (alpha, 1); ``alpha``, ``paired``,
    ``alternative`` — as in :func:`compare`. Returns d·sd ≥ 0 in the metric's units, d solving :func:`power` (d)
    = ``power`` by ``scipy.optimize.brentq`` (for "less", the magnitude of the negative effect); +inf when no
    effect reaches that power (see :func:`power` for n < 5).
    """
    target = power
    _check(alternative, alpha)
    if not alpha < target < 1:
        raise ValueError(f"power={target!r} must lie in (alpha, 1), e.g. 0.8.")
    if not (math.isfinite(sd) and sd > 0):
        raise ValueError(f"sd={sd!r} must be a positive number (the spread of one run in metric units).")
    sign = -1.0 if alternative == "less" else 1.0

    def gap(d: float) -> float:
        return _power(sign * d, n, paired=paired, alternative=alternative, alpha=alpha) - target

    if gap(_D_MAX) < 0:
        return math.inf
    return float(optimize.brentq(gap, 0.0, _D_MAX, xtol=1e-12)) * sd


_power = power  # min_detectable_effect's argument `power` shadows the function


def decide(comparison: Optional[Comparison], *, claim_direction: str, mde: Optional[float] = None,
           planned_effect: Optional[float] = None, kind: str = "superiority", p_holm: Optional[float] = None) -> str:
    """The verdict on one pre-registered claim: one word of :data:`VERDICTS` (chapter 7).

    Arguments: ``comparison`` — from :func:`compare`, or None when the records cannot test the claim;
    ``claim_direction`` — "greater" (the claim: a > b) or "less"; ``mde`` — the design's minimum detectable
    effect (:func:`min_detectable_effect`); ``planned_effect`` — the smallest effect the claim is about (both
    in metric units; for non-inferiority the default is the margin); ``kind`` — "superiority" or
    "non-inferiority"; ``p_holm`` — the Holm-adjusted p (default ``comparison.p_holm``, else ``comparison.p``).
    Returns the verdict by these rules, in order, at alpha = ``comparison.alpha`` (m = margin, 0 for superiority):

    * None → "not testable here".
    * "supported": p_holm < alpha and, for superiority, the effect lies in the claimed direction; for
      non-inferiority, the one-sided bound clears the margin (ci_low > −m for "greater", ci_high < m for "less").
    * "contradicted": the effect lies beyond −m on the wrong side and is significant there — two-sided test:
      p_holm < alpha; one-sided test: the opposite one-sided test, ``p_opposite`` < alpha (not Holm-adjusted;
      for a t-test the same as the opposite 1 − alpha bound lying beyond −m, i.e. below −m for "greater").
    * "not established (underpowered)" when ``mde`` and the planned effect are known and ``mde > |planned|``;
      else "not supported".

    Raises ValueError for an unknown kind or direction, a one-sided comparison against the claim, or a margin
    without kind="non-inferiority" (or the reverse).
    """
    if comparison is None:
        return VERDICTS[4]
    c, ni = comparison, kind == "non-inferiority"
    if claim_direction not in _OPPOSITE or kind not in ("superiority", "non-inferiority"):
        raise ValueError(f"claim_direction={claim_direction!r} must be 'greater' (a > b) or 'less' and kind={kind!r} "
                         "'superiority' or 'non-inferiority'.")
    if c.alternative not in ("two-sided", claim_direction):
        raise ValueError(f"the comparison tested alternative={c.alternative!r} but the claim is "
                         f"{claim_direction!r}; compare again with alternative={claim_direction!r}.")
    if ni != (c.margin is not None):
        raise ValueError(f"kind={kind!r} but the comparison has margin={c.margin!r}: a margin goes with "
                         "kind='non-inferiority' and only with it; make kind and compare(margin=...) agree.")
    p = p_holm if p_holm is not None else (c.p_holm if c.p_holm is not None else c.p)
    sign, m = (1.0 if claim_direction == "greater" else -1.0), (c.margin or 0.0)
    clears = (c.ci_low if sign > 0 else -c.ci_high) > -m if ni else sign * c.effect > 0
    if p < c.alpha and clears:
        return VERDICTS[0]
    if (p if c.alternative == "two-sided" else c.p_opposite) < c.alpha and sign * c.effect < -m:
        return VERDICTS[2]
    planned = m if ni and planned_effect is None else planned_effect
    if mde is not None and planned is not None and mde > abs(planned):
        return VERDICTS[3]
    return VERDICTS[1]


def old_rule(a: Sequence[float], b: Sequence[float]) -> bool:
    """The rule this protocol replaces (chapter 7): "a beats b" when mean(a) − mean(b) exceeds the larger of
    the two sample standard deviations (ddof = 1). Arguments: two groups of per-run values. Returns a bool."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return bool(a.mean() - b.mean() > max(a.std(ddof=1), b.std(ddof=1)))


def new_rule(a: Sequence[float], b: Sequence[float]) -> bool:
    """This protocol as a rule (chapter 7): unpaired one-sided :func:`compare` (H1: a > b) at alpha = 0.05,
    then :func:`decide` with claim "greater". Arguments: two groups of per-run values. Returns True when the
    verdict is "supported"."""
    return decide(compare(a, b, paired=False, alternative="greater"), claim_direction="greater") == VERDICTS[0]


def simulate_false_positive_rate(rule: Callable, n: int, *, trials: int = 10_000, seed: int = 0) -> float:
    """How often ``rule`` claims a difference between two identical groups (chapter 7).

    Arguments: ``rule(a, b)`` — True or "supported" when it reports "a beats b"; ``n`` — runs per group;
    ``trials`` — experiments; ``seed`` — for ``numpy.random.default_rng``. Each experiment draws a and b, n values
    each, from one standard normal. Returns the fraction of experiments where the rule said "supported"."""
    if n < 2 or trials < 1:
        raise ValueError(f"need n >= 2 and trials >= 1, got n={n!r}, trials={trials!r}.")
    rng = np.random.default_rng(seed)
    verdicts = [rule(rng.standard_normal(n), rng.standard_normal(n)) for _ in range(trials)]
    return sum((v == VERDICTS[0]) if isinstance(v, str) else bool(v) for v in verdicts) / trials
