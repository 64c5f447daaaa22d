"""Quantities in titles and the unit-conflict filter, on hand-worked cases and a loop oracle."""

from __future__ import annotations

import numpy as np
import pytest

from shopee.errors import ShopeeError
from shopee.match import Pairs, parse_quantities, unit_conflict_mask

G, ML, MM, PCS = "mass", "volume", "length", "count"


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Susu Bubuk 400gr", {(G, 400)}),
        ("susu bubuk 400 GR", {(G, 400)}),
        ("Beras 1kg", {(G, 1000)}),
        ("beras 1000 gram", {(G, 1000)}),
        ("Kopi 250 grm", {(G, 250)}),
        ("vitamin 500mg", {(G, 0.5)}),
        ("Minyak Goreng 1,5 L", {(ML, 1500)}),
        ("minyak goreng 1.5L", {(ML, 1500)}),
        ("Minyak 1500 ml", {(ML, 1500)}),
        ("air 2 liter", {(ML, 2000)}),
        ("Kabel 5 m", {(MM, 5000)}),
        ("kain 150 cm", {(MM, 1500)}),
        ("Masker isi 10", {(PCS, 10)}),
        ("masker 10 pcs", {(PCS, 10)}),
        ("masker isi 10 pcs", {(PCS, 10)}),
        ("shampoo 12 sachet", {(PCS, 12)}),
        # 2 x 200 g: the per-unit quantity and the total (400 g) are both stated.
        ("Biskuit 2 x 200 gr", {(G, 200), (G, 400)}),
        ("biskuit 2x200gr", {(G, 200), (G, 400)}),
        # Lengths: "20 x 30 cm" is 20 cm by 30 cm, both lengths.
        ("tas 20 x 30 cm", {(MM, 200), (MM, 300)}),
        # "1.000 ml" may be 1 ml or (Indonesian thousands) 1000 ml; "0.500 kg" is only 0.5 kg.
        ("sabun 1.000 ml", {(ML, 1), (ML, 1000)}),
        ("gula 0.500 kg", {(G, 500)}),
        ("isi 500ml", {(ML, 500)}),  # a unit follows: not a count
        ("Redmi 4G 64GB", set()),  # a phone network, and gigabytes are no unit here
        ("kabel 5 line", set()),  # "l" runs on into letters: no litre
        ("Samsung A12 4/64", set()),
        ("kaos polos", set()),
        ("", set()),
    ],
)
def test_parse_quantities(title: str, expected: set) -> None:
    assert parse_quantities(title) == {(d, float(v)) for d, v in expected}


def test_non_text_titles_state_nothing() -> None:
    assert parse_quantities(None) == frozenset()  # type: ignore[arg-type]
    assert parse_quantities(float("nan")) == frozenset()  # type: ignore[arg-type]


HAND = [
    # (title a, title b, conflict)
    ("Susu 200 gr", "susu 400gr", True),  # same dimension, different quantity
    ("Beras 1 kg", "beras 1000 gr", False),  # the same quantity in other units
    ("Minyak 1,5 L", "minyak 1500 ml", False),
    ("Minyak 1,5 L", "minyak 2 L", True),
    ("Susu 200 gr", "susu isi 10 pcs", False),  # different dimensions
    ("Susu 200 gr", "susu coklat", False),  # one states nothing
    ("biskuit 2 x 200 gr", "biskuit 400 gr", False),  # the total
    ("biskuit 2 x 200 gr", "biskuit 200gr", False),  # the per-unit quantity
    ("biskuit 2 x 200 gr", "biskuit 300gr", True),
    ("kopi 200 gr isi 10", "kopi 200gr isi 20", True),  # mass agrees, count does not
    ("kopi 200 gr 10 pcs", "kopi 10 pcs 200gr", False),
    ("sabun 1.000 ml", "sabun 1 L", False),
    ("masker 50 pcs", "masker isi 50", False),
    ("masker 50 pcs", "masker isi 25", True),
]


def test_unit_conflict_mask_hand_cases() -> None:
    titles = [t for a, b, _ in HAND for t in (a, b)]
    rows = np.arange(0, len(titles), 2)
    pairs = Pairs(
        np.concatenate([rows, rows + 1]), np.concatenate([rows + 1, rows]), np.ones(len(titles)), len(titles)
    )
    mask = unit_conflict_mask(pairs, titles)
    expected = [c for _, _, c in HAND] * 2  # both directions
    assert mask.tolist() == expected


def test_unit_conflict_mask_equals_loop_oracle() -> None:
    rng = np.random.default_rng(0)
    pieces = [
        "200 gr",
        "400gr",
        "0,2 kg",
        "1 kg",
        "1000 gram",
        "1,5 L",
        "1500 ml",
        "2 L",
        "isi 10",
        "10 pcs",
        "20 pcs",
        "2 x 200 gr",
        "5 m",
        "500 cm",
        "kopi",
        "susu",
        "original",
        "murah",
    ]
    titles = [" ".join(rng.choice(pieces, size=rng.integers(1, 4))) for _ in range(80)]
    n = len(titles)
    keys = rng.choice(n * n, size=1500, replace=False)
    rows, cols = keys // n, keys % n
    keep = rows != cols
    pairs = Pairs(rows[keep], cols[keep], rng.random(keep.sum()), n)
    mask = unit_conflict_mask(pairs, titles)
    expected = []
    for r, c in zip(pairs.rows, pairs.cols, strict=True):
        qa, qb = parse_quantities(titles[r]), parse_quantities(titles[c])
        dims = {d for d, _ in qa} & {d for d, _ in qb}
        expected.append(
            any(not ({v for d2, v in qa if d2 == d} & {v for d2, v in qb if d2 == d}) for d in dims)
        )
    assert mask.tolist() == expected
    assert 0.1 < mask.mean() < 0.9


def test_unit_conflict_mask_edges() -> None:
    empty = Pairs(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0), 2)
    assert unit_conflict_mask(empty, ["a 1 kg", "b 2 kg"]).tolist() == []
    none = Pairs(np.array([0, 1]), np.array([1, 0]), np.ones(2), 2)
    assert unit_conflict_mask(none, ["kaos", "kaos polos"]).tolist() == [False, False]
    with pytest.raises(ShopeeError, match="3 titles for 2 rows"):
        unit_conflict_mask(none, ["a", "b", "c"])
