"""Quantities stated in titles ("400gr", "1,5 L", "isi 10") and the unit-conflict filter.

Each quantity becomes ``(dimension, value in the dimension's base unit)``: mass in grams, volume
in millilitres, length in millimetres, count in pieces, so "1kg" and "1000 gr" are the same
quantity, as are "1,5 L", "1.5L" and "1500 ml". Rules, kept simple on purpose:

- A number is digits with at most one decimal separator, "." or ","; the unit may follow after
  spaces ("400 gr") or directly ("400gr") and must not run on into letters ("5 line" is no litre).
- A separator followed by exactly three digits may be a thousands separator ("1.000 ml" in
  Indonesian): both readings are kept (1 and 1000 ml), unless the integer part is 0 ("0.500 kg").
- A multiplier just before the number ("2 x 200 gr", "2x200gr") adds the total (400 g) to the
  per-unit quantity (200 g); for lengths ("20 x 30 cm") both numbers are kept as lengths instead.
  A multiplier after the unit ("200 gr x 2") is not read.
- "isi 10" ("contents: 10") is a count of 10 unless a unit follows the number ("isi 500ml").
- "2g"..."5g" written without a space are read as phone networks (4G), not grams.

Two titles conflict when both state a quantity of the same dimension and share no value of that
dimension: "200 gr" vs "400gr" conflict; "1 kg" vs "1000 gr" do not; "200 gr" vs "10 pcs" do not
(different dimensions); a title stating nothing never conflicts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from shopee.errors import ShopeeError
from shopee.match.pairs import Pairs

DIMENSIONS = ("mass", "volume", "length", "count")

_FACTORS: dict[str, tuple[str, float]] = {}
for _names, _dim, _factor in [
    (("mg",), "mass", 0.001),
    (("g", "gr", "grs", "grm", "gm", "gram", "grams", "gramm", "gramme"), "mass", 1.0),
    (("kg", "kgs", "kilo", "kilos", "kilogram", "kilograms", "kilogramme"), "mass", 1000.0),
    (("ml", "mls", "mililiter", "milliliter", "millilitre", "cc"), "volume", 1.0),
    (("l", "lt", "ltr", "liter", "litre", "liters", "litres"), "volume", 1000.0),
    (("mm",), "length", 1.0),
    (("cm",), "length", 10.0),
    (("m", "meter", "metre", "meters", "metres"), "length", 1000.0),
    (("pcs", "pc", "piece", "pieces", "sachet", "sachets", "lembar", "biji", "butir"), "count", 1.0),
]:
    for _name in _names:
        _FACTORS[_name] = (_dim, _factor)

_UNIT = "|".join(sorted((re.escape(u) for u in _FACTORS), key=len, reverse=True))
_NUMBER = r"\d+(?:[.,]\d+)?"
_END = r"(?![a-wyz0-9])"  # the unit ends here ("x" may follow: "500mlx2")
_QUANTITY = re.compile(
    rf"(?<![0-9a-wyz.,])(?:(?P<times>{_NUMBER})\s*[x×*]\s*)?(?P<num>{_NUMBER})(?P<space>\s*)(?P<unit>{_UNIT}){_END}"
)
_ISI = re.compile(rf"\bisi\s*:?\s*(?P<num>\d+)(?![\d.,])(?!\s*(?:{_UNIT}){_END})")
_NETWORKS = {"2", "3", "4", "5"}


def _readings(number: str) -> list[float]:
    """The values a written number may mean (two when the separator may group thousands)."""
    for sep in ".,":
        if sep in number:
            whole, frac = number.split(sep)
            decimal = float(f"{whole}.{frac}")
            if len(frac) == 3 and int(whole) > 0:
                return [decimal, float(whole + frac)]
            return [decimal]
    return [float(number)]


def parse_quantities(title: str) -> frozenset[tuple[str, float]]:
    """``{(dimension, value in base unit)}`` stated in ``title``; see the module doc for the rules."""
    if not isinstance(title, str) or not title:
        return frozenset()
    text = title.lower()
    found: set[tuple[str, float]] = set()
    for m in _QUANTITY.finditer(text):
        unit, num, times = m["unit"], m["num"], m["times"]
        if unit == "g" and not m["space"] and times is None and num in _NETWORKS:
            continue  # "4g": a phone network
        dim, factor = _FACTORS[unit]
        for value in _readings(num):
            found.add((dim, round(value * factor, 6)))
            if times is not None:
                for t in _readings(times):
                    extra = t * factor if dim == "length" else t * value * factor
                    found.add((dim, round(extra, 6)))
    for m in _ISI.finditer(text):
        found.add(("count", float(m["num"])))
    return frozenset(found)


def _quantity_table(titles: list[object]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``(owner title, dimension index, value code)``, sorted by owner."""
    memo: dict[object, frozenset] = {}
    code_of: dict[tuple[str, float], int] = {}
    owners, dims, codes = [], [], []
    dim_index = {d: i for i, d in enumerate(DIMENSIONS)}
    for i, title in enumerate(titles):
        if title not in memo:
            memo[title] = parse_quantities(title) if isinstance(title, str) else frozenset()
        for quantity in memo[title]:
            owners.append(i)
            dims.append(dim_index[quantity[0]])
            codes.append(code_of.setdefault(quantity, len(code_of)))
    return tuple(np.asarray(v, dtype=np.int64) for v in (owners, dims, codes))


def unit_conflict_mask(pairs: Pairs, titles: pd.Series | Sequence[str] | np.ndarray) -> np.ndarray:
    """Boolean per pair: True where the two titles state quantities of one dimension and share no
    value of that dimension (see the module doc). Vectorized over pairs; titles parsed once."""
    return unit_relations(pairs, titles)[1]


def unit_relations(
    pairs: Pairs, titles: pd.Series | Sequence[str] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(agree, conflict)`` per pair: agree where the two titles state a quantity of one
    dimension in common (the same value), conflict as ``unit_conflict_mask``. A pair may do both
    ("2 x 200 gr" against "400 gr 10 pcs") or neither."""
    titles = list(titles)
    if len(titles) != pairs.n:
        raise ShopeeError(f"unit filter: {len(titles)} titles for {pairs.n} rows")
    agree = np.zeros(len(pairs), dtype=bool)
    out = np.zeros(len(pairs), dtype=bool)
    if not len(pairs):
        return agree, out
    owner, dim, code = _quantity_table(titles)
    if not len(owner):
        return agree, out
    n = pairs.n
    has = np.zeros((n, len(DIMENSIONS)), dtype=bool)
    has[owner, dim] = True
    both = has[pairs.rows] & has[pairs.cols]
    idx = np.flatnonzero(both.any(axis=1))
    if not len(idx):
        return agree, out
    starts = np.searchsorted(owner, np.arange(n), side="left")
    counts = np.searchsorted(owner, np.arange(n), side="right") - starts
    rows, cols = pairs.rows[idx], pairs.cols[idx]
    reps = counts[rows]
    which = np.repeat(np.arange(len(idx)), reps)  # candidate pair of each (pair, quantity)
    offsets = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
    q = np.repeat(starts[rows], reps) + offsets  # the row's quantities
    n_codes = int(code.max()) + 1
    title_keys = np.sort(owner * n_codes + code)
    wanted = cols[which] * n_codes + code[q]  # does the column's title state the same quantity?
    pos = np.minimum(np.searchsorted(title_keys, wanted), len(title_keys) - 1)
    found = title_keys[pos] == wanted
    shared = np.zeros((len(idx), len(DIMENSIONS)), dtype=bool)
    shared[which[found], dim[q][found]] = True
    out[idx] = (both[idx] & ~shared).any(axis=1)
    agree[idx] = (both[idx] & shared).any(axis=1)
    return agree, out
