"""The confirmation's statistics: a mean's 95% bootstrap interval, the paired per-query gain of
one context over another (bootstrap BCa interval and a Wilcoxon signed-rank p-value), and the
length-controlled gain (the intercept of the per-query gain regressed on the log length ratio,
as AlpacaEval's length-controlled win rate controls for length)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

TEST = "Wilcoxon signed-rank, two-sided"
LC_TEST = "OLS intercept of gain ~ log length ratio"
#: A gain is significant only when the 95% interval excludes 0 *and* p < ALPHA.
ALPHA = 0.05


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:+.3f}"


def _clean(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def mean_interval(values: np.ndarray, seed: int = 0) -> tuple[float | None, float | None]:
    """95% bootstrap interval of the mean (BCa; percentile where BCa is undefined)."""
    from scipy.stats import bootstrap

    if len(values) < 2:
        return None, None
    if np.allclose(values, values[0]):
        return float(values[0]), float(values[0])
    ci = None
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=9999,
                            method=method, rng=np.random.default_rng(seed))
        ci = res.confidence_interval
        if math.isfinite(ci.low) and math.isfinite(ci.high):
            break
    return _clean(ci.low), _clean(ci.high)


@dataclass
class Gain:
    """A candidate against one baseline on the queries both have a score for."""

    baseline: str
    mean: float | None
    low: float | None
    high: float | None
    p_value: float | None
    n: int
    test: str = TEST

    @property
    def _interval_excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    @property
    def _p_below(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA

    @property
    def significant(self) -> bool:
        """Both tests agree: the 95% interval excludes 0 and the Wilcoxon p is below 0.05.
        (At n of 10-40 the bootstrap interval and the rank test can disagree; one alone is
        not called significant.)"""
        return self._interval_excludes_zero and self._p_below

    @property
    def _p_name(self) -> str:
        return "Wilcoxon p" if self.test == TEST else "p"

    @property
    def disagreement(self) -> str | None:
        """Which of the two tests alone saw a difference (None when they agree)."""
        if self._interval_excludes_zero and not self._p_below:
            return f"the interval excludes 0 but {self._p_name}={_f(self.p_value)}"
        if self._p_below and not self._interval_excludes_zero:
            return f"{self._p_name}={_f(self.p_value)} but the interval includes 0"
        return None

    @property
    def verdict(self) -> str:
        """'significant', 'significantly worse' or 'not significant (...)', naming the test
        that disagreed."""
        if self.significant:
            return "significant" if (self.mean or 0) > 0 else "significantly worse"
        why = self.disagreement
        return "not significant" + (f" ({why})" if why else "")

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "mean": self.mean,
                "interval": None if self.low is None else [self.low, self.high],
                "p_value": self.p_value, "n": self.n, "test": self.test}

    def report(self) -> dict[str, Any]:
        """`to_dict` (the bundle's `ConfirmGain` fields) plus the verdict of both tests."""
        return {**self.to_dict(), "significant": self.significant, "verdict": self.verdict}


def paired_gain(a: dict[str, float | None], b: dict[str, float | None], name: str) -> Gain:
    from scipy.stats import wilcoxon

    ids = [q for q, v in a.items() if v is not None and b.get(q) is not None]
    d = np.array([a[q] - b[q] for q in ids], dtype=float)
    if not len(d):
        return Gain(name, None, None, None, None, 0)
    low, high = mean_interval(d)
    if np.all(d == 0):
        p = 1.0
    elif len(d) < 2:
        p = None
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = _clean(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    return Gain(name, float(d.mean()), low, high, p, len(d))


def length_controlled_gain(a: dict[str, float | None], b: dict[str, float | None],
                           len_a: dict[str, int], len_b: dict[str, int], name: str) -> Gain:
    """The gain at equal length: regress the per-query gain on log((1 + words_a) / (1 +
    words_b)) and take the intercept, with its 95% t interval and p-value (OLS). With no
    spread in the length ratio it is the raw paired gain."""
    from scipy import stats

    ids = [q for q, v in a.items() if v is not None and b.get(q) is not None
           and q in len_a and q in len_b]
    if len(ids) < 3:
        return Gain(name, None, None, None, None, len(ids), LC_TEST)
    d = np.array([a[q] - b[q] for q in ids], dtype=float)
    x = np.array([math.log1p(len_a[q]) - math.log1p(len_b[q]) for q in ids])
    if np.ptp(x) == 0:
        g = paired_gain({q: a[q] for q in ids}, {q: b[q] for q in ids}, name)
        return Gain(name, g.mean, g.low, g.high, g.p_value, g.n, LC_TEST)
    fit = stats.linregress(x, d)
    se, df = fit.intercept_stderr, len(ids) - 2
    if not math.isfinite(se) or se == 0:
        return Gain(name, float(fit.intercept), None, None, None, len(ids), LC_TEST)
    t = stats.t.ppf(0.975, df)
    p = float(2 * stats.t.sf(abs(fit.intercept / se), df))
    return Gain(name, float(fit.intercept), float(fit.intercept - t * se),
                float(fit.intercept + t * se), p, len(ids), LC_TEST)
