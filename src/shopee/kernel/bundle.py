"""The kernel's Kaggle dataset: package source, fold models, text model files, matching params.

Layout (``kernels/SLUG-dataset/``)::

    dataset-metadata.json
    shopee-bundle.json       manifest: what was built from what, every file with size and sha256
    ensemble.json            the tuned ensemble (matching params and the folds it uses)
    NAME.pairs.txt           its pair model (LightGBM), when it has one
    shopee/                  the package source the notebook imports (without bench/ and demo/)
    models/<exp>/fold<k>/    config.json and metrics.json as training wrote them; model.safetensors
                             for inference: no margin heads, large tensors fp16 (or fp32)
    pretrained/<name>/       config and tokenizer files of each text model (no weights: those
                             travel in the fold checkpoints)
    wheels/                  optional wheels the notebook installs with pip --no-index

``open_bundle`` is the notebook's side: it finds every file the manifest lists and checks it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import shopee
from shopee.atomic import write_json
from shopee.constants import FULL_FOLD, TFIDF_TEXT_MODEL
from shopee.errors import ShopeeError
from shopee.outputs import BUNDLE_FILES, MODEL_FILE, FoldRecord, fold_dir, write_inference_weights

MANIFEST = "shopee-bundle.json"
FORMAT = 1
ENSEMBLE_FILE = "ensemble.json"
MODELS_DIR = "models"
# Parts of the package a submission never runs: benchmarks and the demo data generator.
NOT_BUNDLED = ("bench", "demo")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(key).name or key).strip("-.") or "text-model"


def copy_package(dest: Path) -> None:
    """The package source into ``dest``, without bytecode and the parts a kernel never runs."""
    source = Path(shopee.__file__).resolve().parent
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")

    def ignore(folder: str, names: list[str]) -> set[str]:
        top = Path(folder).resolve() == source
        return set(skip(folder, names)) | ({n for n in names if n in NOT_BUNDLED} if top else set())

    shutil.copytree(source, dest, ignore=ignore)


def _copy_folds(records: Iterable[FoldRecord], dest: Path, weights: str) -> list[FoldRecord]:
    """Each fold's files into ``dest/models`` (its weights for inference, ``weights`` precision;
    the rest unchanged); the records of the copies."""
    copies = []
    for record in records:
        target = fold_dir(dest / MODELS_DIR, record.exp, record.fold)
        target.mkdir(parents=True)
        for name in BUNDLE_FILES:
            if name == MODEL_FILE:
                write_inference_weights(record.path, target, weights, record.buffer_keys())
            elif (record.path / name).is_file():
                shutil.copy2(record.path / name, target / name)
        copies.append(FoldRecord.open(target))
    return copies


def _copy_text_models(records: Iterable[FoldRecord], dest: Path) -> dict[str, str]:
    """Config and tokenizer files of every text model, keyed as ``FoldRecord.build_model`` looks
    them up (``text_key``)."""
    from shopee.pretrained import resolve_text_model, text_files_for_bundle

    text_dirs: dict[str, str] = {}
    for record in records:
        cfg, key = record.config, record.text_key
        if not cfg.text_model or key in text_dirs or cfg.text_model == TFIDF_TEXT_MODEL:  # in its weights
            continue
        source = resolve_text_model(cfg.text_model, cfg.text_weights, with_weights=False)  # no weights
        files = text_files_for_bundle(source)
        name = _safe_name(key)
        while f"pretrained/{name}" in text_dirs.values():
            name += "-1"
        target = dest / "pretrained" / name
        target.mkdir(parents=True)
        for file in files:
            shutil.copy2(file, target / file.name)
        text_dirs[key] = f"pretrained/{name}"
    return text_dirs


def _copy_wheels(wheels: Iterable[Path], dest: Path) -> None:
    for wheel in wheels:
        if not wheel.is_file() or wheel.suffix != ".whl":
            raise ShopeeError(f"--wheel {wheel}: not a wheel file (*.whl)")
        (dest / "wheels").mkdir(exist_ok=True)
        shutil.copy2(wheel, dest / "wheels" / wheel.name)


def size_mib(manifest: Mapping[str, Any]) -> float:
    return sum(f["bytes"] for f in manifest["files"]) / 2**20


def file_list(root: Path) -> list[dict[str, Any]]:
    return [
        {"path": p.relative_to(root).as_posix(), "bytes": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    ]


def write_bundle(
    dest: Path,
    ensemble_path: Path,
    records: Iterable[FoldRecord],
    *,
    info: Mapping[str, Any],
    ensemble: Mapping[str, Any] | None = None,
    wheels: Iterable[Path] = (),
    dataset_metadata: Mapping[str, Any],
    weights: str = "fp16",
    extra_files: Iterable[Path] = (),
) -> dict[str, Any]:
    """Fill the empty directory ``dest``; returns the manifest (also written as ``MANIFEST``).

    ``records`` are the ensemble's folds, already checked (``predict.ensemble_records``). ``info``
    (slug, ensemble name, git commit, settings...) goes into the manifest as it is. ``ensemble``,
    when given, is written instead of the file at ``ensemble_path`` (the full-data models' copy).
    """
    write_json(dest / "dataset-metadata.json", dict(dataset_metadata))
    if ensemble is None:
        shutil.copy2(ensemble_path, dest / ENSEMBLE_FILE)
    else:
        write_json(dest / ENSEMBLE_FILE, dict(ensemble))
    for path in extra_files:  # files the ensemble keeps beside itself (pair model, projections)
        shutil.copy2(path, dest / path.name)
    copy_package(dest / "shopee")
    copies = _copy_folds(records, dest, weights)
    text_dirs = _copy_text_models(copies, dest)
    _copy_wheels(wheels, dest)
    manifest = {
        "format": FORMAT,
        **info,
        "ensemble_file": ENSEMBLE_FILE,
        "models_dir": MODELS_DIR,
        "folds": sorted(record.name for record in copies),
        "weights": weights,
        "text_dirs": text_dirs,
        "files": file_list(dest),
    }
    write_json(dest / MANIFEST, manifest)
    return manifest


@dataclasses.dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict[str, Any]

    @property
    def ensemble_path(self) -> Path:
        return self.root / self.manifest["ensemble_file"]

    @property
    def models(self) -> Path:
        return self.root / self.manifest["models_dir"]

    @property
    def text_dirs(self) -> dict[str, Path]:
        return {key: self.root / rel for key, rel in self.manifest["text_dirs"].items()}

    def describe(self) -> str:
        m = self.manifest
        of = ", the fold models'" if m.get("models") == FULL_FOLD else ""
        cv = f"CV F1 {m['cv_f1']:.4f}, {m['objective']}{of}"
        return (
            f"kernel {m['slug']}: ensemble {m['ensemble']} ({cv}), built "
            f"{m['built_at']} from commit {m['git_commit']}; {len(m['folds'])} models "
            f"({', '.join(m['folds'])}); {len(m['files'])} files, {size_mib(m):.1f} MiB"
        )


def open_bundle(root: Path, checksums: bool = True) -> Bundle:
    """The bundle in ``root``, with every listed file present and of the listed size (and sha256)."""
    root = Path(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ShopeeError(f"{root / MANIFEST}: cannot read the kernel's manifest ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise ShopeeError(f"{root / MANIFEST}: format {manifest.get('format')}, this code reads {FORMAT}")
    for entry in manifest["files"]:
        path = root / entry["path"]
        if not path.is_file():
            raise ShopeeError(
                f"{path}: listed in the manifest but missing (upload the dataset with --dir-mode zip "
                "so that its folders are kept)"
            )
        if path.stat().st_size != entry["bytes"] or (checksums and sha256(path) != entry["sha256"]):
            raise ShopeeError(f"{path}: differs from the manifest (damaged or from another build)")
    return Bundle(root, manifest)
