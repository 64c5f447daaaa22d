"""The ensemble file ``<output>/ensembles/NAME.json``: its format, written, read and checked here.

``optimize-ensemble`` writes it; ``predict``, the kernel and the demo summary read it::

    {"format": 2, "name": "v1",
     "params": {...},                     # the matching params (shopee.match.rules)
     "experiments": {"exp001": [0, 1]},   # the fold models whose embeddings the params use
     "combined_sources": {"cat:txt": [{"source": "exp001:txt", "weight": 1.0}, ...]},
     "projections": {"pca128:all": {"parts": [...], "dim": 128, "whiten": false,
                                    "file": "v1.pca128.npz"}},   # PCA of concatenated sources
     "data": {"dir": ..., "oof_rows": ..., "train_sha256": ..., "folds_sha256": ...,
              "rows": ..., "n_folds": ...},   # what the folds were trained on (DataFingerprint)
     "objective": "dense",           # the CV set the search maximized F1 on (shopee.scoring)
     "cv_f1": ...,                   # its F1; cv_f1_dense, cv_f1_fold (cv_f1_all) beside it
     "cv_f1_heldout": ...,           # the same search scored on folds it did not tune on
     "heldout": {"f1", "folds": {fold: F1}, "params": {fold: the rule tuned without it}},
     "size_curve": {...},            # thresholds against rows matched (shopee.size_curve) or null
     "pair_model": {...},            # the second stage (shopee.pairwise.model) or null: its model
                                     # file beside this one, features, floors, thresholds, CV F1,
                                     # "shipped" (false: tried, lost to the rule; predict ignores it),
                                     # "decision" (the two figures compared: the CV F1 at the test's
                                     # rows since 2026-12-03), size_curve.threshold_fit (its
                                     # thresholds against rows, in logit; absent: as tuned);
                                     # directed pairs with query-side features since 2026-12
     "fold_combination": "mean_embedding",   # how predict combines fold models (constants)
     "models": "folds",              # or "full": each experiment's full-data model instead
                                     # (``with_full_models``; "experiments" then lists "full")
     "cv_f1_at_rows": {...},         # the F1 expected at a test's row count (size_curve.f1_at) of
                                     # what predict ships; "cv_f1_at_rows_rule": the thresholds'
     "early_stopping": {"gain", "folds"},   # what choosing epochs on the scored rows added (or null)
     "others_per_row": 2.1,          # the OOF rows' mean group size less one (predict prints it)
     "code_changes": {"exp003:0": ["models/pooling.py"]},  # folds tuned on although other
                                     # embedding-shaping code trained them (--allow-code-change;
                                     # shopee.codedigest), with the files that differed; {} or absent
     "scores": {...}, "members": {...}, "steps": [...], "skipped": [...], ...}

An embedding source is ``<exp>:<kind>`` (the fold models' embeddings of that kind, averaged over
folds and re-normalized) or ``cat:<kind>`` (several such sources concatenated with weights, as
``combined_sources`` says) or ``pca<dim>:all`` (the concatenation of its parts reduced by the PCA
stored beside the ensemble file, ``shopee.projection``).
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any

import pandas as pd

from shopee.atomic import write_json
from shopee.constants import FOLD_COMBINATIONS, FULL_FOLD, OBJECTIVES
from shopee.errors import ShopeeError
from shopee.folds import DataFingerprint
from shopee.match import validate_params
from shopee.projection import is_projection
from shopee.size_curve import f1_at, params_at_rows, tunables

ENSEMBLE_FORMAT = 2
COMBINED_PREFIX = "cat:"


class EnsembleError(ShopeeError):
    """An ensemble file that cannot be used; the message names the file and the field."""


def _fail(where: str, field: str, message: str) -> None:
    raise EnsembleError(f"{where}: {field}: {message}")


def _number(ensemble: dict[str, Any], key: str, where: str) -> None:
    value = ensemble.get(key)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _fail(where, key, f"expected a number, got {value!r}")


def validate_ensemble(ensemble: Any, where: str = "ensemble") -> dict[str, Any]:
    """``ensemble`` with its params normalized (``validate_params``), or an ``EnsembleError``
    naming ``where`` and the field at fault."""
    if not isinstance(ensemble, dict):
        _fail(where, "ensemble", f"expected a JSON object, got {type(ensemble).__name__}")
    found = ensemble.get("format")
    if found != ENSEMBLE_FORMAT:
        made = f"format {found}" if found is not None else "an older version"  # 1 had no "format"
        _fail(
            where,
            "format",
            f"made by {made} of shopee, this reads {ENSEMBLE_FORMAT}: run optimize-ensemble again",
        )
    if not isinstance(ensemble.get("name"), str) or not ensemble["name"]:
        _fail(where, "name", f"expected a non-empty string, got {ensemble.get('name')!r}")
    try:
        params = validate_params(ensemble.get("params"))
    except ShopeeError as exc:
        raise EnsembleError(f"{where}: {exc}") from None
    experiments = ensemble.get("experiments")
    if not isinstance(experiments, dict) or not experiments:
        _fail(where, "experiments", f"expected an object of experiment -> folds, got {experiments!r}")
    for exp, folds in experiments.items():
        fold_numbers = all(isinstance(f, int) and f >= 0 for f in folds) if isinstance(folds, list) else False
        if not folds or not (fold_numbers or folds == [FULL_FOLD]):
            _fail(
                where,
                f"experiments.{exp}",
                f'expected a non-empty list of fold numbers or ["full"], got {folds!r}',
            )
    data = ensemble.get("data")
    try:
        DataFingerprint.from_dict(data)  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError):
        _fail(where, "data", "expected the data fingerprint (train_sha256, folds_sha256, rows, n_folds)")
    combined = ensemble.get("combined_sources", {})
    if not isinstance(combined, dict):
        _fail(where, "combined_sources", f"expected an object, got {combined!r}")
    for source, parts in combined.items():
        if not source.startswith(COMBINED_PREFIX) or not isinstance(parts, list) or not parts:
            _fail(where, f"combined_sources.{source}", "expected cat:<kind> -> a list of parts")
        for i, part in enumerate(parts):
            if not isinstance(part, dict) or not isinstance(part.get("weight"), numbers.Real):
                _fail(where, f"combined_sources.{source}[{i}]", "expected {source, weight}")
            field = f"combined_sources.{source}[{i}].source"
            _check_source(part.get("source"), experiments, {}, where, field)
    projections = ensemble.get("projections", {})
    if not isinstance(projections, dict):
        _fail(where, "projections", f"expected an object, got {projections!r}")
    for source, spec in projections.items():
        if (
            not isinstance(spec, dict)
            or Path(str(spec.get("file"))).name != spec.get("file")
            or not spec.get("parts")
        ):
            _fail(
                where,
                f"projections.{source}",
                "expected {parts, dim, whiten, file} with a file beside the ensemble",
            )
        for i, part in enumerate(spec["parts"]):
            _check_source(part, experiments, {}, where, f"projections.{source}.parts[{i}]")
    for i, member in enumerate(params["members"]):
        if member["type"] == "embedding":
            _check_source(
                member["source"],
                experiments,
                {**combined, **projections},
                where,
                f"params.members[{i}].source",
            )
    if ensemble.get("objective") not in OBJECTIVES:
        _fail(where, "objective", f"expected {', '.join(OBJECTIVES)}, got {ensemble.get('objective')!r}")
    _number(ensemble, "cv_f1", where)
    curve = ensemble.get("size_curve")
    if curve is not None:
        if not isinstance(curve, dict) or not isinstance(curve.get("fit"), dict):
            _fail(where, "size_curve", "expected null or an object with its fit")
        known = set(tunables(params))
        for path, coefficients in curve["fit"].items():
            if path not in known or not all(
                isinstance(coefficients.get(k), numbers.Real) for k in ("a", "b", "min", "max")
            ):
                _fail(where, f"size_curve.fit.{path}", "not a tunable of the params with a, b, min, max")
    pairs = ensemble.get("pair_model")
    if pairs is not None:
        needed = ("file", "features", "params", "floors", "threshold", "min2", "cv_f1")
        if not isinstance(pairs, dict) or any(key not in pairs for key in needed):
            _fail(where, "pair_model", f"expected null or an object with {', '.join(needed)}")
        if Path(str(pairs["file"])).name != pairs["file"]:
            _fail(where, "pair_model.file", "expected a file name beside the ensemble file")
        if not isinstance(pairs.get("shipped", True), bool):
            _fail(where, "pair_model.shipped", "expected true or false")
    changes = ensemble.get("code_changes", {})
    if not isinstance(changes, dict) or not all(
        isinstance(files, list) and all(isinstance(f, str) for f in files) for files in changes.values()
    ):
        _fail(where, "code_changes", f"expected an object of fold -> list of files, got {changes!r}")
    if ensemble.get("fold_combination", FOLD_COMBINATIONS[0]) not in FOLD_COMBINATIONS:
        _fail(
            where,
            "fold_combination",
            f"expected {' or '.join(FOLD_COMBINATIONS)}, got {ensemble.get('fold_combination')!r}",
        )
    return {**ensemble, "params": params}


def _check_source(source: Any, experiments: dict, combined: dict, where: str, field: str) -> None:
    if not isinstance(source, str) or ":" not in source:
        _fail(where, field, f"expected <exp>:<kind> or cat:<kind>, got {source!r}")
    if source.startswith(COMBINED_PREFIX) or is_projection(source):
        if source not in combined:
            _fail(where, field, f"{source} is not described in combined_sources or projections")
    elif source.split(":", 1)[0] not in experiments:
        _fail(where, field, f"{source}: its experiment is not one of {', '.join(experiments)}")


def read_ensemble(path: str | Path) -> dict[str, Any]:
    """The checked ensemble in ``path`` (one ``EnsembleError`` line naming the file otherwise)."""
    try:
        ensemble = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EnsembleError(f"{path}: cannot read the ensemble ({exc})") from None
    return validate_ensemble(ensemble, str(path))


def write_ensemble(path: str | Path, ensemble: dict[str, Any]) -> None:
    """Check ``ensemble`` and write it atomically (an invalid one is never written)."""
    write_json(path, validate_ensemble({"format": ENSEMBLE_FORMAT, **ensemble}, str(path)))


def params_for_rows(ensemble: dict[str, Any], n: int, by_size: bool = True) -> dict[str, Any]:
    """The matching params for a set of ``n`` rows: the size curve evaluated at ``n`` when the
    ensemble has one (and ``by_size``), else the tuned params as they are."""
    curve = ensemble.get("size_curve") if by_size else None
    return validate_params(params_at_rows(ensemble["params"], curve, n))


def shipped_pair_model(ensemble: dict[str, Any]) -> dict[str, Any] | None:
    """The ensemble's pair model when predict is to use it (an ensemble written before the field
    existed shipped every pair model it had), else None."""
    pairs = ensemble.get("pair_model")
    return pairs if pairs and pairs.get("shipped", True) else None


def pair_model_path(ensemble_path: str | Path, ensemble: dict[str, Any]) -> Path | None:
    """Where the ensemble's shipped pair model lies (beside its file), or None."""
    pairs = shipped_pair_model(ensemble)
    return Path(ensemble_path).parent / pairs["file"] if pairs else None


CARRIED_OVER = "the fold models' estimate, carried over to the full-data models: no CV scores them"


def expected_f1(ensemble: dict[str, Any], n: int, pair_model: bool = True) -> dict[str, Any] | None:
    """The F1 the CV expects on ``n`` rows of unseen groups (``size_curve.f1_at``) of what
    predict ships: the rule's, or (``pair_model``) a shipped pair model's from its own size
    curve. None without a size curve holding F1s. For full-data models (``with_full_models``) it
    is the fold models' figure, and says so (``carried_over``): nothing measured theirs."""
    pairs = shipped_pair_model(ensemble) if pair_model else None
    estimate = f1_at(pairs.get("size_curve"), n) if pairs else f1_at(ensemble.get("size_curve"), n)
    if estimate and pairs:
        estimate = {**estimate, "of": "pair model"}
    if estimate and ensemble.get("models") == FULL_FOLD:
        estimate = {**estimate, "carried_over": CARRIED_OVER}
    if estimate and ensemble.get("early_stopping"):
        estimate = {**estimate, "selection_gain": ensemble["early_stopping"]["gain"]}
    return estimate


def code_changes(ensemble: dict[str, Any]) -> dict[str, list[str]]:
    """The folds the ensemble was tuned on although other code trained them (``exp003:0`` -> the
    files that differed from the checkout that tuned it); {} for an ensemble without any."""
    return {str(key): list(files) for key, files in ensemble.get("code_changes", {}).items()}


def fold_combination(ensemble: dict[str, Any]) -> str:
    """How predict combines an experiment's fold models (``FOLD_COMBINATIONS``)."""
    return ensemble.get("fold_combination", FOLD_COMBINATIONS[0])


def with_full_models(ensemble: dict[str, Any]) -> dict[str, Any]:
    """The ensemble with each experiment's full-data model (``--fold full``) in place of its fold
    models. The matching rule, the size curve and the pair model stay as tuned on the fold models'
    out-of-fold embeddings: nothing scores a full-data model (it trained on every labelled row), so
    its thresholds are the fold models' carried over, as the published solutions did."""
    if ensemble.get("models") == FULL_FOLD:
        return ensemble
    return {
        **ensemble,
        "experiments": {exp: [FULL_FOLD] for exp in ensemble["experiments"]},
        "models": FULL_FOLD,
        "tuned_on_folds": ensemble["experiments"],
        "models_note": "full-data models; thresholds tuned on the fold models' out-of-fold embeddings, "
        "carried over unscored",
    }


def ensemble_data(ensemble: dict[str, Any]) -> DataFingerprint:
    """The data the ensemble's folds were trained on."""
    return DataFingerprint.from_dict(ensemble["data"])


def embedding_sources(ensemble: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(sources the params use, the ``<exp>:<kind>`` sources the fold models must produce)."""
    needed = {m["source"] for m in ensemble["params"]["members"] if m["type"] == "embedding"}
    combined = ensemble.get("combined_sources", {})
    projections = ensemble.get("projections", {})
    base = {s for s in needed if not s.startswith(COMBINED_PREFIX) and not is_projection(s)}
    for source in needed & set(combined):
        base |= {part["source"] for part in combined[source]}
    for source in needed & set(projections):
        base |= set(projections[source]["parts"])
    return needed, base


def side_files(ensemble_path: str | Path, ensemble: dict[str, Any]) -> list[Path]:
    """The files the ensemble keeps beside itself: its pair model and its projections."""
    folder = Path(ensemble_path).parent
    files = [folder / spec["file"] for spec in ensemble.get("projections", {}).values()]
    pairs = pair_model_path(ensemble_path, ensemble)
    return files + ([pairs] if pairs else [])


def scored_objectives(ensemble: dict[str, Any]) -> list[str]:
    """The CV sets the ensemble's rules were scored on (a ``cv_f1_<objective>`` each)."""
    return [o for o in OBJECTIVES if f"cv_f1_{o}" in ensemble]


def summary_table(ensemble: dict[str, Any]) -> pd.DataFrame:
    """F1 after each rule the search added on every CV set scored, and the objective's precision
    and recall."""
    objectives = scored_objectives(ensemble)
    main = ensemble["objective"]
    rows = []
    for s in ensemble.get("steps", []):
        row: dict[str, Any] = {"step": s["step"]}
        row.update({f"F1 {o}": s[o]["f1"] for o in objectives})
        row.update({f"P {main}": s[main]["precision"], f"R {main}": s[main]["recall"]})
        rows.append(row)
    return pd.DataFrame(rows)
