"""Statistics every stage reports the same way: success rates come with their 95 % Wilson interval."""

from __future__ import annotations


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (scipy's `binomtest(...).proportion_ci(method='wilson')`)."""
    from scipy.stats import binomtest

    if n == 0:
        return (0.0, 1.0)
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def paired_counts(first: list[bool], second: list[bool]) -> dict[str, int]:
    """The 2x2 table of paired outcomes: both succeed, only `first`, only `second`, neither."""
    if len(first) != len(second):
        raise ValueError(f"paired outcomes need equal lengths, got {len(first)} and {len(second)}")
    both = sum(1 for a, b in zip(first, second) if a and b)
    only_first = sum(1 for a, b in zip(first, second) if a and not b)
    only_second = sum(1 for a, b in zip(first, second) if b and not a)
    return {"both": both, "only_first": only_first, "only_second": only_second,
            "neither": len(first) - both - only_first - only_second}


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs against a fair coin (concordant pairs carry no
    information about which policy is better)."""
    from scipy.stats import binomtest

    n = only_first + only_second
    if n == 0:
        return 1.0
    return float(binomtest(only_first, n, 0.5).pvalue)


def paired_difference_interval(first: list[bool], second: list[bool],
                               confidence: float = 0.95) -> tuple[float, float, float]:
    """(difference, low, high) of success(second) - success(first) on paired trials: Newcombe's hybrid score
    interval for paired proportions (his method 10, Stat. Med. 1998), built from the two Wilson intervals and the
    phi correlation of the pairs (continuity-corrected when positive)."""
    import math

    c = paired_counts(first, second)
    n = len(first)
    if n == 0:
        return (0.0, -1.0, 1.0)
    p1, p2 = sum(first) / n, sum(second) / n
    l1, u1 = wilson_interval(int(sum(first)), n, confidence)
    l2, u2 = wilson_interval(int(sum(second)), n, confidence)
    # 2x2 table with second as the row variable: A both, B second only, C first only, D neither
    a, b, cc, d = c["both"], c["only_second"], c["only_first"], c["neither"]
    denom = math.sqrt((a + b) * (cc + d) * (a + cc) * (b + d))
    if denom == 0:
        phi = 0.0
    else:
        num = a * d - b * cc
        phi = (max(num - n / 2, 0.0) if num > 0 else num) / denom
    delta = p2 - p1
    low = delta - math.sqrt(max((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2, 0.0))
    high = delta + math.sqrt(max((u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2, 0.0))
    return (delta, max(low, -1.0), min(high, 1.0))
