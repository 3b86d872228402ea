"""Score intervals against the values Newcombe (1998) published for them."""

from __future__ import annotations

import pytest

from efm.evaluation.stats import difference_interval, successes, verdict, wilson_interval


@pytest.mark.parametrize(("k", "n", "lo", "hi"), [
    (81, 263, 0.2553, 0.3662),  # Newcombe 1998a (single proportion), method 3
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),  # no successes: a one-sided interval, not the point 0
    (20, 20, 0.8389, 1.0),
])
def test_wilson_interval_matches_published_values(k: int, n: int, lo: float, hi: float) -> None:
    assert wilson_interval(k, n) == pytest.approx((lo, hi), abs=5e-5)


@pytest.mark.parametrize(("k1", "n1", "k2", "n2", "lo", "hi"), [
    (56, 70, 48, 80, 0.0524, 0.3339),  # Newcombe 1998b (difference), method 10
    (9, 10, 3, 10, 0.1705, 0.8090),
    (5, 56, 0, 29, -0.0381, 0.1926),
    (0, 10, 0, 20, -0.1611, 0.2775),
])
def test_difference_interval_matches_published_values(k1: int, n1: int, k2: int, n2: int, lo: float,
                                                       hi: float) -> None:
    assert difference_interval(k1, n1, k2, n2) == pytest.approx((lo, hi), abs=5e-5)


def test_difference_interval_is_antisymmetric() -> None:
    lo, hi = difference_interval(6, 300, 24, 200)
    assert difference_interval(24, 200, 6, 300) == pytest.approx((-hi, -lo))


def test_verdict_needs_the_whole_interval_on_one_side_of_zero() -> None:
    assert verdict((0.01, 0.2)) == "supported"
    assert verdict((-0.2, -0.01)) == "refuted"
    assert verdict((-0.01, 0.2)) == verdict((0.0, 0.2)) == "inconclusive"


def test_success_counts_come_back_from_stored_rates() -> None:
    assert [successes(r, 100) for r in (0.0, 0.07, 0.14, 0.29, 1.0)] == [0, 7, 14, 29, 100]
    assert successes(0.1 + 0.2, 10) == 3  # float rounding is not an error
    for bad in (0.035, 1.01, -0.01):  # not k out of 100
        with pytest.raises(ValueError, match="not a count"):
            successes(bad, 100)
    with pytest.raises(ValueError, match="trials"):
        wilson_interval(3, 0)
