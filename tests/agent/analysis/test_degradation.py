"""The trend evidence's fast sums: every change point's sums from suffix sums must equal the
definition, on epoch timestamps (1.8e9 s) where cancellation would show first."""

from __future__ import annotations

import numpy as np

from agent.analysis.degradation import GROWTH_POWERS, MIN_AFTER, _every_change


def test_every_change_point_sums_match_their_definition_on_real_timestamps() -> None:
    rng = np.random.default_rng(5)
    for n, step in ((12, 60.0), (256, 60.0), (256, 3600.0)):
        t = 1.8e9 + np.cumsum(rng.uniform(0.5, 1.5, n)) * step  # uneven bins, as after thinning
        y = np.log(1.0 + np.maximum(t - t[n // 3], 0.0) / (n * step)) + rng.normal(0, 0.05, n)
        top = n - MIN_AFTER - 1
        s1, s2, s1y, ssr, _, _ = _every_change(t, y, top)
        for p_i, p in enumerate(GROWTH_POWERS):
            e = np.maximum(t[None, :] - t[: top + 1, None], 0.0) ** p  # (candidates, n)
            np.testing.assert_allclose(s1[p_i], e.sum(axis=1), rtol=1e-9)
            np.testing.assert_allclose(s2[p_i], (e * e).sum(axis=1), rtol=1e-9)
            np.testing.assert_allclose(s1y[p_i], e @ y, rtol=1e-9, atol=1e-9 * np.abs(e @ y).max())
            # the best free-slope line's residual sum of squares, fitted directly
            for k in (0, top // 2, top):
                coef = np.polyfit(e[k], y, 1)
                direct = float(((y - np.polyval(coef, e[k])) ** 2).sum())
                assert abs(ssr[p_i, k] - direct) <= 1e-6 * max(direct, 1e-3), (n, p, k)
