"""pipeline.common.stats: the Wilson interval, the exact McNemar test and the paired-difference interval the
expert gate and the eval report use."""

import math

import pytest

from pipeline.common.stats import wilson_interval


def test_wilson_interval_known_values():
    low, high = wilson_interval(18, 20)
    assert abs(low - 0.699) < 1e-3 and abs(high - 0.972) < 1e-3
    assert wilson_interval(0, 10)[0] == 0.0


def test_wilson_interval_by_hand():
    from pipeline.common.stats import wilson_interval

    k, n, z = 5, 32, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_interval(k, n) == pytest.approx((centre - half, centre + half), abs=1e-12)


def test_mcnemar_exact_by_hand():
    from pipeline.common.stats import mcnemar_exact, paired_counts

    assert paired_counts([1, 1, 0, 0, 1], [1, 0, 1, 0, 0]) == {"both": 1, "only_first": 2, "only_second": 1,
                                                              "neither": 1}
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 2 ** 6)  # all 6 discordant pairs favour one side
    assert mcnemar_exact(1, 7) == pytest.approx(2 * (1 + 8) / 2 ** 8)  # 2 P(X <= 1), X ~ Bin(8, 1/2)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_paired_difference_interval():
    from pipeline.common.stats import paired_difference_interval, wilson_interval

    # Fagerland, Lydersen & Laake's worked example (Bentur et al. 2009): 1 both, 1 first only, 7 second only,
    # 12 neither; computed here step by step from their square-and-add definition.
    first = [1] * 1 + [1] * 1 + [0] * 7 + [0] * 12
    second = [1] * 1 + [0] * 1 + [1] * 7 + [0] * 12
    n = 21
    l1, u1 = wilson_interval(2, n)
    l2, u2 = wilson_interval(8, n)
    p1, p2 = 2 / n, 8 / n
    a = 1 * 12 - 7 * 1  # second-as-rows table: A D - B C = 1*12 - 7*1 = 5 <= n / 2 -> no correlation term
    assert 0 <= a <= n / 2
    low = (p2 - p1) - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    high = (p2 - p1) + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
    assert paired_difference_interval(first, second) == pytest.approx((6 / 21, low, high), abs=1e-12)
    # identical outcomes: no difference, an interval around 0; total improvement: bounded by 1
    same = [1, 0, 1, 1, 0, 0, 1, 1, 1, 0]
    d, lo, hi = paired_difference_interval(same, same)
    assert d == 0 and lo < 0 < hi
    d, lo, hi = paired_difference_interval([0] * 10, [1] * 10)
    assert d == 1 and 0 < lo < 1 and hi == 1
