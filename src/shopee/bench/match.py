"""``bench match``: how fast the matching rule runs on synthetic data (figures, not tests).

Parts, each runnable alone (``run_bench``):

- ``rule`` (the default): the full rule on ``n`` synthetic postings (three embedding members,
  TF-IDF, phash, union, min2) through ``match``, with the wall time of each stage, against the
  *bare* chunked matrix-product top-k calls its embedding members need (the arithmetic bound);
  then the post-processing alone (thresholds, union, min2, blending sums, output strings).
- ``search``: the ``optimize-ensemble`` threshold search on synthetic OOF rows in five folds.
- ``pair model``: the second stage at test scale: a pair model trained on a small synthetic
  dense CV, then candidates, features and probabilities on ``n`` rows (``pair_model_s``).

The synthetic postings come from ``shopee.demo.synthetic``. (The way public notebooks match, with
per-row Python loops, lives in the tests as the oracle the rule is checked against.)
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from shopee.constants import TEST_ROWS, K
from shopee.demo.synthetic import Synthetic, make_synthetic
from shopee.errors import ShopeeError
from shopee.match import (
    PARAMS_VERSION,
    Pairs,
    combine,
    match,
    matches_to_strings,
    normalize_rows,
    validate_params,
)
from shopee.match.knn import DEFAULT_CHUNK_BYTES
from shopee.match.rules import clear_knn_cache
from shopee.metrics import score_pairs

PHASH_MAX_DISTANCE = 4
SEARCH_FOLDS = 5


def default_params() -> dict[str, Any]:
    """The benchmarked rule: two blending stages on ``fused`` only; phash within 4 bits."""
    return validate_params(
        {
            "version": PARAMS_VERSION,
            "k": K,
            "members": [
                {
                    "name": "fused",
                    "type": "embedding",
                    "source": "fused",
                    "threshold": 0.7,
                    "blend": [0.8, 0.8],
                },
                {"name": "img", "type": "embedding", "source": "img", "threshold": 0.7, "blend": []},
                {"name": "txt", "type": "embedding", "source": "txt", "threshold": 0.7, "blend": []},
                {"name": "tfidf", "type": "tfidf", "threshold": 0.8, "analyzer": "word"},
                {"name": "phash", "type": "phash", "max_distance": PHASH_MAX_DISTANCE},
            ],
            "min2": {"member": "fused", "threshold": 0.3},
            "unit_filter": False,
        }
    )


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (ru_maxrss), in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _f1(pairs, labels: np.ndarray) -> float:
    return round(score_pairs(*pairs.with_self(), labels).mean().f1, 4)


def bare_topk_seconds(x: np.ndarray, k: int, device: str = "cpu") -> float:
    """Seconds of a plain loop of ``torch.topk(chunk @ x.T, k)`` over row chunks of the
    normalized ``x`` (chunk height as ``knn_pairs`` picks it): the arithmetic bound of a kNN call."""
    base = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    n = len(base)
    rows = int(max(1, min(n, DEFAULT_CHUNK_BYTES // (4 * max(n, 1)))))
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, n, rows):
            torch.topk(base[start : start + rows] @ base.T, min(k, n), dim=1)
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


def _embedding_calls(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(source, label) of each kNN call the embedding members make: per blending stage, then final."""
    calls = []
    for m in params["members"]:
        if m["type"] == "embedding":
            calls += [(m["source"], f"{m['name']}:blend{s}") for s in range(1, len(m["blend"]) + 1)]
            calls.append((m["source"], f"{m['name']}:final"))
    return calls


# --------------------------------------------------------------------------------------------
# Parts 1 and 2: the rule against the bare top-k, then the post-processing alone
# --------------------------------------------------------------------------------------------


def run_rule(data: Synthetic, params: Mapping[str, Any], backend: str = "torch", device: str = "cpu") -> dict:
    """The full rule through ``match`` (stage timings), the bare top-k calls and the post-processing."""
    params = validate_params(params)
    n = len(data)
    candidates: dict[str, Pairs] = {}
    timings: dict[str, float] = {}
    clear_knn_cache()  # nothing remembered from an earlier run in this process
    _log(f"rule: match() on {n} rows ...")
    started = time.perf_counter()
    pairs = match(
        params,
        n,
        embeddings=data.embeddings,
        titles=data.titles,
        phashes=data.phashes,
        backend=backend,
        device=device,
        timings=timings,
        candidates=candidates,
    )
    match_s = time.perf_counter() - started
    stages = {key: round(v, 3) for key, v in timings.items()}
    stages["other"] = round(match_s - sum(timings.values()), 3)  # checks, input normalization
    text_s = sum(v for key, v in timings.items() if key.startswith(("tfidf:", "phash:")))
    embedding_s = match_s - text_s  # kNN, blending, all of combine, checks and normalization

    _log("rule: bare top-k calls ...")
    normalized = {source: normalize_rows(data.embeddings[source]) for source, _ in _embedding_calls(params)}
    bare = {
        label: round(bare_topk_seconds(normalized[source], params["k"], device), 3)
        for source, label in _embedding_calls(params)
    }
    del normalized
    bare_total = sum(bare.values())

    _log("rule: post-processing ...")
    started = time.perf_counter()
    again = combine(params, candidates, n, titles=data.titles)
    combine_s = time.perf_counter() - started
    started = time.perf_counter()
    strings = matches_to_strings(pairs, data.posting_ids)
    strings_s = time.perf_counter() - started
    if not (np.array_equal(again.rows, pairs.rows) and np.array_equal(again.cols, pairs.cols)):
        raise ShopeeError("bench match: combine on the recorded candidates differs from match()")
    post = {
        "combine": round(combine_s, 3),
        "blend_sums": round(sum(v for key, v in timings.items() if key.startswith("blend:")), 3),
        "matches_to_strings": round(strings_s, 3),
    }
    return {
        "n": n,
        "match_s": round(match_s, 3),
        "stages_s": stages,
        "embedding_s": round(embedding_s, 3),
        "tfidf_s": round(sum(v for key, v in timings.items() if key.startswith("tfidf:")), 3),
        "phash_s": round(sum(v for key, v in timings.items() if key.startswith("phash:")), 3),
        "bare_topk_s": bare,
        "bare_topk_total_s": round(bare_total, 3),
        "embedding_over_bare": round(embedding_s / bare_total, 3) if bare_total > 0 else None,
        "postprocess_s": post,
        "postprocess_total_s": round(sum(post.values()), 3),
        "pairs": len(pairs),
        "mean_matches": round(1 + len(pairs) / max(n, 1), 3),
        "f1": _f1(pairs, data.labels),
        "output_chars": sum(map(len, strings)),
        "peak_rss_mb": peak_rss_mb(),
    }


# --------------------------------------------------------------------------------------------
# Part 3: the threshold search
# --------------------------------------------------------------------------------------------


def run_search(
    rows: int,
    dim: int,
    seed: int,
    backend: str = "torch",
    device: str = "cpu",
    blend_stages: int | None = None,
    objective: str = "dense",
    phases_too: bool = False,
    exact_blending: bool = False,
    pair_model: bool = False,
) -> dict:
    """``ensemble.search`` over three embedding members on synthetic OOF rows in five folds
    (``blend_stages``: passed to the search when given, else its default); with ``phases_too``
    also the held-out searches and the size curve, as ``optimize-ensemble`` runs them, each
    timed, and with ``pair_model`` the pair model as ``--pair-model`` trains it (its held-out
    estimate with each fold's own first stage, its size curve). For the dense
    objective each fold's training rows are the other folds' rows, in the same synthetic space:
    every scored row is matched among all ``rows``, as on the real train set."""
    from shopee.constants import BLEND_CANDIDATES
    from shopee.ensemble import embedding_members, heldout, search, size_curve
    from shopee.folds import DataFingerprint
    from shopee.oof import DenseFold, OOFSet
    from shopee.scoring import Scorer, build_universes

    data = make_synthetic(rows, dim, seed, text=False)
    groups = np.unique(data.labels)
    fold_of_group = np.random.default_rng(seed + 1).permutation(len(groups)) % SEARCH_FOLDS
    fold = fold_of_group[np.searchsorted(groups, data.labels)]
    order = np.argsort(fold, kind="stable")  # OOF rows come fold by fold
    index = pd.DataFrame({"posting_id": data.posting_ids, "label_group": data.labels, "fold": fold}).iloc[
        order
    ]
    index = index.reset_index(drop=True)
    embeddings = {f"synthetic:{name}": normalize_rows(x)[order] for name, x in data.embeddings.items()}
    folds = sorted(int(f) for f in np.unique(fold))
    dense = {}
    for f in folds:
        others = np.flatnonzero(index["fold"].to_numpy() != f)
        dense[f] = DenseFold(
            index.iloc[others][["posting_id", "label_group"]], {k: v[others] for k, v in embeddings.items()}
        )
    oof = OOFSet(
        index=index,
        embeddings=embeddings,
        folds=folds,
        experiments={"synthetic": folds},
        data=DataFingerprint("synthetic", "synthetic", rows, SEARCH_FOLDS),
        data_dir="synthetic",
        dense=dense,
    )
    pool, combined = embedding_members(oof)
    scorer = Scorer(build_universes(oof, {objective, "fold"}, combined), backend=backend, device=device)
    names = ", ".join(m["name"] for m in pool)
    _log(f"search on {objective}: {rows} OOF rows, {len(folds)} folds, members {names} ...")
    clear_knn_cache()
    started = time.perf_counter()
    options = {} if blend_stages is None else {"blend_stages": blend_stages}
    blend_candidates = None if exact_blending else BLEND_CANDIDATES
    result = search(scorer, pool, objective, progress=_log, blend_candidates=blend_candidates, **options)
    seconds = time.perf_counter() - started
    phases = {"search_s": round(seconds, 3)}
    if phases_too:  # what optimize-ensemble runs after the search, each timed
        stages = options.get("blend_stages", 2)
        mark = time.perf_counter()
        held = heldout(scorer, pool, objective, stages, _log, blend_candidates)
        phases["heldout_s"] = round(time.perf_counter() - mark, 3)
        mark = time.perf_counter()
        size_curve(scorer, result.params, objective, _log, held=held)
        phases["size_curve_s"] = round(time.perf_counter() - mark, 3)
        phases["f1_heldout"] = round(held["f1"], 4) if held else None
        if pair_model:
            phases.update(_search_pair_model(scorer, result.params, held, backend, device))
    return {
        "rows": rows,
        "folds": len(folds),
        "objective": objective,
        "blend_stages": "default" if blend_stages is None else blend_stages,
        "blend_candidates": blend_candidates,
        "members": [m["name"] for m in pool],
        **phases,
        "evaluations": scorer.evaluations,
        "cached_candidate_sets": len(scorer._cache),
        **{f"f1_{o}": round(result.scores.value(o), 4) for o in scorer.objectives},
        "params": result.params,
        "peak_rss_mb": peak_rss_mb(),
    }


def _search_pair_model(
    scorer: Any, params: Mapping[str, Any], held: dict | None, backend: str, device: str
) -> dict[str, Any]:
    """The pair model as optimize-ensemble trains it after the search, timed."""
    import tempfile
    from pathlib import Path

    from shopee.ensemble import SIZE_FRACTIONS, size_subsets
    from shopee.pairwise.model import train_pair_model

    dense = scorer.of("dense")
    mark = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        pairs = train_pair_model(
            dense,
            params,
            Path(folder) / "bench.pairs.txt",
            _log,
            backend=backend,
            device=device,
            size_subsets=[size_subsets(dense, f) for f in SIZE_FRACTIONS if f < 1],
            heldout_params=held["params"] if held else None,
        )
    return {
        "pair_model_s": round(time.perf_counter() - mark, 3),
        "pair_model_f1_heldout": round(pairs["cv_f1_heldout"], 4),
    }


def run_pair_model(
    n: int, dim: int, seed: int, backend: str = "torch", device: str = "cpu", train_rows: int = 6000
) -> dict:
    """A pair model trained on ``train_rows`` synthetic rows in two folds (dense sets: every row in
    one space), then the whole second stage timed on ``n`` other synthetic rows."""
    import tempfile
    from pathlib import Path

    from shopee.folds import DataFingerprint
    from shopee.oof import DenseFold, OOFSet
    from shopee.pairwise.model import load_booster, predict_pairs, train_pair_model
    from shopee.scoring import build_universes

    params = default_params()
    data = make_synthetic(train_rows, dim, seed + 7)
    _, codes = np.unique(data.labels, return_inverse=True)
    fold = codes % 2
    order = np.argsort(fold, kind="stable")
    index = pd.DataFrame({"posting_id": data.posting_ids, "label_group": data.labels, "fold": fold})
    index = index.iloc[order].reset_index(drop=True)
    embeddings = {k: normalize_rows(v)[order] for k, v in data.embeddings.items()}
    text = pd.DataFrame(
        {"title": data.titles[order], "image_phash": data.phashes[order]}, index=index["posting_id"]
    )
    dense = {}
    for f in (0, 1):
        others = np.flatnonzero(index["fold"].to_numpy() != f)
        dense[f] = DenseFold(
            index.iloc[others][["posting_id", "label_group"]], {k: v[others] for k, v in embeddings.items()}
        )
    oof = OOFSet(
        index,
        embeddings,
        [0, 1],
        {"s": [0, 1]},
        DataFingerprint("s", "s", train_rows, 2),
        "synthetic",
        dense=dense,
    )
    _log(f"pair model: training on {train_rows} synthetic rows in two folds ...")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.pairs.txt"
        info = train_pair_model(
            build_universes(oof, {"dense"}, {}, text), params, path, _log, backend, device
        )
        booster = load_booster(path)
        train_s = time.perf_counter() - started
        del oof, dense, embeddings, data
        _log(f"pair model: generating {n} synthetic rows ...")
        test = make_synthetic(n, dim, seed)
        clear_knn_cache()
        timings: dict[str, float] = {}
        started = time.perf_counter()
        pairs = predict_pairs(
            info,
            booster,
            n,
            embeddings=test.embeddings,
            titles=test.titles,
            phashes=test.phashes,
            backend=backend,
            device=device,
            timings=timings,
        )
        seconds = time.perf_counter() - started
    neighbours = timings.get("pairs:neighbours", 0.0)
    return {
        "n": n,
        "train_rows": train_rows,
        "train_s": round(train_s, 3),
        "neighbour_lists_s": neighbours,  # the members' kNN / TF-IDF / phash lists: the rule's own work
        "pair_model_s": round(seconds - neighbours, 3),  # what the second stage adds to them
        "total_s": round(seconds, 3),
        "stages_s": timings,
        "features": len(info["features"]),
        "cv_f1_pair_model": round(info["cv_f1"], 4),
        "f1": _f1(pairs, test.labels),
        "mean_matches": round(1 + len(pairs) / max(n, 1), 3),
        "peak_rss_mb": peak_rss_mb(),
    }


def _print_pair_model(r: dict) -> None:
    rows = [(f"stage {key}", f"{v:9.2f} s") for key, v in r["stages_s"].items()]
    rows += [
        ("second stage beyond the lists", f"{r['pair_model_s']:9.2f} s   (target < 60 s)"),
        ("all of it, lists included", f"{r['total_s']:9.2f} s"),
        ("pair model training (not timed above)", f"{r['train_s']:9.2f} s on {r['train_rows']} rows"),
        ("features per pair", f"{r['features']:9d}"),
        ("F1 against the synthetic groups", f"{r['f1']:9.4f}"),
        ("peak resident memory (process)", f"{r['peak_rss_mb']:9.0f} MB   (target < 4096 MB)"),
    ]
    print(f"pair model on {r['n']} rows:")
    print(_table(rows))


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"  {a:<{width}}  {b}" for a, b in rows)


def _print_rule(r: dict, params: Mapping[str, Any]) -> None:
    rows = [(f"match() stage {key}", f"{v:9.2f} s") for key, v in r["stages_s"].items()]
    rows += [
        ("match() total", f"{r['match_s']:9.2f} s"),
        ("  embedding part (all but tfidf/phash)", f"{r['embedding_s']:9.2f} s"),
        ("  tfidf", f"{r['tfidf_s']:9.2f} s"),
        ("  phash", f"{r['phash_s']:9.2f} s"),
    ]
    rows += [(f"bare top-k {label}", f"{v:9.2f} s") for label, v in r["bare_topk_s"].items()]
    rows += [
        ("bare top-k total", f"{r['bare_topk_total_s']:9.2f} s"),
        ("embedding part / bare top-k", f"{r['embedding_over_bare']:9.3f}   (target <= 1.5)"),
    ]
    rows += [(f"post-processing {key}", f"{v:9.2f} s") for key, v in r["postprocess_s"].items()]
    rows += [
        ("post-processing total", f"{r['postprocess_total_s']:9.2f} s   (target < 10 s)"),
        ("matches per row (self included)", f"{r['mean_matches']:9.3f}"),
        ("F1 against the synthetic groups", f"{r['f1']:9.4f}"),
        ("peak resident memory (process)", f"{r['peak_rss_mb']:9.0f} MB"),
    ]
    members = ", ".join(
        f"{m['name']}>={m['threshold']}" + (f" blend {m['blend']}" if m.get("blend") else "")
        if m["type"] != "phash"
        else f"{m['name']}<={m['max_distance']} bits"
        for m in params["members"]
    )
    min2 = params["min2"]
    print(f"rule on {r['n']} rows: {members}, union, min2 {min2['member']}>={min2['threshold']}")
    print(_table(rows))


def _print_search(r: dict) -> None:
    phases = [
        ("search_s", "search"),
        ("heldout_s", "held-out searches"),
        ("size_curve_s", "size curve"),
        ("pair_model_s", "pair model"),
    ]
    rows = [(label, f"{r[key]:9.2f} s") for key, label in phases if key in r]
    if "heldout_s" in r:  # what optimize-ensemble runs, in all: 10 minutes at train's size is the aim
        total = sum(r[key] for key, _ in phases if key in r)
        rows.append(("in all", f"{total:9.2f} s   (aim for 34,250 rows x 5 folds: < 600 s)"))
        rows.append(("held-out CV F1", f"{r['f1_heldout']:.4f}"))
    if "pair_model_f1_heldout" in r:
        rows.append(("pair model, held-out CV F1", f"{r['pair_model_f1_heldout']:.4f}"))
    rows += [
        ("evaluations", f"{r['evaluations']:9d}"),
        ("candidate sets computed", f"{r['cached_candidate_sets']:9d}"),
        (f"CV F1 {r['objective']} / fold", f"{r['f1_' + r['objective']]:.4f} / {r['f1_fold']:.4f}"),
        ("peak resident memory (process)", f"{r['peak_rss_mb']:9.0f} MB"),
    ]
    print(
        f"threshold search on {r['rows']} OOF rows, {r['folds']} folds, blending stages "
        f"{r['blend_stages']} (blended spaces searched among {r['blend_candidates'] or 'all'} candidates), "
        f"members {', '.join(r['members'])}:"
    )
    print(_table(rows))


def run_bench(
    n: int = TEST_ROWS,
    dim: int = 512,
    *,
    search: bool = False,
    pair_model: bool = False,
    search_rows: int = 34000,
    search_phases: bool = False,
    train_rows: int = 6000,
    blend_stages: int | None = None,
    seed: int = 0,
    backend: str = "torch",
    device: str = "cpu",
    exact_blending: bool = False,
) -> dict[str, Any]:
    """Run the parts asked for (``rule``, or ``search`` when asked), print a table per part,
    then one JSON line; returns that JSON object."""
    if search and search_rows < 2 * SEARCH_FOLDS:
        raise ShopeeError(
            f"bench match: --search-rows must be at least {2 * SEARCH_FOLDS}, got {search_rows}"
        )
    for option, value in (("--n", n), ("--dim", dim)):
        if value < 2:
            raise ShopeeError(f"bench match: {option} must be at least 2, got {value}")
    load_start = os.getloadavg()
    result: dict[str, Any] = {
        "bench": "match",
        "n": n,
        "dim": dim,
        "seed": seed,
        "backend": backend,
        "device": device,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    params = default_params()
    if search:
        result["search"] = run_search(
            search_rows,
            dim,
            seed,
            backend,
            device,
            blend_stages,
            phases_too=search_phases,
            exact_blending=exact_blending,
            pair_model=pair_model,
        )
        _print_search(result["search"])
    elif pair_model:
        result["pair_model"] = run_pair_model(n, dim, seed, backend, device, train_rows)
        result["pair_model_s"] = result["pair_model"]["pair_model_s"]
        _print_pair_model(result["pair_model"])
    else:
        _log(f"generating {n} synthetic rows (dim {dim}) ...")
        started = time.perf_counter()
        data = make_synthetic(n, dim, seed)
        result["generate_s"] = round(time.perf_counter() - started, 3)
        result["rule"] = run_rule(data, params, backend, device)
        del data
        _print_rule(result["rule"], params)
    load_end = os.getloadavg()
    result["loadavg_start"] = [round(v, 2) for v in load_start]
    result["loadavg_end"] = [round(v, 2) for v in load_end]
    result["peak_rss_mb"] = result["peak_mb"] = peak_rss_mb()
    print(
        f"load average (1, 5, 15 min) at start {', '.join(f'{v:.2f}' for v in load_start)}, "
        f"at end {', '.join(f'{v:.2f}' for v in load_end)} on {os.cpu_count()} cores; "
        f"process peak memory {result['peak_rss_mb']:.0f} MB"
    )
    print(json.dumps(result), flush=True)
    return result
