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
        b = 0.0 if np.ptp(x) == 0 else float(np.polyfit(x, y, 1)[0])
        a = float(y.mean() - b * x.mean())
        curves[path] = {"a": round(a, 6), "b": round(b, 6), "min": float(y.min()), "max": float(y.max())}
    return {
        "rows": [int(r) for r in rows],
        "values": {k: [float(v) for v in vs] for k, vs in values.items()},
        "fit": curves,
    }


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
