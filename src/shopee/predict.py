"""``predict``: embed a split with an ensemble's trained fold models, match it, write a submission.

The same function runs in the Kaggle notebook. Each experiment's fold models embed the rows; the
fold embeddings of a kind are averaged and re-normalized (``exp:kind``); concatenated sources
(``cat:kind``) are rebuilt as the optimizer built them; ``shopee.match.match`` applies the
ensemble's params. The output has one row per posting, ``matches`` space-separated with the
posting itself first.
"""

from __future__ import annotations

import dataclasses
import json
import time
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
from shopee.embed import embed
from shopee.ensemble import read_ensemble
from shopee.errors import ShopeeError
from shopee.match import match, matches_to_strings
from shopee.models import ShopeeModel
from shopee.oof import combined_embedding
from shopee.outputs import fold_dir, is_finished


def load_fold_model(path: Path, device: torch.device) -> tuple[ShopeeModel, Config]:
    """A trained fold model from its ``config.json`` and ``model.safetensors`` (no hub access:
    the encoders are built from their configs and the weights come from the checkpoint)."""
    if not is_finished(path):
        raise ShopeeError(f"{path}: no finished fold here (missing or incomplete outputs)")
    meta = json.loads((path / "config.json").read_text())
    cfg = Config.from_dict(meta["config"])
    build = dataclasses.replace(cfg, image_pretrained=False, text_pretrained=False)
    model = ShopeeModel(build, int(meta["n_classes"]))
    state = safetensors.torch.load_file(str(path / "model.safetensors"), device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ShopeeError(
            f"{path / 'model.safetensors'}: does not fit its config ({len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors, first {(missing or unexpected)[0]!r})"
        )
    return model.to(device).eval(), cfg


def embed_rows(
    model: ShopeeModel,
    cfg: Config,
    df: pd.DataFrame,
    device: torch.device,
    image_policy: str,
    batch_size: int | None = None,
) -> dict[str, np.ndarray]:
    image_kwargs: dict[str, Any] = {}
    if model.image is not None:
        image_kwargs = dict(image_size=cfg.image_size, mean=model.image.mean, std=model.image.std)
    dataset = PostingDataset(
        df,
        tokenizer=model.text.tokenizer if model.text is not None else None,
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
    return embed(model, loader, device, cfg.amp, cfg.channels_last and device.type == "cuda")


def ensemble_embeddings(
    ensemble: dict[str, Any],
    output: Path,
    df: pd.DataFrame,
    device: torch.device,
    image_policy: str,
    timings: dict[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Every embedding source the params use, for the rows of ``df``."""
    needed = {m["source"] for m in ensemble["params"]["members"] if m["type"] == "embedding"}
    combined = ensemble.get("combined_sources", {})
    base = {s for s in needed if not s.startswith("cat:")}
    for source in needed & set(combined):
        base |= {part["source"] for part in combined[source]}
    sums: dict[str, np.ndarray] = {}
    for exp, folds in ensemble["experiments"].items():
        if not any(s.startswith(f"{exp}:") for s in base):
            continue
        for fold in folds:
            started = time.perf_counter()
            path = fold_dir(output, exp, fold)
            model, cfg = load_fold_model(path, device)
            out = embed_rows(model, cfg, df, device, image_policy)
            for kind, array in out.items():
                key = f"{exp}:{kind}"
                if key in base:
                    sums[key] = sums.get(key, 0) + array
            del model
            if timings is not None:
                timings[f"embed:{exp}:fold{fold}"] = round(time.perf_counter() - started, 2)
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


def predict(
    ensemble_path: Path,
    data_dir: Path,
    *,
    output: Path | None = None,
    split: str = "test",
    image_policy: str = "blank",
    backend: str = "torch",
    timings: dict[str, float] | None = None,
) -> pd.DataFrame:
    """``posting_id, matches`` for every row of ``split``; ``output`` is the experiments' root
    (default: the folder above ``ensembles/``)."""
    ensemble = read_ensemble(ensemble_path)
    output = output or Path(ensemble_path).resolve().parent.parent
    tuned_on = ensemble["data"]["dir"]
    for exp, folds in ensemble["experiments"].items():
        for fold in folds:
            path = fold_dir(output, exp, fold)
            if not is_finished(path):
                raise ShopeeError(f"{path}: the ensemble needs this trained fold")
            trained_on = str(Path(json.loads((path / "config.json").read_text())["data"]).resolve())
            if trained_on != tuned_on:
                raise ShopeeError(
                    f"{path}: trained on {trained_on}, but the ensemble was tuned on {tuned_on}; "
                    "run optimize-ensemble again"
                )
    df = read_split(data_dir, split, image_policy=image_policy, check_images=True)  # type: ignore[arg-type]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    timings = timings if timings is not None else {}
    embeddings = ensemble_embeddings(ensemble, output, df, device, image_policy, timings)
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


def write_submission(submission: pd.DataFrame, path: Path) -> None:
    write_csv(path, submission)
