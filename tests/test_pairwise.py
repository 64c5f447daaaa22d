"""The pair model: features against a slow per-pair reference, the CV without leakage, matching
from probabilities against a per-row reference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import CountVectorizer

from shopee.errors import ShopeeError
from shopee.match import parse_quantities, tfidf_matrix
from shopee.pairwise import model as pair_model
from shopee.pairwise.features import DENSITY_TOPS, RELATIVE_TO, candidates, feature_names, features, floors_of
from shopee.scoring import Universe

WORDS = [
    "kopi",
    "susu",
    "bubuk",
    "sachet",
    "gula",
    "teh",
    "hijau",
    "merah",
    "botol",
    "kaleng",
    "mini",
    "jumbo",
]


def _data(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n // 3), 3)
    centres = rng.normal(size=(n // 3, 8))
    emb = centres[labels] + 0.7 * rng.normal(size=(n, 8))
    titles = []
    for i in range(n):
        words = list(rng.choice(WORDS, size=int(rng.integers(2, 6)), replace=False))
        words.append(
            f"{int(rng.choice([100, 200, 400]))} gr"
            if rng.random() < 0.6
            else f"isi {int(rng.integers(5, 12))}"
        )
        titles.append(" ".join(words) + f" no{labels[i]}")
    hashes = rng.integers(0, 2**63, size=n // 3, dtype=np.int64)
    phashes = [f"{int(hashes[g]) ^ (1 << int(rng.integers(0, 3))):016x}" for g in labels]
    phashes[5] = None  # a missing phash
    return (
        labels,
        {"e": emb.astype(np.float32)},
        np.array(titles, dtype=object),
        np.array(phashes, dtype=object),
    )


PARAMS = {
    "version": 1,
    "k": 51,
    "members": [
        {"name": "emb", "type": "embedding", "source": "e", "threshold": 0.6, "blend": []},
        {"name": "tfidf", "type": "tfidf", "threshold": 0.5, "analyzer": "word", "min_sim": 0.2},
        {"name": "phash", "type": "phash", "max_distance": 2},
    ],
    "min2": None,
    "unit_filter": False,
}


def _rank_interval(sims: np.ndarray, listed: np.ndarray, s: float, floor: float) -> tuple[int, int] | None:
    """Where the row of similarity ``s`` ranks among another row's neighbours (ties may fall
    either way), or None when it is not among its 50 listed."""
    if s < floor or (len(listed) == 50 and s < listed[-1] - 1e-6):
        return None
    return int((sims > s + 1e-6).sum()) + 1, int((sims >= s - 1e-6).sum())


def _within(value: float, interval: tuple[int, int] | None) -> bool:
    return np.isnan(value) if interval is None else interval[0] <= value <= interval[1]


def test_features_against_a_slow_per_pair_reference() -> None:
    labels, embeddings, titles, phashes = _data()
    n = len(labels)
    floors = floors_of(PARAMS)
    found = candidates(PARAMS, floors, n, embeddings=embeddings, titles=titles, phashes=phashes)
    table = features(PARAMS, found, embeddings=embeddings, titles=titles, phashes=phashes)
    assert len(table) == len(found) > n and (found.a != found.b).all()
    assert (np.diff(found.a) >= 0).all()  # sorted by query

    x = embeddings["e"] / np.linalg.norm(embeddings["e"], axis=1, keepdims=True)
    t = tfidf_matrix(titles).toarray()
    sims = {"emb": x @ x.T, "tfidf": t @ t.T}
    tokenize = CountVectorizer(lowercase=True).build_analyzer()
    grams = CountVectorizer(analyzer="char_wb", ngram_range=(3, 3), lowercase=True).build_analyzer()
    expected = [set() for _ in range(n)]  # each query's candidates, by the module doc
    bits = np.array([[_bits(p, q) for q in phashes] for p in phashes], dtype=float)
    for i in range(n):
        expected[i] |= {j for j in range(n) if j != i and bits[i, j] <= floors["phash"]}
    for member, matrix in sims.items():
        np.fill_diagonal(matrix, -np.inf)
        floor = 0.2 if member == "tfidf" else -np.inf  # TF-IDF lists stop at their floor
        listed = [np.sort(row[row >= floor])[::-1][:50] for row in matrix]
        best = np.array([r[0] if len(r) else np.nan for r in listed])
        for i in range(n):
            order = np.argsort(-matrix[i])[:50]
            keep = matrix[i, order] >= max(floor, floors[member])
            if member == "emb":
                keep[:5] = True  # each row's nearest few, whatever their similarity
            expected[i] |= set(order[keep].tolist())
        density = {}
        for top in DENSITY_TOPS:
            for stat, reduce in (("mean", np.mean), ("std", np.std)):
                values = np.array([reduce(r[:top]) if len(r) else np.nan for r in listed])
                density[(top, stat)] = (values - np.nanmean(values)) / np.nanstd(values)
        for i in range(0, len(found), 7):
            a, b = int(found.a[i]), int(found.b[i])
            row = table.iloc[i]
            assert row[f"{member}_sim"] == pytest.approx(matrix[a, b], abs=1e-5)
            assert _within(row[f"{member}_rank"], _rank_interval(matrix[a], listed[a], matrix[a, b], floor))
            assert row[f"{member}_gap"] == pytest.approx(best[a] - matrix[a, b], abs=1e-5)
            for (top, stat), values in density.items():
                assert row[f"{member}_top{top}_{stat}"] == pytest.approx(values[a], abs=1e-4)
            for k in RELATIVE_TO:  # the pair against the query's k-th nearest (NaN: fewer listed)
                if len(listed[a]) >= k:
                    assert row[f"{member}_over_k{k}"] == pytest.approx(
                        matrix[a, b] - listed[a][k - 1], abs=1e-5
                    )
                else:
                    assert np.isnan(row[f"{member}_over_k{k}"])
    got = [set(found.b[found.a == i].tolist()) for i in range(n)]
    assert got == expected
    for i in range(len(found)):
        a, b = int(found.a[i]), int(found.b[i])
        row = table.iloc[i]
        ta, tb = set(tokenize(titles[a])), set(tokenize(titles[b]))
        assert row["token_jaccard"] == pytest.approx(len(ta & tb) / len(ta | tb), abs=1e-6)
        ga, gb = set(grams(titles[a])), set(grams(titles[b]))
        assert row["char_cosine"] == pytest.approx(len(ga & gb) / np.sqrt(len(ga) * len(gb)), abs=1e-5)
        assert row["len_diff"] == abs(len(titles[a]) - len(titles[b]))
        qa, qb = parse_quantities(titles[a]), parse_quantities(titles[b])
        dims = {d for d, _ in qa} & {d for d, _ in qb}
        agree = any({v for d2, v in qa if d2 == d} & {v for d2, v in qb if d2 == d} for d in dims)
        conflict = any(not ({v for d2, v in qa if d2 == d} & {v for d2, v in qb if d2 == d}) for d in dims)
        assert (row["units_agree"], row["units_conflict"]) == (float(agree), float(conflict))
        if phashes[a] is None or phashes[b] is None:
            assert np.isnan(row["phash_sim"]) and row["same_phash"] == 0
        else:
            assert row["phash_sim"] == pytest.approx(1 - bits[a, b] / 64)
            assert row["same_phash"] == float(bits[a, b] == 0)


def _bits(p: str | None, q: str | None) -> float:
    return np.inf if p is None or q is None else bin(int(p, 16) ^ int(q, 16)).count("1")


def test_a_pair_is_described_from_its_query_alone() -> None:
    """The features of pairs from some query rows, computed with those rows' neighbour lists
    only, equal the ones computed with every row's lists: nothing of a candidate's own list (a
    fold model's training row in a dense CV set) can reach the model."""
    labels, embeddings, titles, phashes = _data(n=90, seed=2)
    n = len(labels)
    inputs = dict(embeddings=embeddings, titles=titles, phashes=phashes)
    floors = floors_of(PARAMS)
    queries = np.arange(0, n, 4)
    every = candidates(PARAMS, floors, n, **inputs)
    some = candidates(PARAMS, floors, n, queries=queries, **inputs)
    mine = np.isin(every.a, queries)
    np.testing.assert_array_equal(some.a, every.a[mine])
    np.testing.assert_array_equal(some.b, every.b[mine])
    assert set(some.lists["emb"].rows.tolist()) == set(queries.tolist())
    full = features(PARAMS, every, scored=queries, **inputs)[mine].reset_index(drop=True)
    pd.testing.assert_frame_equal(features(PARAMS, some, scored=queries, **inputs), full)


def test_matching_from_probabilities_against_a_per_row_reference() -> None:
    rng = np.random.default_rng(1)
    n = 40
    keys = np.unique(rng.integers(0, n, size=(150, 2)), axis=0)
    keys = keys[keys[:, 0] != keys[:, 1]]
    a, b = keys[:, 0], keys[:, 1]
    p = rng.random(len(a))
    for threshold, min2 in ((0.7, None), (0.7, 0.3), (0.95, 0.0)):
        pairs = pair_model.match_from_probabilities(n, a, b, p, threshold, min2)
        got = [set(pairs.cols[pairs.rows == i]) for i in range(n)]
        want = [set() for _ in range(n)]
        for x, y, q in zip(a, b, p, strict=True):
            if q >= threshold:
                want[x].add(y)  # each row decides its own matches
        if min2 is not None:
            for i in range(n):
                mine = [(q, y) for x, y, q in zip(a, b, p, strict=True) if x == i]
                if not want[i] and mine and max(mine)[0] >= min2:
                    want[i].add(max(mine)[1])
        assert got == want


def test_f1_at_every_threshold_in_one_pass_equals_matching_threshold_by_threshold() -> None:
    """``f1_by_threshold`` against ``match_from_probabilities`` and the scorer, one threshold at a
    time, on rows with more candidates than a row may match (the 50 cap) and some rows unscored."""
    rng = np.random.default_rng(3)
    n = 300
    labels = rng.integers(0, 40, size=n)
    a = np.repeat(np.arange(n), 70)
    b = rng.integers(0, n, size=len(a))
    keys = np.unique(a[a != b] * n + b[a != b])
    a, b = keys // n, keys % n
    p = rng.random(len(a)).astype(np.float32)
    scored = np.sort(rng.choice(n, size=200, replace=False))
    universe = Universe("u", "dense", {}, labels, scored=scored, fold=0)
    cands = pair_model.Candidates(n, a, b, {})
    s = pair_model.PairSet(
        universe, cands, pd.DataFrame(index=range(len(a))), labels[a] == labels[b], labels[a]
    )
    grid = pair_model.THRESHOLD_GRID
    fast = pair_model.f1_by_threshold(s, p, grid)
    assert fast.shape == (200, len(grid))
    for i in range(0, len(grid), 9):
        np.testing.assert_allclose(fast[:, i], pair_model._row_f1(s, p, float(grid[i]), None), atol=1e-12)
    assert (np.bincount(a) > 50).any()  # the cap was exercised


def test_no_cv_probability_comes_from_a_model_that_saw_its_group(monkeypatch) -> None:
    """Three outer folds; each pair set also holds pairs touching the other folds' groups (their
    rows are its training rows). Every model must train on no pair that touches a group of the
    fold it scores, by either end."""
    rng = np.random.default_rng(0)
    fold_groups = {0: np.arange(0, 10), 1: np.arange(10, 20), 2: np.arange(20, 30)}
    sets, pair_groups = [], {}
    next_id = 0
    for fold, groups in fold_groups.items():
        labels = np.repeat(np.arange(30), 3)  # every group's rows are in every set (validation or training)
        scored = np.flatnonzero(np.isin(labels, groups))
        universe = Universe(f"dense{fold}", "dense", {}, labels, scored=scored, fold=fold)
        a = rng.choice(scored, 200)
        b = rng.integers(0, len(labels), 200)
        ok = a != b
        a, b = np.minimum(a[ok], b[ok]), np.maximum(a[ok], b[ok])
        ids = np.arange(next_id, next_id + len(a))
        next_id += len(a)
        for i, x, y in zip(ids, a, b, strict=True):
            pair_groups[int(i)] = {int(labels[x]), int(labels[y])}
        table = pd.DataFrame({"pair_id": ids.astype(np.float32), "noise": rng.random(len(a))})
        truth = labels[a] == labels[b]
        group = np.where(np.isin(a, scored), labels[a], labels[b])
        sets.append(
            pair_model.PairSet(universe, pair_model.Candidates(len(labels), a, b, {}), table, truth, group)
        )
    trained_on: list[set[int]] = []
    fit = pair_model._fit

    def spy(lgb, X, y, groups, rounds=None):
        trained_on.append({int(i) for i in X["pair_id"]})
        return fit(lgb, X, y, groups, rounds)

    monkeypatch.setattr(pair_model, "_fit", spy)
    probs, _ = pair_model.cross_validate(sets, lambda _: None)
    assert [len(p) for p in probs] == [len(s.truth) for s in sets]
    for fold, ids in enumerate(trained_on):
        seen = set().union(*(pair_groups[i] for i in ids))
        assert not seen & set(fold_groups[fold].tolist()), fold
        assert ids  # it did train on something


def test_a_model_trained_before_a_feature_was_added_gets_its_own_columns() -> None:
    labels, embeddings, titles, phashes = _data()
    inputs = dict(embeddings=embeddings, titles=titles, phashes=phashes)
    found = candidates(PARAMS, floors_of(PARAMS), len(labels), **inputs)
    full = features(PARAMS, found, **inputs)
    older = [n for n in feature_names(PARAMS) if "_over_k" not in n]
    table = features(PARAMS, found, names=older, **inputs)
    assert list(table.columns) == older
    pd.testing.assert_frame_equal(table, full[older])
    with pytest.raises(ShopeeError, match="run optimize-ensemble again"):
        features(PARAMS, found, names=[*older, "emb_from_the_future"], **inputs)


def test_the_probability_thresholds_follow_the_rows_in_logit() -> None:
    """Hand-worked: thresholds 0.5 at 1,000 rows and 1 / (1 + e^-1) at 4,000 rows are logits 0
    and 1, a line of 1 / ln 4 per unit of ln(rows); at 2,000 rows the logit is 0.5, at 16,000 it
    would be 2 but stops at the largest logit seen plus LOGIT_MARGIN."""
    from shopee.pairwise.model import LOGIT_MARGIN, fit_thresholds, pair_thresholds_at

    top = 1 / (1 + math.exp(-1))
    fits = fit_thresholds([1000, 4000], [0.5, top], [0.1, None])
    assert set(fits) == {"threshold"}  # a size without min2: min2 stays as tuned
    info = {"threshold": top, "min2": 0.3, "size_curve": {"threshold_fit": fits}}
    assert pair_thresholds_at(info, 2000) == (pytest.approx(1 / (1 + math.exp(-0.5)), abs=1e-4), 0.3)
    assert pair_thresholds_at(info, 1000)[0] == pytest.approx(0.5, abs=1e-4)
    capped = 1 / (1 + math.exp(-(1 + LOGIT_MARGIN)))
    assert pair_thresholds_at(info, 10**6)[0] == pytest.approx(capped, abs=1e-4)
    assert pair_thresholds_at({"threshold": 0.4, "min2": None}, 10**6) == (0.4, None)  # no fit


def test_a_pair_model_ships_when_it_wins_at_the_tests_size(capsys) -> None:
    """The figures at the test's row count decide when both exist, even against the held-out CV."""
    from shopee.ensemble import _decide_pair_model

    pairs = {"cv_f1": 0.90, "cv_f1_heldout": 0.89}  # wins held out ...
    at_test = ({"f1": 0.80, "rows": 70000}, {"f1": 0.79, "rows": 70000})  # ... loses at 70,000 rows
    _decide_pair_model(pairs, 0.85, {"f1": 0.84}, False, at_test)
    assert not pairs["shipped"] and pairs["decision"] == {
        "on": "CV F1 at 70000 rows",
        "pair_model": 0.79,
        "rule": 0.80,
    }
    _decide_pair_model(pairs, 0.85, {"f1": 0.84}, False, (at_test[1], at_test[0]))
    assert pairs["shipped"] and "CV F1 at 70000 rows: pair model 0.8000, thresholds 0.7900" in pairs["why"]


def test_a_pair_model_ships_only_when_it_beats_the_rule_held_out(capsys) -> None:
    from shopee.ensemble import _decide_pair_model

    def decide(mine: float, rule: float, force: bool = False, held: bool = True) -> dict:
        pairs = {"cv_f1": mine + 0.05, "cv_f1_heldout": mine}
        _decide_pair_model(pairs, rule + 0.05, {"f1": rule} if held else None, force)
        return pairs

    assert decide(0.82, 0.81)["shipped"]
    lost = decide(0.80, 0.81)
    assert not lost["shipped"] and "not shipped" in lost["why"] and "0.8000" in lost["why"]
    assert decide(0.80, 0.81, force=True)["shipped"] and "forced" in decide(0.80, 0.81, force=True)["why"]
    # without a held-out estimate the dense CV decides
    assert not decide(0.80, 0.81, held=False)["shipped"]
    assert "pair model not shipped" in capsys.readouterr().out


def test_the_held_out_estimate_rebuilds_pairs_with_each_folds_own_first_stage(monkeypatch, tmp_path) -> None:
    """The threshold search tuned without fold k decides, for fold k held out, the candidates and
    features of every set the pair model trains and is scored on; a fold whose rule is the tuned
    one reuses the sets already built."""
    rng = np.random.default_rng(4)
    universes = []
    for fold in (0, 1):
        labels = np.repeat(np.arange(60), 3)
        emb = rng.normal(size=(60, 8))[labels] + 0.8 * rng.normal(size=(len(labels), 8))
        scored = np.flatnonzero((labels % 2) == fold)  # the fold's groups: validation rows
        universes.append(
            Universe(f"dense{fold}", "dense", {"e": emb.astype(np.float32)}, labels, scored=scored, fold=fold)
        )
    params = {**PARAMS, "members": [PARAMS["members"][0]]}
    retuned = {**params, "members": [{**params["members"][0], "threshold": 0.8}]}
    built = []
    original = pair_model.pair_set

    def spy(universe, rule, floors, backend="torch", device="cpu"):
        built.append((universe.name, rule["members"][0]["threshold"]))
        return original(universe, rule, floors, backend, device)

    monkeypatch.setattr(pair_model, "pair_set", spy)
    info = pair_model.train_pair_model(
        universes, params, tmp_path / "p.txt", lambda _: None, heldout_params={"0": retuned, "1": params}
    )
    assert built == [("dense0", 0.6), ("dense1", 0.6), ("dense0", 0.8), ("dense1", 0.8)]
    assert info["heldout"] == "first stage and thresholds re-tuned"
    assert 0.0 < info["cv_f1_heldout"] <= 1.0
