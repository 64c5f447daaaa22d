"""The matching rule: params validation, blending, union, min2, unit filter, cap, and a
brute-force oracle of the whole rule written with plain loops over dense similarities."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from shopee.errors import ShopeeError
from shopee.match import (
    PARAMS_VERSION,
    Pairs,
    combine,
    knn_pairs,
    match,
    matches_to_strings,
    member_candidates,
    union_pairs,
    validate_params,
)
from shopee.match.rules import blend_embeddings
from shopee.metrics import score_pairs, score_sets

# Four unit vectors with hand-picked cosines: 01 0.8, 02 0.6, 03 0, 12 0.48, 13 0, 23 0.8.
E = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.6, 0.0, 0.8], [0.0, 0.0, 1.0]])


def emb(name: str, threshold: float, blend: list[float] | None = None, source: str | None = None) -> dict:
    return {
        "name": name,
        "type": "embedding",
        "source": source or name,
        "threshold": threshold,
        "blend": blend or [],
    }


def params_of(*members: dict, k: int = 51, min2: dict | None = None, unit_filter: bool = False) -> dict:
    return {
        "version": PARAMS_VERSION,
        "k": k,
        "members": list(members),
        "min2": min2,
        "unit_filter": unit_filter,
    }


def row_lists(pairs: Pairs) -> list[list[int]]:
    bounds = pairs.row_bounds()
    return [pairs.cols[bounds[i] : bounds[i + 1]].tolist() for i in range(pairs.n)]


def assert_well_formed(pairs: Pairs, k: int) -> None:
    assert np.all(np.diff(pairs.rows) >= 0) and not np.any(pairs.rows == pairs.cols)
    bounds = pairs.row_bounds()
    for i in range(pairs.n):
        cols, sims = pairs.cols[bounds[i] : bounds[i + 1]], pairs.sims[bounds[i] : bounds[i + 1]]
        assert len(cols) <= k - 1 and len(set(cols.tolist())) == len(cols)
        assert np.all(np.diff(sims) <= 0)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

GOOD = {
    "version": 1,
    "k": 51,
    "members": [
        {"name": "fused", "type": "embedding", "source": "fused", "threshold": 0.45, "blend": [0.6, 0.5]},
        {"name": "txt", "type": "embedding", "source": "txt", "threshold": 0.6, "blend": []},
        {"name": "tfidf", "type": "tfidf", "threshold": 0.6, "analyzer": "word"},
        {"name": "phash", "type": "phash", "max_distance": 0},
    ],
    "min2": {"member": "fused", "threshold": 0.3},
    "unit_filter": False,
}


def test_validate_params_normalizes_and_copies() -> None:
    params = validate_params(GOOD)
    assert json.loads(json.dumps(params)) == params
    assert params["members"][2] == {
        "name": "tfidf",
        "type": "tfidf",
        "threshold": 0.6,
        "analyzer": "word",
        "min_sim": 0.2,
    }
    params["members"][0]["blend"].append(0.1)
    assert GOOD["members"][0]["blend"] == [0.6, 0.5]
    minimal = validate_params(
        {"version": 1, "members": [{"name": "e", "type": "embedding", "source": "x", "threshold": 0.5}]}
    )
    assert minimal == {
        "version": 1,
        "k": 51,
        "unit_filter": False,
        "min2": None,
        "members": [{"name": "e", "type": "embedding", "source": "x", "threshold": 0.5, "blend": []}],
    }


def _set(path: tuple, value):
    def change(p: dict) -> None:
        target = p
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set(("version",), KeyError), r"version: missing"),
        (_set(("version",), 2), r"version: 2 is not supported"),
        (_set(("k",), 1), r"k: 1 is outside 2\.\.51"),
        (_set(("k",), 52), r"k: 52 is outside"),
        (_set(("k",), "51"), r"k: expected an integer"),
        (_set(("members",), []), r"members: expected a non-empty list"),
        (_set(("members", 1, "threshold"), 1.5), r"members\[1\]\.threshold: 1\.5 is outside \[-1, 1\]"),
        (_set(("members", 1, "threshold"), -1.01), r"members\[1\]\.threshold: -1\.01 is outside"),
        (_set(("members", 1, "threshold"), math.nan), r"members\[1\]\.threshold: expected a number"),
        (_set(("members", 1, "threshold"), True), r"members\[1\]\.threshold: expected a number"),
        (_set(("members", 1, "threshold"), KeyError), r"members\[1\]\.threshold: missing"),
        (_set(("members", 0, "type"), "clip"), r"members\[0\]\.type: unknown member type 'clip'"),
        (_set(("members", 0, "source"), KeyError), r"members\[0\]\.source: missing"),
        (_set(("members", 0, "blend"), 0.5), r"members\[0\]\.blend: expected a list"),
        (_set(("members", 0, "blend"), [0.5, 2]), r"members\[0\]\.blend\[1\]: 2 is outside"),
        (_set(("members", 1, "name"), "fused"), r"members\[1\]\.name: duplicate member name 'fused'"),
        (_set(("members", 1, "name"), ""), r"members\[1\]\.name: expected a non-empty string"),
        (_set(("members", 2, "analyzer"), "chars"), r"members\[2\]\.analyzer: 'chars'"),
        (_set(("members", 2, "ngram_range"), [3]), r"members\[2\]\.ngram_range: expected \[low, high\]"),
        (_set(("members", 3, "max_distance"), -1), r"members\[3\]\.max_distance: -1 is outside 0\.\.64"),
        (
            _set(("members", 3, "threshold"), 0.5),
            r"members\[3\]\.threshold: unknown field for a phash member",
        ),
        (_set(("members", 0, "treshold"), 0.5), r"members\[0\]\.treshold: unknown field"),
        (_set(("min2", "member"), "tfidf"), r"min2\.member: 'tfidf' is not an embedding member"),
        (_set(("min2", "member"), "nope"), r"min2\.member: 'nope' is not an embedding member"),
        (_set(("min2", "threshold"), -2), r"min2\.threshold: -2 is outside"),
        (_set(("min2",), 0.3), r"min2: expected null or an object"),
        (_set(("unit_filter",), "yes"), r"unit_filter: expected true or false"),
        (_set(("treshold",), 0.5), r"treshold: unknown field"),
    ],
)
def test_validate_params_names_the_bad_field(change, message: str) -> None:
    params = copy.deepcopy(GOOD)
    change(params)
    with pytest.raises(ShopeeError, match=r"^matching params: " + message):
        validate_params(params)


def test_validate_params_rejects_non_objects() -> None:
    with pytest.raises(ShopeeError, match="params: expected an object"):
        validate_params([1, 2])
    with pytest.raises(ShopeeError, match=r"members\[0\]: expected an object"):
        validate_params({"version": 1, "members": ["fused"]})


# --------------------------------------------------------------------------------------------
# Blending
# --------------------------------------------------------------------------------------------


def test_blend_stage_by_hand() -> None:
    # Stage threshold 0.5 keeps the neighbours 0-1 (0.8), 0-2 (0.6), 2-3 (0.8); 1-2 (0.48) is out.
    #   b0 = normalize(e0 + 0.8 e1 + 0.6 e2) = (2.0, 0.48, 0.48) / sqrt(4.4608)
    #   b1 = normalize(e1 + 0.8 e0)          = (1.6, 0.6, 0.0)   / sqrt(2.92)
    #   b2 = normalize(e2 + 0.6 e0 + 0.8 e3) = (1.2, 0.0, 1.6)   / 2 = (0.6, 0, 0.8)
    #   b3 = normalize(e3 + 0.8 e2)          = (0.48, 0.0, 1.64) / sqrt(2.92)
    b = np.array(
        [
            np.array([2.0, 0.48, 0.48]) / math.sqrt(4.4608),
            np.array([1.6, 0.6, 0.0]) / math.sqrt(2.92),
            [0.6, 0.0, 0.8],
            np.array([0.48, 0.0, 1.64]) / math.sqrt(2.92),
        ]
    )
    neighbours = Pairs(
        np.array([0, 0, 1, 2, 2, 3]),
        np.array([1, 2, 0, 3, 0, 2]),
        np.array([0.8, 0.6, 0.8, 0.8, 0.6, 0.8], dtype=np.float32),
        4,
    )
    np.testing.assert_allclose(blend_embeddings(E.astype(np.float32), neighbours), b, atol=1e-6)

    # The member does the same from raw (unnormalized) embeddings, then searches again:
    #   b0.b1 = (3.2 + 0.288) / sqrt(4.4608 * 2.92) = 0.96645,  b0.b2 = 1.584 / 2.11206 = 0.74998,
    #   b2.b3 = 1.6 / 1.70880 = 0.93633,  b0.b3 = 1.7472 / 3.60909 = 0.48411,
    #   b1.b2 = 0.96 / 1.70880 = 0.56180,  b1.b3 = 0.768 / 2.92 = 0.26301.
    member = emb("e", 0.9, blend=[0.5])
    pairs = member_candidates(member, 4, embeddings={"e": E * [[3.0], [0.5], [2.0], [7.0]]}, k=51)
    assert row_lists(pairs) == [[1, 2, 3], [0, 2, 3], [3, 0, 1], [2, 0, 1]]
    by_row = [[0.96645, 0.74998, 0.48411], [0.96645, 0.56180, 0.26301], [0.93633, 0.74998, 0.56180]]
    by_row.append([0.93633, 0.48411, 0.26301])
    np.testing.assert_allclose(pairs.sims, np.ravel(by_row), atol=1e-5)
    # Candidates come before the member's threshold: the same for any threshold.
    again = member_candidates(emb("e", -0.3, blend=[0.5]), 4, embeddings={"e": E}, k=51)
    np.testing.assert_array_equal(again.cols, pairs.cols)

    # A second stage (0.9) blends only 0-1 (0.96645) and 2-3 (0.93633):
    #   c0 = normalize(b0 + 0.96645 b1), c1 = normalize(b1 + 0.96645 b0), c2 = normalize(b2 + 0.93633 b3), ...
    c = np.array([b[0] + 0.96645 * b[1], b[1] + 0.96645 * b[0], b[2] + 0.93633 * b[3], b[3] + 0.93633 * b[2]])
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    two = member_candidates(emb("e", 0.0, blend=[0.5, 0.9]), 4, embeddings={"e": E}, k=51)
    expected = c @ c.T
    np.testing.assert_allclose(two.sims, expected[two.rows, two.cols], atol=1e-5)


def test_blend_keeps_only_k_minus_1_neighbours() -> None:
    # With k = 2 each row blends with its single nearest neighbour only: row 0 with row 1 (0.8), not 2.
    pairs = member_candidates(emb("e", 0.0, blend=[0.5]), 4, embeddings={"e": E}, k=2)
    b0 = E[0] + 0.8 * E[1]
    b0 /= np.linalg.norm(b0)
    b1 = E[1] + 0.8 * E[0]  # row 1's nearest is row 0
    b1 /= np.linalg.norm(b1)
    assert pairs.counts().tolist() == [1, 1, 1, 1]
    assert pairs.cols[0] == 1
    np.testing.assert_allclose(pairs.sims[0], b0 @ b1, atol=1e-6)


# --------------------------------------------------------------------------------------------
# combine: thresholds, union, min2, unit filter, cap
# --------------------------------------------------------------------------------------------


def test_union_keeps_the_highest_similarity() -> None:
    a = Pairs(np.array([0, 0, 1]), np.array([1, 2, 0]), np.array([0.5, 0.4, 0.5], dtype=np.float32), 3)
    b = Pairs(np.array([0, 2]), np.array([2, 1]), np.array([0.9, 0.3], dtype=np.float32), 3)
    union = union_pairs([a, b], 3)
    assert list(zip(union.rows.tolist(), union.cols.tolist(), strict=True)) == [
        (0, 2),
        (0, 1),
        (1, 0),
        (2, 1),
    ]
    np.testing.assert_allclose(union.sims, [0.9, 0.5, 0.5, 0.3])
    assert row_lists(union_pairs([a, b], 3, k=1)) == [[2], [0], [1]]


def test_union_of_members() -> None:
    # Embedding member at 0.7: 0-1 (0.8), 2-3 (0.8). TF-IDF at 0.5: titles 0 and 2 are the same (1.0).
    # A second embedding source gives 0-1 a similarity of 0.9: the union keeps 0.9.
    titles = ["red shirt", "blue bag", "red shirt", "green cup"]
    other = np.array([[1.0, 0.0], [0.9, math.sqrt(1 - 0.81)], [-1.0, 0.0], [0.0, -1.0]])
    params = params_of(emb("e", 0.7), emb("o", 0.85), {"name": "t", "type": "tfidf", "threshold": 0.5})
    pairs = match(params, 4, embeddings={"e": E, "o": other}, titles=titles)
    assert row_lists(pairs) == [[2, 1], [0], [0, 3], [2]]
    np.testing.assert_allclose(pairs.sims, [1.0, 0.9, 0.9, 1.0, 0.8, 0.8], atol=1e-6)
    assert_well_formed(pairs, 51)


def test_min2_by_hand() -> None:
    # At 0.85 the embedding member matches nothing; TF-IDF pairs 0 and 2. Rows 1 and 3 are alone:
    # min2 gives each its nearest embedding neighbour, row 1 -> 0 (0.8) and row 3 -> 2 (0.8),
    # when the min2 threshold is at most 0.8.
    titles = ["red shirt", "blue bag", "red shirt", "green cup"]
    members = (emb("e", 0.85), {"name": "t", "type": "tfidf", "threshold": 0.5})
    plain = match(params_of(*members), 4, embeddings={"e": E}, titles=titles)
    assert row_lists(plain) == [[2], [], [0], []]
    low = match(
        params_of(*members, min2={"member": "e", "threshold": 0.7}), 4, embeddings={"e": E}, titles=titles
    )
    assert row_lists(low) == [[2], [0], [0], [2]]
    np.testing.assert_allclose(low.sims, [1.0, 0.8, 1.0, 0.8], atol=1e-6)
    high = match(
        params_of(*members, min2={"member": "e", "threshold": 0.81}), 4, embeddings={"e": E}, titles=titles
    )
    assert row_lists(high) == [[2], [], [0], []]


def test_cap_keeps_the_k_minus_1_most_similar() -> None:
    # 12 rows at angles 0, 0.05, ..., 0.55 rad: similarity falls with the angle difference.
    angles = 0.05 * np.arange(12)
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    y = x[::-1].copy()  # the same geometry, rows reversed
    # Row 6 keeps 5 and 7 (0.05 rad), then 4 and 8 (0.1 rad), ...: for k = 3 and 5 no tie at the cut.
    expected_row6 = {3: {5, 7}, 5: {4, 5, 7, 8}, 51: set(range(12)) - {6}}
    params = params_of(emb("x", 0.0), emb("y", 0.0, source="y"))
    for k in (2, 3, 5, 51):
        pairs = match({**params, "k": k}, 12, embeddings={"x": x, "y": y})
        assert_well_formed(pairs, k)
        assert pairs.counts().tolist() == [min(k - 1, 11)] * 12
        lists = row_lists(pairs)
        assert lists[0] == list(range(1, min(k, 12)))  # nearest angles first
        if k in expected_row6:
            assert set(lists[6]) == expected_row6[k]


def test_unit_filter_by_hand() -> None:
    titles = ["susu 200 gr", "susu 400gr", "susu 0,2 kg", "susu coklat"]
    x = np.ones((4, 3))
    params = params_of(emb("e", 0.5), unit_filter=True)
    pairs = match(params, 4, embeddings={"e": x}, titles=titles)
    # 200 g = 0.2 kg; 400 g conflicts with both; "susu coklat" states nothing and keeps all.
    assert [sorted(r) for r in row_lists(pairs)] == [[2, 3], [3], [0, 3], [0, 1, 2]]
    without = match(params_of(emb("e", 0.5)), 4, embeddings={"e": x})
    assert [sorted(r) for r in row_lists(without)] == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]
    with pytest.raises(ShopeeError, match="unit_filter: needs titles"):
        match(params, 4, embeddings={"e": x})
    cands = {"e": member_candidates(params["members"][0], 4, embeddings={"e": x})}
    with pytest.raises(ShopeeError, match="unit_filter: needs titles"):
        combine(params, cands, 4)


def test_phash_member_in_the_union() -> None:
    phashes = ["ffff0000ffff0000", "ffff0000ffff0001", "0000ffff0000ffff", None]
    params = params_of(emb("e", 0.99), {"name": "p", "type": "phash", "max_distance": 1})
    pairs = match(params, 4, embeddings={"e": E}, phashes=phashes)
    assert row_lists(pairs) == [[1], [0], [], []]
    np.testing.assert_allclose(pairs.sims, [63 / 64] * 2)


def test_f1_of_match_on_a_tiny_example() -> None:
    # Groups A = {0, 1, 2}, B = {3, 4}, C = {5}. Cosines: 0-1 0.96, 3-4 0.96, 4-5 0.936, 3-5 0.8,
    # 2-5 0.6, 2-4 0.28, 1-3 0.28, others 0. At 0.9 the predictions are
    #   0: {0,1} 1: {0,1} 2: {2} 3: {3,4} 4: {3,4,5} 5: {4,5}
    # F1 per row: 2*2/5 = 0.8, 0.8, 2*1/4 = 0.5, 1.0, 2*2/5 = 0.8, 2*1/3 = 0.6667 -> mean 0.761111.
    # min2 >= 0.5 gives lonely row 2 its nearest (5, at 0.6): F1 of row 2 becomes 2*1/5 = 0.4 -> 0.744444.
    x = np.array([[1, 0, 0], [0.96, 0.28, 0], [0, 0, 1], [0, 1, 0], [0, 0.96, 0.28], [0, 0.8, 0.6]])
    ids = ["p0", "p1", "p2", "p3", "p4", "p5"]
    truth = [{"p0", "p1", "p2"}] * 3 + [{"p3", "p4"}] * 2 + [{"p5"}]
    pairs = match(params_of(emb("e", 0.9)), 6, embeddings={"e": x})
    predicted = [set(s.split()) for s in matches_to_strings(pairs, ids)]
    assert predicted == [{"p0", "p1"}, {"p0", "p1"}, {"p2"}, {"p3", "p4"}, {"p3", "p4", "p5"}, {"p4", "p5"}]
    assert score_sets(predicted, truth).f1 == pytest.approx(4.566667 / 6, abs=1e-6)
    pairs = match(params_of(emb("e", 0.9), min2={"member": "e", "threshold": 0.5}), 6, embeddings={"e": x})
    predicted = [set(s.split()) for s in matches_to_strings(pairs, ids)]
    assert predicted[2] == {"p2", "p5"}
    assert score_sets(predicted, truth).f1 == pytest.approx(4.466667 / 6, abs=1e-6)


# --------------------------------------------------------------------------------------------
# Inputs, timings, output strings
# --------------------------------------------------------------------------------------------


def test_match_input_errors() -> None:
    params = params_of(
        emb("fused", 0.5),
        {"name": "t", "type": "tfidf", "threshold": 0.5},
        {"name": "p", "type": "phash", "max_distance": 0},
    )
    good = {"embeddings": {"fused": E}, "titles": ["a"] * 4, "phashes": ["0" * 16] * 4}
    with pytest.raises(ShopeeError, match="member 'fused': embeddings 'fused' are missing"):
        match(params, 4, **{**good, "embeddings": {"txt": E}})
    with pytest.raises(ShopeeError, match="member 'fused': embeddings 'fused' have shape"):
        match(params, 5, **{**good, "titles": ["a"] * 5, "phashes": ["0" * 16] * 5})
    with pytest.raises(ShopeeError, match=r"member 't' \(tfidf\) needs titles"):
        match(params, 4, **{**good, "titles": None})
    with pytest.raises(ShopeeError, match="member 'p': 3 phashes for 4 rows"):
        match(params, 4, **{**good, "phashes": ["0" * 16] * 3})
    with pytest.raises(ShopeeError, match="NaN"):
        match(params, 4, **{**good, "embeddings": {"fused": np.where(E == 1.0, np.nan, E)}})
    with pytest.raises(ShopeeError, match="no candidates for member 't'"):
        combine(params, {"fused": Pairs.empty(4)}, 4)


def test_timings_per_stage() -> None:
    params = params_of(
        emb("fused", 0.5, blend=[0.6, 0.5]),
        {"name": "t", "type": "tfidf", "threshold": 0.5},
        {"name": "p", "type": "phash", "max_distance": 2},
    )
    timings: dict[str, float] = {}
    match(params, 4, embeddings={"fused": E}, titles=["a b"] * 4, phashes=["0" * 16] * 4, timings=timings)
    assert set(timings) == {
        "knn:fused:blend1",
        "blend:fused:1",
        "knn:fused:blend2",
        "blend:fused:2",
        "knn:fused",
        "tfidf:t",
        "phash:p",
        "combine",
    }
    assert all(v >= 0 for v in timings.values())


def test_matches_to_strings() -> None:
    pairs = Pairs(np.array([0, 0, 2]), np.array([2, 1, 0]), np.array([0.9, 0.5, 0.9]), 3)
    assert matches_to_strings(pairs, ["a", "b", "c"]) == ["a c b", "b", "c a"]
    # A self pair or a repeated pair is written once; itself stays first.
    odd = Pairs(np.array([0, 0, 0, 1]), np.array([1, 0, 1, 0]), np.ones(4), 2)
    assert matches_to_strings(odd, np.array(["x1", "x2"])) == ["x1 x2", "x2 x1"]
    assert matches_to_strings(Pairs.empty(2), ["a", "b"]) == ["a", "b"]
    with pytest.raises(ShopeeError, match="3 posting ids for 2 rows"):
        matches_to_strings(Pairs.empty(2), ["a", "b", "c"])


# --------------------------------------------------------------------------------------------
# Brute-force oracle of the whole rule
# --------------------------------------------------------------------------------------------


def oracle_match(params: dict, embeddings: dict[str, np.ndarray]) -> tuple[list[dict[int, float]], float]:
    """The rule with plain loops over dense float64 similarities: ``(matches per row {col: sim},
    smallest distance of any similarity from a threshold it was compared with)``."""
    k = params["k"]
    margin = math.inf

    def normalize(v):
        return v / math.sqrt(sum(t * t for t in v))

    def nearest(x):  # per row: the k - 1 most similar others, best first
        nonlocal margin
        s = x @ x.T
        out = []
        for i in range(len(x)):
            ranked = sorted(((s[i, j], j) for j in range(len(x)) if j != i), reverse=True)
            if len(ranked) >= k:  # a near tie at the cut makes the kept set float-dependent
                margin = min(margin, ranked[k - 2][0] - ranked[k - 1][0])
            out.append(ranked[: k - 1])
        return out

    candidates = {}
    for m in params["members"]:
        x = np.array([normalize(v) for v in embeddings[m["source"]].astype(np.float64)])
        for t in m["blend"]:
            nb = nearest(x)
            new = []
            for i in range(len(x)):
                v = x[i].copy()
                for s, j in nb[i]:
                    margin = min(margin, abs(s - t))
                    if s >= t:
                        v = v + s * x[j]
                new.append(normalize(v))
            x = np.array(new)
        candidates[m["name"]] = nearest(x)
    n = len(next(iter(embeddings.values())))
    matches: list[dict[int, float]] = [{} for _ in range(n)]
    for m in params["members"]:
        for i in range(n):
            for s, j in candidates[m["name"]][i]:
                margin = min(margin, abs(s - m["threshold"]))
                if s >= m["threshold"]:
                    matches[i][j] = max(matches[i].get(j, -math.inf), s)
    if params["min2"] is not None:
        for i in range(n):
            if not matches[i]:
                s, j = candidates[params["min2"]["member"]][i][0]
                margin = min(margin, abs(s - params["min2"]["threshold"]))
                if s >= params["min2"]["threshold"]:
                    matches[i][j] = s
    capped = []
    for i in range(n):
        best = sorted(matches[i].items(), key=lambda item: -item[1])
        if len(best) > k - 1:
            margin = min(margin, best[k - 2][1] - best[k - 1][1])
        capped.append(dict(best[: k - 1]))
    return capped, margin


def random_params(rng: np.random.Generator) -> dict:
    members = []
    for i in range(rng.integers(1, 4)):
        source = str(rng.choice(["a", "b"]))
        # Two stages often leave blended rows in near ties (skipped below): drawn less often.
        stages = int(rng.choice(3, p=[0.4, 0.4, 0.2]))
        blend = [round(float(rng.uniform(0.3, 0.9)), 3) for _ in range(stages)]
        members.append(emb(f"m{i}", round(float(rng.uniform(0.3, 0.95)), 3), blend, source=source))
    min2 = None
    if rng.random() < 0.7:
        min2 = {
            "member": members[int(rng.integers(len(members)))]["name"],
            "threshold": round(float(rng.uniform(0.0, 0.8)), 3),
        }
    return params_of(*members, k=int(rng.choice([2, 3, 5, 8, 51])), min2=min2)


def test_match_equals_brute_force_oracle() -> None:
    rng = np.random.default_rng(0)
    n = 60
    centers_a, centers_b = rng.normal(size=(12, 10)), rng.normal(size=(12, 5))
    groups = rng.integers(0, 12, size=n)
    embeddings = {
        "a": centers_a[groups] + 0.7 * rng.normal(size=(n, 10)),
        "b": centers_b[groups] + 0.5 * rng.normal(size=(n, 5)),
    }
    checked = 0
    for _ in range(80):
        params = random_params(rng)
        expected, margin = oracle_match(params, embeddings)
        if margin < 1e-5:  # a similarity within float32 noise of a threshold or a tie: skip these params
            continue
        pairs = match(params, n, embeddings=embeddings)
        assert_well_formed(pairs, params["k"])
        bounds = pairs.row_bounds()
        for i in range(n):
            cols = pairs.cols[bounds[i] : bounds[i + 1]].tolist()
            assert set(cols) == set(expected[i]), f"row {i}, params {params}"
            np.testing.assert_allclose(
                pairs.sims[bounds[i] : bounds[i + 1]], [expected[i][j] for j in cols], atol=1e-5
            )
        checked += 1
    assert checked >= 40, checked


def test_candidates_of_some_rows_equal_the_full_rule_on_them() -> None:
    """Every member (blended embedding, TF-IDF, phash) with ``queries``: the same pairs from those
    rows as without, and the rule combined from them scores those rows as the full match does."""
    rng = np.random.default_rng(3)
    n = 240
    groups = rng.integers(0, 40, size=n)
    embeddings = {"a": rng.normal(size=(40, 16))[groups] + 0.8 * rng.normal(size=(n, 16))}
    words = np.array([f"w{i}" for i in range(60)])
    titles = np.array([" ".join(words[(g * 3 + rng.integers(0, 5, size=4)) % 60]) for g in groups])
    phashes = np.array([f"{rng.integers(0, 2**32):08x}{g:08x}" for g in groups])
    params = params_of(
        emb("a", 0.5, [0.6, 0.7], source="a"),
        {"name": "t", "type": "tfidf", "threshold": 0.4},
        {"name": "p", "type": "phash", "max_distance": 2},
        min2={"member": "a", "threshold": 0.2},
    )
    queries = np.sort(rng.choice(n, size=60, replace=False))
    inputs = {"embeddings": embeddings, "titles": titles, "phashes": phashes}
    full, some = {}, {}
    for m in params["members"]:
        full[m["name"]] = member_candidates(m, n, **inputs)
        some[m["name"]] = member_candidates(m, n, **inputs, queries=queries)
        asked = np.isin(full[m["name"]].rows, queries)
        np.testing.assert_array_equal(some[m["name"]].rows, full[m["name"]].rows[asked])
        np.testing.assert_array_equal(some[m["name"]].cols, full[m["name"]].cols[asked])
    whole = score_pairs(*match(params, n, **inputs).with_self(), groups)
    part = score_pairs(*combine(params, some, n).with_self(), groups)
    np.testing.assert_array_equal(part.f1[queries], whole.f1[queries])


def test_blend_candidates_of_every_row_give_the_exact_rule() -> None:
    """A blended space searched among each row's ``blend_candidates`` nearest plain neighbours: with
    as many candidates as rows it is the exact rule; with fewer, each blended neighbour is one of
    the row's plain candidates; the field is validated and kept by validate_params."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, 24))
    x = np.repeat(centres, 4, axis=0) + 0.6 * rng.normal(size=(120, 24))
    params = {
        "version": 1,
        "members": [emb("e", 0.5, blend=[0.6, 0.7])],
        "min2": {"member": "e", "threshold": 0.3},
    }
    exact = match(params, 120, embeddings={"e": x})
    wide = match({**params, "blend_candidates": 119}, 120, embeddings={"e": x})

    def by_pair(p: Pairs) -> dict[tuple[int, int], float]:  # near-equal similarities may swap places
        return {(int(r), int(c)): float(v) for r, c, v in zip(p.rows, p.cols, p.sims, strict=True)}

    assert by_pair(wide).keys() == by_pair(exact).keys() and len(exact) > 120
    np.testing.assert_allclose(
        list(by_pair(wide).values()), [by_pair(exact)[k] for k in by_pair(wide)], atol=1e-5
    )

    narrow = member_candidates(emb("e", 0.0, blend=[0.6, 0.7]), 120, embeddings={"e": x}, blend_candidates=51)
    plain = knn_pairs(x, k=51)  # each row's 51 nearest others in the plain space
    allowed = set(zip(plain.rows.tolist(), plain.cols.tolist(), strict=True))
    assert set(zip(narrow.rows.tolist(), narrow.cols.tolist(), strict=True)) <= allowed

    assert validate_params({**params, "blend_candidates": 100})["blend_candidates"] == 100
    assert "blend_candidates" not in validate_params(params)  # absent: every row, as before
    with pytest.raises(ShopeeError, match=r"blend_candidates: 20 is outside 51\.\.1000"):
        validate_params({**params, "blend_candidates": 20})
