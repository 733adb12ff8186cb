"""Rates and differences of rates with 95% intervals: how a lesson says "more often" honestly.

A lesson counts pictures that pass a test (the evaluator reads the prompted colour, an object
moved). A rate from 48 pictures is uncertain by several points, so every rate is printed with
its Wilson interval (`rate`), and an effect, the difference between two conditions, is claimed
only when the interval of the difference excludes zero. That interval is Newcombe's hybrid
score interval (Newcombe 1998, "Interval estimation for the difference between independent
proportions", method 10), built from the two Wilson intervals:

    d = p1 - p2,   d - sqrt((p1 - l1)^2 + (u2 - p2)^2)  ...  d + sqrt((u1 - p1)^2 + (p2 - l2)^2)

Where the same pictures are measured twice (a loss before and after training, at the same t and
noise), the pairs are compared instead: `paired_difference`, the mean of the differences with
its normal-approximation interval, mean +- 1.96 sd / sqrt(n).
"""

import math

from ..nano.bench import rate

__all__ = ["rate", "difference", "paired_difference", "describe"]


def difference(hits_a, hits_b) -> dict:
    """The difference of two rates (a - b) with its 95% Newcombe interval.

    >>> difference([True] * 40 + [False] * 8, [True] * 20 + [False] * 28)
    {'difference': 0.417, 'low': 0.226, 'high': 0.568}
    >>> difference([True] * 25 + [False] * 23, [True] * 22 + [False] * 26)["low"] < 0  # no effect claimed
    True
    """
    a, b = rate(hits_a), rate(hits_b)
    p1, p2 = sum(map(bool, hits_a)) / len(hits_a), sum(map(bool, hits_b)) / len(hits_b)
    d = p1 - p2
    low = d - math.sqrt((p1 - a["low"]) ** 2 + (b["high"] - p2) ** 2)
    high = d + math.sqrt((a["high"] - p1) ** 2 + (p2 - b["low"]) ** 2)
    return {"difference": round(d, 3), "low": round(low, 3), "high": round(high, 3)}


def paired_difference(a, b) -> dict:
    """The mean of a - b over paired measurements (the same pictures twice), with its 95%
    interval. Pairing removes what the pictures share, so small effects show.

    >>> paired_difference([1.0, 2.0, 3.0, 4.0], [0.9, 1.8, 2.9, 3.7])
    {'difference': 0.175, 'low': 0.0812, 'high': 0.2688}
    """
    d = [float(x) - float(y) for x, y in zip(a, b)]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    half = 1.96 * sd / math.sqrt(len(d))
    return {"difference": round(mean, 4), "low": round(mean - half, 4), "high": round(mean + half, 4)}


def describe(hits) -> str:
    """A rate as a lesson prints it.

    >>> describe([True] * 36 + [False] * 12)
    '75% [61, 85] of 48'
    """
    r = rate(hits)
    return f"{r['rate']:.0%} [{r['low'] * 100:.0f}, {r['high'] * 100:.0f}] of {r['n']}"
