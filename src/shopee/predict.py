"""``predict``: embed a split with an ensemble's trained fold models, match it, write a submission.

The same function runs in the Kaggle notebook, where the fold models come from the kernel's
dataset instead of the training outputs. Each experiment's fold models embed the rows; the fold
embeddings of a kind are averaged and re-normalized (``exp:kind``); concatenated sources
(``cat:kind``) are rebuilt as the optimizer built them; ``shopee.match.match`` applies the
ensemble's params. The output has one row per posting, ``matches`` space-separated with the
posting itself first.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import safetensors.torch
import torch

from shopee.atomic import write_csv
from shopee.config import Config
from shopee.data import read_split
from shopee.dataset import PostingDataset, make_loader
from shopee.embed import embed_many
from shopee.ensemble import read_ensemble
from shopee.errors import ShopeeError
from shopee.match import match, matches_to_strings
from shopee.metrics import MatchScore, score_submission
from shopee.models import ShopeeModel
from shopee.oof import combined_embedding
from shopee.outputs import fold_dir

MODEL_FILES = ("config.json", "model.safetensors")


def check_fold(path: Path) -> None:
    """A fold directory a model can be rebuilt from (its OOF arrays are not needed here)."""
    for name in MODEL_FILES:
        if not (path / name).is_file():
            what = "not trained" if not path.is_dir() else f"no {name}"
            raise ShopeeError(f"{path}: {what}; the ensemble needs this fold (train it, or tune without it)")


def text_key(cfg: Config) -> str:
    """What a fold's tokenizer and text config are resolved from (``text_weights`` or the name)."""
    return cfg.text_weights or cfg.text_model


def load_fold_model(
    path: Path, device: torch.device, text_dirs: Mapping[str, str | Path] | None = None
) -> tuple[ShopeeModel, Config]:
    """A trained fold model from its ``config.json`` and ``model.safetensors`` (no hub access:
    the encoders are built from their configs and the weights come from the checkpoint).

    ``text_dirs`` maps ``text_key(cfg)`` to a directory holding the text model's config and
    tokenizer files (a kernel bundles them); without an entry the model is resolved as in training.
    """
    check_fold(path)
    meta = json.loads((path / "config.json").read_text())
    cfg = Config.from_dict(meta["config"])
    build = dataclasses.replace(cfg, image_pretrained=False, text_pretrained=False)
    if cfg.text_model and text_key(cfg) in (text_dirs or {}):
        build = dataclasses.replace(build, text_weights=str(text_dirs[text_key(cfg)]))  # type: ignore[index]
    model = ShopeeModel(build, int(meta["n_classes"]))
    state = safetensors.torch.load_file(str(path / "model.safetensors"), device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ShopeeError(
            f"{path / 'model.safetensors'}: does not fit its config ({len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors, first {(missing or unexpected)[0]!r})"
        )
    return model.to(device).eval(), cfg


def embed_rows_shared(
    models: Sequence[ShopeeModel],
    cfg: Config,
    df: pd.DataFrame,
    device: torch.device,
    image_policy: str,
    batch_size: int | None = None,
    tta: str | None = None,
) -> list[dict[str, np.ndarray]]:
    """Embeddings of ``df`` by several models whose configs share ``loader_key``, decoding once."""
    first = models[0]
    image_kwargs: dict[str, Any] = {}
    if first.image is not None:
        image_kwargs = dict(image_size=cfg.image_size, mean=first.image.mean, std=first.image.std)
    dataset = PostingDataset(
        df,
        tokenizer=first.text.tokenizer if first.text is not None else None,
        max_len=cfg.max_len,
        image_policy=image_policy,  # type: ignore[arg-type]
        **image_kwargs,
    )
    loader = make_loader(
        dataset,
        batch_size or cfg.eval_batch_size,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )
    return embed_many(models, loader, device, cfg.amp, cfg.channels_last and device.type == "cuda", tta=tta)


def embed_rows(
    model: ShopeeModel,
    cfg: Config,
    df: pd.DataFrame,
    device: torch.device,
    image_policy: str,
    batch_size: int | None = None,
    tta: str | None = None,
) -> dict[str, np.ndarray]:
    return embed_rows_shared([model], cfg, df, device, image_policy, batch_size, tta)[0]


def loader_key(cfg: Config) -> tuple[Any, ...]:
    """Fold models with equal keys read identical batches (same image transform, same tokens)."""
    image = (cfg.image_model, cfg.image_size) if cfg.image_model else None
    text = (text_key(cfg), cfg.max_len) if cfg.text_model else None
    return image, text


def ensemble_embeddings(
    ensemble: dict[str, Any],
    output: Path,
    df: pd.DataFrame,
    device: torch.device,
    image_policy: str,
    timings: dict[str, float] | None = None,
    *,
    tta: str | None = None,
    text_dirs: Mapping[str, str | Path] | None = None,
) -> dict[str, np.ndarray]:
    """Every embedding source the params use, for the rows of ``df``."""
    needed = {m["source"] for m in ensemble["params"]["members"] if m["type"] == "embedding"}
    combined = ensemble.get("combined_sources", {})
    base = {s for s in needed if not s.startswith("cat:")}
    for source in needed & set(combined):
        base |= {part["source"] for part in combined[source]}
    # Folds (of any experiment) that read identical batches are embedded in one pass.
    groups: dict[tuple[Any, ...], list[tuple[str, int, Config]]] = {}
    for exp, folds in ensemble["experiments"].items():
        if not any(s.startswith(f"{exp}:") for s in base):
            continue
        for fold in folds:
            cfg = Config.from_dict(
                json.loads((fold_dir(output, exp, fold) / "config.json").read_text())["config"]
            )
            groups.setdefault(loader_key(cfg), []).append((exp, fold, cfg))
    sums: dict[str, np.ndarray] = {}
    for members in groups.values():
        started = time.perf_counter()
        models = [
            load_fold_model(fold_dir(output, exp, fold), device, text_dirs)[0] for exp, fold, _ in members
        ]
        outs = embed_rows_shared(models, members[0][2], df, device, image_policy, tta=tta)
        for (exp, _, _), out in zip(members, outs, strict=True):
            for kind, array in out.items():
                key = f"{exp}:{kind}"
                if key in base:
                    sums[key] = sums.get(key, 0) + array
        del models
        if timings is not None:
            names = ", ".join(f"{exp}/fold{fold}" for exp, fold, _ in members)
            timings[f"embed:{names}"] = round(time.perf_counter() - started, 2)
    missing = base - set(sums)
    if missing:
        raise ShopeeError(f"the params use {', '.join(sorted(missing))}, which no trained fold produces")
    embeddings = {k: v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12) for k, v in sums.items()}
    for source in needed & set(combined):
        parts = combined[source]
        embeddings[source] = combined_embedding(
            [embeddings[p["source"]] for p in parts], [p["weight"] for p in parts]
        )
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


def check_ensemble_folds(ensemble: dict[str, Any], output: Path) -> None:
    """Every fold the ensemble uses is there and was trained on the data it was tuned on."""
    tuned_on = ensemble["data"]["dir"]
    for exp, folds in ensemble["experiments"].items():
        for fold in folds:
            path = fold_dir(output, exp, fold)
            check_fold(path)
            trained_on = str(Path(json.loads((path / "config.json").read_text())["data"]).resolve())
            if trained_on != tuned_on:
                raise ShopeeError(
                    f"{path}: trained on {trained_on}, but the ensemble was tuned on {tuned_on}; "
                    "run optimize-ensemble again"
                )


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
) -> pd.DataFrame:
    """``posting_id, matches`` for every row of ``split`` (or the first ``limit`` rows, whole
    groups on train); ``output`` is the experiments' root (default: the folder above
    ``ensembles/``); ``tta`` and ``text_dirs`` as in ``embed`` and ``load_fold_model``."""
    ensemble = read_ensemble(ensemble_path)
    output = output or Path(ensemble_path).resolve().parent.parent
    check_ensemble_folds(ensemble, output)
    timings = timings if timings is not None else {}
    started = time.perf_counter()
    df = read_split(data_dir, split, image_policy=image_policy, check_images=True)  # type: ignore[arg-type]
    if limit is not None:
        df = first_groups(df, limit)
    timings["read data"] = round(time.perf_counter() - started, 2)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    embeddings = ensemble_embeddings(
        ensemble, output, df, device, image_policy, timings, tta=tta, text_dirs=text_dirs
    )
    started = time.perf_counter()
    pairs = match(
        ensemble["params"],
        len(df),
        embeddings=embeddings,
        titles=df["title"].to_numpy(),
        phashes=df["image_phash"].to_numpy(),
        backend=backend,
        device=device.type,
        timings=timings,
    )
    timings["match"] = round(time.perf_counter() - started, 2)
    return pd.DataFrame(
        {"posting_id": df["posting_id"], "matches": matches_to_strings(pairs, df["posting_id"])}
    )


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
