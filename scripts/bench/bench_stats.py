"""The statistics every benchmark driver reports, as mechlab's bench::summarize
(apps/bench/bench_util.h) computes them: median and quartiles by linear
interpolation between order statistics (numpy's default), and the run count."""

from __future__ import annotations

import math


def quantile(sorted_xs: list[float], p: float) -> float:
    h = p * (len(sorted_xs) - 1)
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (h - lo) * (sorted_xs[hi] - sorted_xs[lo])


def summarize(xs: list[float]) -> dict:
    """{"ms": median, "q1", "q3", "runs"} of the measurements xs (milliseconds)."""
    if not xs:
        raise ValueError("no measurements to summarise")
    s = sorted(xs)
    return dict(ms=quantile(s, 0.5), q1=quantile(s, 0.25), q3=quantile(s, 0.75), runs=len(s))
