"""The fold output contract: ``<output>/<exp>/fold<k>/`` and how it is written.

A fold trains in ``fold<k>.partial/`` (its log, its per-epoch checkpoint ``last.pt`` and metrics)
and is renamed to ``fold<k>/`` only when every output is written, so a killed run never leaves a
directory that looks finished. ``fold<k>/`` holds ``config.json``, ``model.safetensors``,
``oof_index.parquet``, ``oof_<kind>.npy`` (row-aligned, L2-normalized), ``metrics.json`` and
``train.log``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shopee.atomic import atomic_path

REQUIRED_FILES = ("config.json", "model.safetensors", "oof_index.parquet", "metrics.json", "train.log")


def fold_dir(output: str | Path, exp: str, fold: int) -> Path:
    return Path(output) / exp / f"fold{fold}"


def partial_dir(output: str | Path, exp: str, fold: int) -> Path:
    return Path(output) / exp / f"fold{fold}.partial"


def is_finished(path: Path) -> bool:
    """A fold directory with every output and ``finished`` in its metrics."""
    if not all((path / name).is_file() for name in REQUIRED_FILES):
        return False
    try:
        metrics = json.loads((path / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return bool(metrics.get("finished")) and all(
        (path / f"oof_{kind}.npy").is_file() for kind in metrics.get("kinds", [])
    )


def read_metrics(path: Path) -> dict[str, Any]:
    return json.loads((path / "metrics.json").read_text())


def save_array(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def save_index(path: Path, index: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        index.to_parquet(tmp, index=False)


def git(where: Path, *args: str) -> str:
    """Output of ``git ARGS`` run in ``where`` (OSError or SubprocessError when it fails)."""
    return subprocess.run(
        ["git", *args], cwd=where, capture_output=True, text=True, check=True, timeout=10
    ).stdout


def git_commit(where: Path) -> str:
    """The commit the code ran from (``-dirty`` with uncommitted changes), or ``unknown``."""
    try:
        commit = git(where, "rev-parse", "HEAD").strip()
        dirty = git(where, "status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")
