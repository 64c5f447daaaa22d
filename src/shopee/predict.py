"""``predict``: embed a split with an ensemble's trained fold models, match it, write a submission.

The same function runs in the Kaggle notebook, where the fold models come from the kernel's
dataset instead of the training outputs. Each experiment's fold models embed the rows; the fold
embeddings of a kind become one (``exp:kind``) as the ensemble's ``fold_combination`` says (their
mean re-normalized, or side by side so that cosines average); concatenated sources
(``cat:kind``) and projections are rebuilt as the optimizer built them; ``match_rows`` applies
the ensemble's pair model when it ships one, else its params at the row count. The output has one
row per posting, ``matches`` space-separated with the posting itself first.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from shopee.atomic import write_csv
from shopee.constants import FOLD_COMBINATIONS, FULL_FOLD, PREDICT_IMAGE_POLICIES
from shopee.data import read_split
from shopee.embed import embed_rows
from shopee.ensemble_file import (
    COMBINED_PREFIX,
    embedding_sources,
    ensemble_data,
    expected_f1,
    fold_combination,
    pair_model_path,
    params_for_rows,
    read_ensemble,
    shipped_pair_model,
    with_full_models,
)
from shopee.errors import ShopeeError
from shopee.folds import train_sha256
from shopee.match import Pairs, match, matches_to_strings, normalize_rows
from shopee.metrics import MatchScore, score_submission
from shopee.oof import combined_embedding
from shopee.outputs import FoldRecord, fold_dir
from shopee.projection import Projection, is_projection
from shopee.runtime import Runtime, visible_devices
from shopee.size_curve import describe, describe_f1_at


def ensemble_records(ensemble: dict[str, Any], output: Path) -> list[FoldRecord]:
    """The ensemble's fold models, each checked: its weights are there and it was trained on the
    data the ensemble was tuned on (by content: a moved data directory is fine)."""
    tuned_on = ensemble_data(ensemble)
    records = []
    for exp, folds in ensemble["experiments"].items():
        for fold in folds:
            path = fold_dir(output, exp, fold)
            if not path.is_dir():
                train = f"python exp/{exp}.py --fold {fold}"
                raise ShopeeError(
                    f"{path}: not trained; the ensemble needs this model ({train}, or tune without it)"
                )
            record = FoldRecord.open(path).require(why="the ensemble needs this fold's model")
            if record.data != tuned_on:
                raise ShopeeError(
                    f"{path}: trained on other data ({record.data.short()}) than the ensemble was tuned on "
                    f"({tuned_on.short()}); run optimize-ensemble again"
                )
            records.append(record)
    return records


def check_data_dir(ensemble: dict[str, Any], data_dir: Path) -> str:
    """Refuse a data directory whose train.csv is not the one the models were trained on; a note
    when it has none (nothing to compare)."""
    tuned_on = ensemble_data(ensemble)
    if not (Path(data_dir) / "train.csv").is_file():
        return f"note: {data_dir} has no train.csv; the data the models were trained on is not checked"
    train = read_split(data_dir, "train", check_images=False)
    if train_sha256(train) != tuned_on.train_sha256:
        raise ShopeeError(
            f"{Path(data_dir) / 'train.csv'}: not the train.csv the ensemble's models were trained on "
            f"({len(train)} rows here, {tuned_on.rows} there, different posting ids or label groups)"
        )
    return ""


def fold_embeddings(
    ensemble: dict[str, Any],
    records: list[FoldRecord],
    df: pd.DataFrame,
    devices: Sequence[torch.device],
    image_policy: str,
    timings: dict[str, float] | None = None,
    *,
    tta: str | None = None,
    text_dirs: Mapping[str, str | Path] | None = None,
) -> dict[str, list[np.ndarray]]:
    """Each ``<exp>:<kind>`` source the params need, for the rows of ``df``: one L2-normalized
    array per fold model of the experiment.

    Fold models (of any experiment) that read identical batches embed in one pass, in the
    precision their config asks for (``Runtime``). The models of a pass are spread round-robin
    over ``devices`` (both GPUs of a Kaggle T4 x2): each device embeds its share of them from the
    same decoded batches, so the result is that of one device.
    """
    _, base = embedding_sources(ensemble)
    groups: dict[tuple[Any, ...], list[FoldRecord]] = {}
    for record in records:
        if any(s.startswith(f"{record.exp}:") for s in base):
            groups.setdefault(record.loader_key, []).append(record)
    per_fold: dict[str, list[np.ndarray]] = {}
    for members in groups.values():
        started = time.perf_counter()
        placed = [devices[i % len(devices)] for i in range(len(members))]
        runtimes = [Runtime.for_config(r.config, d) for r, d in zip(members, placed, strict=True)]
        models = [
            rt.prepare(r.build_model(d, text_dirs))
            for r, d, rt in zip(members, placed, runtimes, strict=True)
        ]
        outs = embed_rows(models, members[0].config, df, runtimes, image_policy=image_policy, tta=tta)
        for record, out in zip(members, outs, strict=True):
            for kind, array in out.items():
                key = f"{record.exp}:{kind}"
                if key in base:
                    per_fold.setdefault(key, []).append(array)
        del models
        if timings is not None:
            timings[f"embed:{', '.join(r.name for r in members)}"] = round(time.perf_counter() - started, 2)
    missing = base - set(per_fold)
    if missing:
        raise ShopeeError(f"the params use {', '.join(sorted(missing))}, which no trained fold produces")
    return per_fold


def combine_folds(per_fold: Mapping[str, Sequence[np.ndarray]], how: str) -> dict[str, np.ndarray]:
    """One embedding per source from its fold models' (see ``FOLD_COMBINATIONS``)."""
    if how == "mean_embedding":
        return {k: normalize_rows(np.sum(arrays, axis=0)) for k, arrays in per_fold.items()}
    if how == "mean_cosine":  # each fold's space kept: a pair's cosine is the mean of the folds'
        return {k: combined_embedding(list(arrays), [1.0] * len(arrays)) for k, arrays in per_fold.items()}
    raise ShopeeError(f"fold combination {how!r}: use one of {', '.join(FOLD_COMBINATIONS)}")


def ensemble_embeddings(
    ensemble: dict[str, Any],
    records: list[FoldRecord],
    df: pd.DataFrame,
    devices: Sequence[torch.device],
    image_policy: str,
    timings: dict[str, float] | None = None,
    *,
    tta: str | None = None,
    text_dirs: Mapping[str, str | Path] | None = None,
    ensemble_dir: Path | None = None,
) -> dict[str, np.ndarray]:
    """Every embedding source the params use, for the rows of ``df`` (projections are read from
    ``ensemble_dir``, where the ensemble file lies): the fold models' embeddings
    (``fold_embeddings``) combined as the ensemble says (``fold_combination``), then the sources
    built from them."""
    per_fold = fold_embeddings(
        ensemble, records, df, devices, image_policy, timings, tta=tta, text_dirs=text_dirs
    )
    return with_derived_sources(ensemble, combine_folds(per_fold, fold_combination(ensemble)), ensemble_dir)


def with_derived_sources(
    ensemble: dict[str, Any], embeddings: dict[str, np.ndarray], ensemble_dir: Path | None = None
) -> dict[str, np.ndarray]:
    """``embeddings`` (``<exp>:<kind>`` sources) with the sources the params build from them:
    concatenations (``cat:<kind>``) and projections (read from ``ensemble_dir``)."""
    needed, _ = embedding_sources(ensemble)
    embeddings = dict(embeddings)
    combined = ensemble.get("combined_sources", {})
    for source in sorted(s for s in needed if s.startswith(COMBINED_PREFIX)):
        parts = combined[source]
        embeddings[source] = combined_embedding(
            [embeddings[p["source"]] for p in parts], [p["weight"] for p in parts]
        )
    for source in sorted(s for s in needed if is_projection(s)):
        spec = ensemble["projections"][source]
        embeddings[source] = Projection.load(Path(ensemble_dir or ".") / spec["file"])(embeddings)
    return embeddings


def first_groups(df: pd.DataFrame, limit: int) -> pd.DataFrame:
    """The first ``limit`` rows, widened or cut to whole label groups when ``df`` has labels.

    Groups are taken in order of first appearance while they fit; the F1 of the slice is then the
    F1 of complete groups, as on the hidden test set.
    """
    if limit < 1:
        raise ShopeeError(f"limit={limit}: must be at least 1")
    if "label_group" not in df.columns:
        return df.head(limit).reset_index(drop=True)
    sizes = df.groupby("label_group", sort=False).size()
    keep = sizes.index[sizes.cumsum() <= limit]
    if len(keep) == 0:
        keep = sizes.index[:1]
    return df[df["label_group"].isin(keep)].reset_index(drop=True)


def predict(
    ensemble_path: Path,
    data_dir: Path,
    *,
    output: Path | None = None,
    split: str = "test",
    limit: int | None = None,
    image_policy: str = "blank",
    backend: str = "torch",
    tta: str | None = None,
    text_dirs: Mapping[str, str | Path] | None = None,
    timings: dict[str, float] | None = None,
    devices: Sequence[torch.device] | None = None,
    by_size: bool = True,
    models: str = "folds",
) -> pd.DataFrame:
    """``posting_id, matches`` for every row of ``split`` (or the first ``limit`` rows, whole
    groups on train); ``output`` is the experiments' root (default: the folder above
    ``ensembles/``); ``tta`` as in ``embed_many``, ``text_dirs`` as in ``FoldRecord.build_model``;
    ``devices`` (default: every visible GPU, else the CPU) share the fold models. With
    ``by_size`` the thresholds are the ensemble's size curve evaluated at the number of rows
    (``ensemble_file.params_for_rows``); they are printed.
    An image that will not open stops the run (``error``) or is replaced by a blank one
    (``blank``); ``skip`` is refused, since it would leave rows out of the submission.
    ``models="full"`` embeds with each experiment's full-data model instead of its fold models
    (``ensemble_file.with_full_models``)."""
    if image_policy not in PREDICT_IMAGE_POLICIES:
        raise ShopeeError(
            f"image policy {image_policy!r}: predicting takes {' or '.join(PREDICT_IMAGE_POLICIES)} "
            "(skip would leave rows out of the submission)"
        )
    ensemble = read_ensemble(ensemble_path)
    if models == FULL_FOLD:
        ensemble = with_full_models(ensemble)
    output = output or Path(ensemble_path).resolve().parent.parent
    records = ensemble_records(ensemble, output)
    note = check_data_dir(ensemble, data_dir)
    if note:
        print(note, flush=True)
    timings = timings if timings is not None else {}
    started = time.perf_counter()
    df = read_split(data_dir, split, image_policy=image_policy, check_images=True)  # type: ignore[arg-type]
    if limit is not None:
        df = first_groups(df, limit)
    timings["read data"] = round(time.perf_counter() - started, 2)
    devices = list(devices) if devices else visible_devices()
    embeddings = ensemble_embeddings(
        ensemble,
        records,
        df,
        devices,
        image_policy,
        timings,
        tta=tta,
        text_dirs=text_dirs,
        ensemble_dir=Path(ensemble_path).parent,
    )
    started = time.perf_counter()
    pairs = match_rows(
        ensemble,
        ensemble_path,
        df,
        embeddings,
        backend=backend,
        device=devices[0].type,
        by_size=by_size,
        timings=timings,
    )
    timings["match"] = round(time.perf_counter() - started, 2)
    print(matches_a_row(ensemble, len(pairs), len(df)), flush=True)
    if by_size:
        print(describe_f1_at(expected_f1(ensemble, len(df))), flush=True)
    return pd.DataFrame(
        {"posting_id": df["posting_id"], "matches": matches_to_strings(pairs, df["posting_id"])}
    )


def matches_a_row(ensemble: dict[str, Any], matched: int, n: int) -> str:
    """``4.83 matches a row (train's rows have 2.11 others in their group)``: far more matches a
    row than train's groups hold is the sign of a rule too loose for this density."""
    line = f"{matched / max(n, 1):.2f} matches a row"
    if ensemble.get("others_per_row") is not None:
        line += f" (the tuning rows have {ensemble['others_per_row']:.2f} others in their group on average)"
    return line


def match_rows(
    ensemble: dict[str, Any],
    ensemble_path: Path,
    df: pd.DataFrame,
    embeddings: dict[str, np.ndarray],
    *,
    backend: str = "torch",
    device: str = "cpu",
    by_size: bool = True,
    pair_model: bool = True,
    timings: dict[str, float] | None = None,
) -> Pairs:
    """The matches of ``df``'s rows from their embeddings, as the ensemble ships them: its pair
    model when it has one shipped (and ``pair_model``), else its rule with the thresholds for
    ``len(df)`` rows (``by_size``) or as tuned. Says on stdout what it uses."""
    inputs = dict(embeddings=embeddings, titles=df["title"].to_numpy(), phashes=df["image_phash"].to_numpy())
    info = shipped_pair_model(ensemble) if pair_model else None
    if info:
        from shopee.pairwise.model import load_booster, pair_thresholds_at, predict_pairs, threshold_fits

        booster = load_booster(pair_model_path(ensemble_path, ensemble))
        threshold, min2 = pair_thresholds_at(info, len(df), by_size)
        how = f"for {len(df)} rows" if by_size and threshold_fits(info) else "as tuned"
        print(
            f"matching with the pair model on {len(df)} rows: probability >= {threshold}, "
            f"min2 {min2} ({how})",
            flush=True,
        )
        return predict_pairs(
            info, booster, len(df), backend=backend, device=device, timings=timings, by_size=by_size, **inputs
        )
    params = params_for_rows(ensemble, len(df), by_size)
    how = "thresholds for" if by_size and ensemble.get("size_curve") else "fixed thresholds (tuned), on"
    print(f"matching with {how} {len(df)} rows: {describe(params)}", flush=True)
    return match(params, len(df), backend=backend, device=device, timings=timings, **inputs)


def score_on_train(submission: pd.DataFrame, data_dir: Path) -> MatchScore:
    """F1 of a submission made on (a slice of) train, against train's label groups."""
    train = read_split(data_dir, "train", check_images=False)
    labels = train.loc[train["posting_id"].isin(submission["posting_id"]), ["posting_id", "label_group"]]
    return score_submission(submission, labels)


def write_submission(submission: pd.DataFrame, path: Path) -> None:
    write_csv(path, submission)


def print_timings(timings: Mapping[str, float]) -> None:
    """Seconds per stage: reading, each fold's embedding, matching (its stages indented), total."""
    top = [k for k in timings if k in ("read data", "match") or k.startswith("embed:")]
    for stage in top:
        print(f"  {stage:<40} {timings[stage]:8.2f} s")
        if stage == "match":
            for sub in (k for k in timings if k not in top):
                print(f"      {sub:<36} {timings[sub]:8.2f} s")
    print(f"  {'total':<40} {sum(timings[k] for k in top):8.2f} s")
