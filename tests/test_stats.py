"""Intervals and verdicts on made-up numbers whose answers are known."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from netanatomy import stats
from netanatomy.errors import ParamError


def test_mean_interval_is_the_t_interval():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    iv = stats.mean_interval(x, 0.95)
    half = scipy_stats.t.ppf(0.975, 4) * np.std(x, ddof=1) / np.sqrt(5)  # 2.776 * 1.581 / 2.236
    assert iv.mean == 3.0 and iv.n == 5
    assert iv.low == pytest.approx(3 - half) and iv.high == pytest.approx(3 + half)
    assert iv.high - iv.low == pytest.approx(2 * 1.963, abs=1e-3)


@pytest.mark.parametrize("diffs, verdict", [
    ([1.0, 1.2, 0.9, 1.1, 1.0], stats.HELD),           # clearly above 0
    ([-1.0, -1.2, -0.9, -1.1, -1.0], stats.NOT_HELD),  # clearly below 0
    ([1.0, -1.0, 0.5, -0.5, 0.2], stats.INCONCLUSIVE),  # straddles 0
    ([0.3, 0.5], stats.INCONCLUSIVE),                  # two seeds: t(1) makes the interval wide
    ([-1.0, -1.0], stats.INCONCLUSIVE),                # two equal differences: a zero-width interval decides nothing
    ([-1.0, -1.0, -1.0], stats.NOT_HELD),              # three equal ones do
])
def test_verdicts(diffs, verdict):
    assert stats.paired_interval(diffs, np.zeros(len(diffs))).verdict() == verdict


def test_verdict_against_a_threshold_and_pairing():
    hits = [0.30, 0.32, 0.29, 0.31, 0.30, 0.33]
    assert stats.mean_interval(hits).verdict(above=0.25) == stats.HELD
    assert stats.mean_interval(hits).verdict(above=0.35) == stats.NOT_HELD
    # pairing removes the shared per-seed offset that an unpaired view would see as noise
    base = np.array([80.0, 84.0, 78.0, 86.0, 82.0])
    better = base + [0.4, 0.6, 0.5, 0.45, 0.55]
    a, b = stats.mean_interval(better), stats.mean_interval(base)
    assert a.low < b.high  # unpaired, the two intervals overlap widely
    assert stats.paired_interval(better, base).verdict() == stats.HELD


def test_too_few_values_is_a_clear_error():
    with pytest.raises(ParamError, match="at least 2"):
        stats.mean_interval([1.0])
    with pytest.raises(ParamError, match="equal counts"):
        stats.paired_interval([1.0, 2.0], [1.0])
