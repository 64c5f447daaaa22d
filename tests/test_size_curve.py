"""Thresholds that follow the number of rows: the fit, its evaluation and its limits."""

from __future__ import annotations

import math

import pytest

from shopee.size_curve import describe, fit, params_at_rows, tunables, value_at

PARAMS = {
    "version": 1,
    "k": 51,
    "members": [
        {"name": "txt", "type": "embedding", "source": "e:txt", "threshold": 0.6, "blend": [0.7]},
        {"name": "phash", "type": "phash", "max_distance": 4},
    ],
    "min2": {"member": "txt", "threshold": 0.3},
    "unit_filter": False,
}


def test_the_fit_recovers_a_log_law_and_evaluates_it() -> None:
    rows = [750, 1500, 2250, 3000]
    law = {"members.txt.threshold": [0.5 + 0.02 * math.log(n) for n in rows]}
    curve = fit(rows, law)
    assert curve["fit"]["members.txt.threshold"]["a"] == pytest.approx(0.5, abs=1e-6)
    assert curve["fit"]["members.txt.threshold"]["b"] == pytest.approx(0.02, abs=1e-6)
    assert value_at(curve, "members.txt.threshold", 1000) == pytest.approx(
        0.5 + 0.02 * math.log(1000), abs=1e-4
    )


def test_extrapolation_stays_near_what_was_fitted() -> None:
    curve = fit([1000, 2000], {"members.txt.threshold": [0.6, 0.7], "members.phash.max_distance": [2, 6]})
    # a steep law: far beyond the fitted sizes it is held to the fitted range + the margin
    assert value_at(curve, "members.txt.threshold", 10**9) == pytest.approx(0.8)
    assert value_at(curve, "members.txt.threshold", 2) == pytest.approx(0.5)
    assert value_at(curve, "members.phash.max_distance", 10**9) == 8  # bits: whole, +2 at most
    assert isinstance(value_at(curve, "members.phash.max_distance", 1500), int)


def test_params_at_rows_moves_only_fitted_values() -> None:
    assert tunables(PARAMS) == [
        "members.txt.threshold",
        "members.txt.blend.0",
        "members.phash.max_distance",
        "min2.threshold",
    ]
    curve = fit([1000, 4000], {"members.txt.threshold": [0.6, 0.7]})
    at = params_at_rows(PARAMS, curve, 4000)
    assert at["members"][0]["threshold"] == pytest.approx(0.7)
    assert at["members"][0]["blend"] == [0.7] and at["min2"]["threshold"] == 0.3  # not fitted: unchanged
    assert PARAMS["members"][0]["threshold"] == 0.6  # a copy, not the original
    assert params_at_rows(PARAMS, None, 4000) == PARAMS
    assert describe(at) == "txt >= 0.7 (blend 0.7), phash <= 4 bits, min2 txt >= 0.3"
