"""Thresholds that follow the number of rows matched.

The denser the set, the more false neighbours a fixed threshold lets in: a rule tuned at the
density of train (34,250 rows) is too loose for the 70,000-row test, one tuned within a fold (6,850)
more so. ``optimize-ensemble`` re-tunes the rule's thresholds on nested subsets of the dense CV
sets (25, 50, 75 and 100 % of their groups) and fits each tunable value as ``a + b ln(n)`` of the
number of rows n searched: a simple model, monotone in n. ``params_at_rows`` evaluates the fit at
the row count a prediction has (the notebook learns it only when it runs), within the range seen
during fitting widened by ``MARGIN`` (a threshold) or ``MARGIN_BITS`` (a phash distance).

A tunable is named by a path: ``members.<name>.threshold``, ``members.<name>.blend.<stage>``,
``members.<name>.max_distance``, ``min2.threshold``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MARGIN = 0.1  # how far past the fitted range a threshold may move when extrapolating
MARGIN_BITS = 2  # the same for a phash distance


def tunables(params: Mapping[str, Any]) -> list[str]:
    """The paths of every tunable value of ``params``."""
    paths = []
    for m in params["members"]:
        if m["type"] == "phash":
            paths.append(f"members.{m['name']}.max_distance")
            continue
        paths.append(f"members.{m['name']}.threshold")
        paths += [f"members.{m['name']}.blend.{j}" for j in range(len(m.get("blend", [])))]
    if params.get("min2") is not None:
        paths.append("min2.threshold")
    return paths


def _member(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    for m in params["members"]:
        if m["name"] == name:
            return m
    raise KeyError(f"no member {name!r}")


def get_value(params: Mapping[str, Any], path: str) -> float:
    parts = path.split(".")
    if parts[0] == "min2":
        return params["min2"]["threshold"]
    member = _member(params, parts[1])
    return member["blend"][int(parts[3])] if parts[2] == "blend" else member[parts[2]]


def set_value(params: dict[str, Any], path: str, value: float) -> None:
    parts = path.split(".")
    if parts[0] == "min2":
        params["min2"]["threshold"] = value
        return
    member = _member(params, parts[1])
    if parts[2] == "blend":
        member["blend"][int(parts[3])] = value
    else:
        member[parts[2]] = value


def fit(rows: Sequence[int], values: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """The curve: for each path, least squares of ``a + b ln(rows)`` through its values."""
    x = np.log(np.asarray(rows, dtype=np.float64))
    curves = {}
    for path, ys in values.items():
        y = np.asarray(ys, dtype=np.float64)
        a, b = _line(x, y)
        curves[path] = {"a": round(a, 6), "b": round(b, 6), "min": float(y.min()), "max": float(y.max())}
    return {
        "rows": [int(r) for r in rows],
        "values": {k: [float(v) for v in vs] for k, vs in values.items()},
        "fit": curves,
    }


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) of the least-squares line ``a + b x`` (flat through the mean when x does not vary)."""
    b = 0.0 if np.ptp(x) == 0 else float(np.polyfit(x, y, 1)[0])
    return float(y.mean() - b * x.mean()), b


def optimism(gaps: Sequence[float], weights: Sequence[float]) -> dict[str, float]:
    """What tuning on the scored rows adds, from each fold's gap (its F1 at the thresholds tuned
    on every fold less its held-out F1): the weighted mean and its standard error over folds."""
    if not gaps:
        return {"f1": 0.0, "se": 0.0}
    se = float(np.std(gaps, ddof=1) / math.sqrt(len(gaps))) if len(gaps) > 1 else 0.0
    return {"f1": round(float(np.average(gaps, weights=weights)), 6), "se": round(se, 6)}


def f1_at(curve: Mapping[str, Any], n: int) -> dict[str, Any] | None:
    """The F1 expected on a set of ``n`` rows of unseen groups, with its standard error.

    The F1 the nested subsets reached (each with its thresholds re-tuned; out of sample in
    curves written since 2026-12-03, ``curve["f1_scored"]``) is fitted as ``a + b ln(rows)`` and
    evaluated at ``n``; ``curve["optimism"]`` (what tuning on the scored rows still adds at the
    full size, against the held-out search) is taken off. The standard error adds, in quadrature,
    the spread of the folds' own fits at ``n``, the line's own prediction error and the optimism's
    spread over folds: with two folds it is a rough figure. None for a curve without F1s.
    """
    if not curve or len(curve.get("f1") or []) < 2:
        return None
    x, y = np.log(np.asarray(curve["rows"], dtype=np.float64)), np.asarray(curve["f1"], dtype=np.float64)
    a, b = _line(x, y)
    x0 = math.log(max(n, 2))
    raw = a + b * x0
    m = len(x)
    se_fit = 0.0
    if m > 2 and np.ptp(x) > 0:
        s = math.sqrt(float(((y - (a + b * x)) ** 2).sum()) / (m - 2))
        se_fit = s * math.sqrt(1 / m + (x0 - x.mean()) ** 2 / float(((x - x.mean()) ** 2).sum()))
    folds = [
        _line(np.log(np.asarray(r, dtype=np.float64)), np.asarray(f, dtype=np.float64))
        for r, f in zip(curve.get("rows_folds", {}).values(), curve.get("f1_folds", {}).values(), strict=True)
        if len(f) >= 2
    ]
    at_n = [fa + fb * x0 for fa, fb in folds]
    se_folds = float(np.std(at_n, ddof=1) / math.sqrt(len(at_n))) if len(at_n) > 1 else 0.0
    optimism = curve.get("optimism") or {}
    drop = float(optimism.get("f1", 0.0))
    se = math.sqrt(se_fit**2 + se_folds**2 + float(optimism.get("se", 0.0)) ** 2)
    return {
        "rows": int(n),
        "f1": round(min(max(raw - drop, 0.0), 1.0), 4),
        "se": round(se, 4),
        "fitted": round(raw, 4),
        "optimism": round(drop, 4) if optimism else None,
        "slope": round(b, 4),
    }


def describe_f1_at(estimate: Mapping[str, Any] | None) -> str:
    """``CV F1 expected at 70000 rows: 0.7712 +- 0.0081 (...)``, for logs and the notebook."""
    if not estimate:
        return "no F1 expected by size (no size curve with F1s: optimize-ensemble --by-size)"
    corrected = (
        f"less what is left in sample against the held-out search, {estimate['optimism']:+.4f}"
        if estimate["optimism"] is not None
        else "not corrected: no held-out estimate"
    )
    of = f" of the {estimate['of']}" if estimate.get("of") else ""
    carried = f"; {estimate['carried_over']}" if estimate.get("carried_over") else ""
    if estimate.get("selection_gain"):
        carried += (
            f"; early stopping chose epochs on these rows: {estimate['selection_gain']:+.4f} of F1 a fold "
            "against its last epoch, not taken off"
        )
    return (
        f"CV F1{of} expected at {estimate['rows']} rows: {estimate['f1']:.4f} +- {estimate['se']:.4f} "
        f"(the subsets' F1 fitted as a + b ln(rows), {estimate['slope']:+.4f} per ln, {corrected}{carried})"
    )


def value_at(curve: Mapping[str, Any], path: str, n: int) -> float:
    """The fitted value of ``path`` at ``n`` rows, within the fitted range widened by the margins."""
    c = curve["fit"][path]
    value = c["a"] + c["b"] * math.log(max(n, 2))
    if path.endswith(".max_distance"):
        low, high = max(0, c["min"] - MARGIN_BITS), min(64, c["max"] + MARGIN_BITS)
        return int(round(min(max(value, low), high)))
    low, high = c["min"] - MARGIN, c["max"] + MARGIN
    if ".blend." in path:
        low, high = max(low, 0.01), min(high, 0.99)
    elif path == "min2.threshold":
        low, high = max(low, 0.0), min(high, 1.0)
    else:
        low, high = max(low, -1.0), min(high, 1.0)
    return round(min(max(value, low), high), 4)


def params_at_rows(params: Mapping[str, Any], curve: Mapping[str, Any] | None, n: int) -> dict[str, Any]:
    """``params`` with every fitted tunable evaluated at ``n`` rows (unchanged without a curve)."""
    out = copy.deepcopy(dict(params))
    if not curve:
        return out
    for path in tunables(out):
        if path in curve["fit"]:
            set_value(out, path, value_at(curve, path, n))
    return out


def describe(params: Mapping[str, Any]) -> str:
    """``exp003_txt >= 0.62 (blend 0.7), tfidf >= 0.81, phash <= 4 bits, min2 0.45``: for logs."""
    parts = []
    for m in params["members"]:
        if m["type"] == "phash":
            parts.append(f"{m['name']} <= {m['max_distance']} bits")
        else:
            blend = f" (blend {', '.join(f'{t:g}' for t in m['blend'])})" if m.get("blend") else ""
            parts.append(f"{m['name']} >= {m['threshold']:g}{blend}")
    if params.get("min2"):
        parts.append(f"min2 {params['min2']['member']} >= {params['min2']['threshold']:g}")
    return ", ".join(parts)
