"""``build-kernel``: a tuned ensemble -> a Kaggle notebook folder and its dataset folder.

Both folders are built beside their targets and renamed into place only when complete. A target
that holds something else than an earlier build of the same kernel (same slug, same ensemble) is
kept unless ``overwrite``. The bundled models are rebuilt once from the dataset folder before it
is renamed, so a kernel that could not load its models offline is never written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import nbformat

import shopee
from shopee.atomic import atomic_dir, replace_dir, write_json, write_text
from shopee.codedigest import check_records, merge_changes
from shopee.constants import FULL_FOLD, PREDICT_IMAGE_POLICIES, TEST_ROWS
from shopee.ensemble_file import (
    code_changes,
    expected_f1,
    read_ensemble,
    shipped_pair_model,
    side_files,
    with_full_models,
)
from shopee.errors import ShopeeError
from shopee.gitinfo import source_state
from shopee.kernel import metadata as meta
from shopee.kernel.bundle import MANIFEST, open_bundle, write_bundle
from shopee.kernel.environment import requirements
from shopee.kernel.notebook import make_notebook
from shopee.kernel.runtime import describe_runtime, estimate_runtime
from shopee.outputs import FoldRecord
from shopee.predict import ensemble_records
from shopee.size_curve import describe_f1_at


@dataclasses.dataclass(frozen=True)
class Kernel:
    notebook_dir: Path
    dataset_dir: Path
    manifest: dict[str, Any]

    @property
    def notebook(self) -> Path:
        return self.notebook_dir / f"{self.manifest['slug']}.ipynb"


def _check_target(path: Path, slug: str, ensemble: str, marker: str, overwrite: bool) -> None:
    """Refuse to replace a folder holding anything but an earlier build of this kernel."""
    if overwrite or not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    try:
        info = json.loads((path / marker).read_text())
        info = info.get("metadata", {}).get("shopee", info)  # a notebook keeps it in its metadata
        same = info.get("slug") == slug and info.get("ensemble") == ensemble
        holds = f"the kernel {info.get('slug')!r} of ensemble {info.get('ensemble')!r}"
    except (OSError, ValueError, AttributeError):
        same, holds = False, "something that is not a kernel built here"
    if not same:
        raise ShopeeError(f"{path}: already holds {holds}; pass --overwrite to replace it")


def _verify_models(dataset_dir: Path) -> None:
    """Rebuild every bundled fold model the way the notebook will (bundled text files only)."""
    bundle = open_bundle(dataset_dir, checksums=False)
    for fold in bundle.manifest["folds"]:
        FoldRecord.open(bundle.models / fold).build_model("cpu", bundle.text_dirs)


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """No hub lookups while the bundle is checked: what it needs must be in it."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def build_kernel(
    ensemble_path: Path,
    slug: str,
    *,
    user: str | None = None,
    out: Path = Path("kernels"),
    output: Path | None = None,
    title: str | None = None,
    accelerator: str = "NvidiaTeslaT4",
    private: bool = True,
    tta: str | None = None,
    image_policy: str = "blank",
    backend: str = "torch",
    cv_rows: int | None = None,
    wheels: Sequence[Path] = (),
    strict: bool = False,
    overwrite: bool = False,
    weights: str = "fp16",
    models: str = "folds",
    allow_over_time: bool = False,
    allow_code_change: bool = False,
) -> Kernel:
    """Write ``out/SLUG/`` (notebook + kernel-metadata.json) and ``out/SLUG-dataset/``.

    ``models="full"`` ships each experiment's full-data model instead of its fold models, with the
    rule tuned on the folds (``with_full_models``). A bundle whose estimated runtime on the hidden
    test exceeds Kaggle's 2 hours (``estimate_runtime``) is refused unless ``allow_over_time``; a
    fold trained by other embedding-shaping code than the one bundled (``shopee.codedigest``) unless
    ``allow_code_change``. The manifest's ``code_changes`` names the folds let through, here or
    when the ensemble was tuned (its own ``code_changes``)."""
    if image_policy not in PREDICT_IMAGE_POLICIES:
        raise ShopeeError(
            f"--image-policy {image_policy}: a submission takes {' or '.join(PREDICT_IMAGE_POLICIES)} "
            "(skip would leave rows out of it)"
        )
    meta.check_slug(slug)
    title = meta.kernel_title(slug, title)
    user = meta.kaggle_user(user)
    dataset_meta = meta.dataset_metadata(user, slug, title)
    kernel_meta = meta.kernel_metadata(user, slug, title, accelerator=accelerator, private=private)
    ensemble_path = Path(ensemble_path)
    ensemble = read_ensemble(ensemble_path)
    if models == FULL_FOLD:
        ensemble = with_full_models(ensemble)
    output = Path(output) if output else ensemble_path.resolve().parent.parent
    records = ensemble_records(ensemble, output)
    # the bundle ships this checkout's code: refuse folds other code trained (before any output)
    changes = merge_changes(code_changes(ensemble), check_records(records, allow_code_change))
    pairs = bool(shipped_pair_model(ensemble))
    runtime = estimate_runtime(records, ensemble["params"], tta=tta, pair_model=pairs)
    print(describe_runtime(runtime), flush=True)
    print(describe_f1_at(expected_f1(ensemble, TEST_ROWS)), flush=True)
    if not runtime["fits"] and not allow_over_time:
        raise ShopeeError(
            f"the bundle's estimated runtime, {runtime['seconds'] / 3600:.1f} h, exceeds Kaggle's 2 hours: "
            "ship fewer or smaller models (or --allow-over-time if you know better)"
        )
    extra = side_files(ensemble_path, ensemble)
    for path in extra:
        if not path.is_file():
            raise ShopeeError(
                f"{path}: a file the ensemble keeps beside itself is missing (run optimize-ensemble again)"
            )

    notebook_dir, dataset_dir = Path(out) / slug, Path(out) / (slug + meta.DATASET_SUFFIX)
    _check_target(notebook_dir, slug, ensemble["name"], f"{slug}.ipynb", overwrite)
    _check_target(dataset_dir, slug, ensemble["name"], MANIFEST, overwrite)
    commit, changed = source_state(Path(shopee.__file__).resolve().parent)
    if commit == "unknown" or changed:
        why = (
            "the package is not in a git checkout (commit unknown)"
            if commit == "unknown"
            else f"uncommitted changes in the package ({len(changed)} files, e.g. {changed[0]})"
        )
        if strict:
            raise ShopeeError(f"--strict: {why}; commit them first")
        print(f"warning: {why}; the kernel bundles the files as they are", file=sys.stderr)
        commit += "-dirty" if changed else ""

    info = {
        "slug": slug,
        "title": title,
        "kernel": kernel_meta["id"],
        "dataset": dataset_meta["id"],
        "ensemble": ensemble["name"],
        "ensemble_path": str(ensemble_path.resolve()),
        "objective": ensemble["objective"],
        "cv_f1": ensemble["cv_f1"],
        "cv_f1_heldout": ensemble.get("cv_f1_heldout"),
        "by_size": bool(ensemble.get("size_curve")),
        "pair_model": pairs,
        "expected_f1": expected_f1(ensemble, TEST_ROWS),
        "members": [m["name"] for m in ensemble["params"]["members"]],
        "git_commit": commit,
        "shopee_version": shopee.__version__,
        "built_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "accelerator": accelerator,
        "requirements": requirements(pair_model=pairs),
        "models": ensemble.get("models", "folds"),
        "estimated_runtime_s": round(runtime["seconds"]),
        "settings": {"tta": tta, "image_policy": image_policy, "backend": backend, "cv_rows": cv_rows},
        "code_changes": changes,
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as staging:
        new_dataset = Path(staging) / "dataset"
        new_dataset.mkdir()
        manifest = write_bundle(
            new_dataset,
            ensemble_path,
            records,
            ensemble=ensemble if models == FULL_FOLD else None,
            info=info,
            wheels=wheels,
            dataset_metadata=dataset_meta,
            weights=weights,
            extra_files=extra,
        )
        with _offline():
            _verify_models(new_dataset)
        notebook = make_notebook(info, dataset_meta["id"], manifest["folds"], [Path(w).name for w in wheels])
        replace_dir(new_dataset, dataset_dir)
        with atomic_dir(notebook_dir, overwrite=True) as tmp:
            write_text(tmp / f"{slug}.ipynb", nbformat.writes(notebook))
            write_json(tmp / "kernel-metadata.json", kernel_meta)
    return Kernel(notebook_dir, dataset_dir, manifest)
