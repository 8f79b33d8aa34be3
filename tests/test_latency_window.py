"""The status's latency percentiles: NumPy's numbers, from a window of the most recent values."""

from __future__ import annotations

import math

import numpy as np

from app.latency import LatencyWindow


def test_summary_equals_numpys_percentiles_over_the_most_recent_values():
    w = LatencyWindow(1000)
    assert all(math.isnan(v) for v in w.summary()) and len(w) == 0
    rng = np.random.default_rng(5)
    values = rng.lognormal(6.5, 0.8, 2500)
    for i, v in enumerate(values):
        w.add(float(v))
        if i in (0, 1, 10, 999, 1000, 2499):
            recent = values[max(0, i + 1 - 1000): i + 1]
            p50, p99, mx = w.summary()
            assert len(w) == len(recent)
            np.testing.assert_allclose([p50, p99, mx], [np.percentile(recent, 50), np.percentile(recent, 99), recent.max()],
                                       rtol=1e-12)


def test_summary_leaves_the_window_as_it_was():
    w = LatencyWindow(8)
    for v in (5.0, 1.0, 4.0):
        w.add(v)
    w.summary()
    w.add(2.0)
    assert w.summary() == (3.0, np.percentile([5.0, 1.0, 4.0, 2.0], 99), 5.0)
