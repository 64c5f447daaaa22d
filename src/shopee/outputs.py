"""The fold output contract: ``<output>/<exp>/fold<k>/``, how it is written, and ``FoldRecord``,
the one reader of a finished fold.

A fold trains in ``fold<k>.partial/`` (its log, its per-epoch checkpoint ``last.pt`` and metrics)
and is renamed to ``fold<k>/`` only when every output is written, so a killed run never leaves a
directory that looks finished. ``fold<k>/`` holds:

- ``config.json``: the experiment, fold, seed, debug flag, git commit, library versions, the data
  it was trained on (``data``: a ``DataFingerprint`` plus the directory, for people), the number
  of classes, the digest of the code that shapes its embeddings (``code_digest``, see
  ``shopee.codedigest``), and the resolved ``Config`` (``config``);
- ``model.safetensors``: the model's weights;
- ``oof_index.parquet`` (posting_id, label_group, fold) and ``oof_<kind>.npy`` for each
  embedding kind, row-aligned, L2-normalized float32;
- with ``Config.dense_oof``: ``dense_index.parquet`` (posting_id, label_group: the fold's training
  rows, every one of them) and ``dense_<kind>.npy``, the same model's embeddings of those rows,
  L2-normalized float16: what the dense CV objective matches the validation rows against;
- ``metrics.json`` (``finished``, ``kinds``, ``summary``, per-epoch ``epochs``) and ``train.log``.

A full-data run (``--fold full``) writes ``<output>/<exp>/full/`` the same way, without the
out-of-fold and dense files (every row was trained on), with ``full_data`` in its metrics.

Everything else (OOF loading, ``predict``, the kernel bundle, summaries) reads a fold through
``FoldRecord``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from shopee.atomic import atomic_path, write_json
from shopee.codedigest import CodeDigest
from shopee.config import Config, embedding_kinds
from shopee.constants import FULL_FOLD, TFIDF_TEXT_MODEL
from shopee.errors import ShopeeError
from shopee.folds import DataFingerprint, fingerprint_of_dir

if TYPE_CHECKING:
    import torch

    from shopee.models import ShopeeModel

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
INDEX_FILE = "oof_index.parquet"
DENSE_INDEX_FILE = "dense_index.parquet"
METRICS_FILE = "metrics.json"
LOG_FILE = "train.log"
MODEL_FILES = (CONFIG_FILE, MODEL_FILE)  # what rebuilding the model needs
BUNDLE_FILES = (*MODEL_FILES, METRICS_FILE)  # what a Kaggle bundle ships of a fold
FULL_REQUIRED_FILES = (CONFIG_FILE, MODEL_FILE, METRICS_FILE, LOG_FILE)  # a full-data run: no OOF
REQUIRED_FILES = (*FULL_REQUIRED_FILES, INDEX_FILE)
HEAD_PREFIX = "heads."  # the margin heads' tensors: training needs them, matching never does
WEIGHT_FORMATS = ("fp16", "fp32")
FP16_MIN_ELEMENTS = 4096  # smaller tensors (biases, norms, BatchNorm statistics) stay float32


Fold = int | str  # a fold number, or FULL_FOLD for the run on every row


def fold_name(fold: Fold) -> str:
    """``fold3``, or ``full`` for the full-data run."""
    return FULL_FOLD if fold == FULL_FOLD else f"fold{int(fold)}"


def fold_dir(output: str | Path, exp: str, fold: Fold) -> Path:
    return Path(output) / exp / fold_name(fold)


def partial_dir(output: str | Path, exp: str, fold: Fold) -> Path:
    return Path(output) / exp / f"{fold_name(fold)}.partial"


def oof_file(kind: str) -> str:
    return f"oof_{kind}.npy"


def dense_file(kind: str) -> str:
    return f"dense_{kind}.npy"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ShopeeError(f"{path}: cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise ShopeeError(f"{path}: expected a JSON object")
    return data


def is_finished(path: Path) -> bool:
    """A fold directory with every output and ``finished`` in its metrics (a full-data run has
    no out-of-fold files)."""
    if not all((path / name).is_file() for name in FULL_REQUIRED_FILES):
        return False
    try:
        metrics = json.loads((path / METRICS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not metrics.get("finished"):
        return False
    if metrics.get("full_data"):
        return True
    return (path / INDEX_FILE).is_file() and all(
        (path / oof_file(kind)).is_file() for kind in metrics.get("kinds", [])
    )


def finished_folds(output: str | Path, exp: str) -> tuple[list[int], list[str]]:
    """The finished folds of ``exp`` and a note for each fold directory that is not finished."""
    exp_dir = Path(output) / exp
    if not exp_dir.is_dir():
        raise ShopeeError(
            f"{exp_dir}: no such experiment output (train it first: python exp/{exp}.py --fold 0)"
        )
    folds, notes = [], []
    for path in sorted(exp_dir.glob("fold*")):
        name = path.name[4:]
        if not path.is_dir() or not name.isdigit():
            if path.name.endswith(".partial"):
                notes.append(f"{exp} {path.name[:-8]}: unfinished (a .partial run)")
            continue
        if is_finished(path):
            folds.append(int(name))
        else:
            notes.append(f"{exp} {path.name}: incomplete outputs")
    return folds, notes


@dataclass
class FoldRecord:
    """A trained fold as its files describe it: config, data fingerprint, metrics, arrays, model.

    ``FoldRecord.open`` needs only ``config.json``; what else a use needs is checked when asked for
    (``require``), so a kernel bundle (config and weights only) opens like a training output.
    """

    path: Path
    meta: dict[str, Any]
    config: Config
    _data: DataFingerprint | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> FoldRecord:
        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            what = "not trained" if not path.is_dir() else f"no {CONFIG_FILE}"
            raise ShopeeError(f"{path}: {what}")
        meta = _read_json(path / CONFIG_FILE)
        try:
            config = Config.from_dict(meta["config"])
        except (KeyError, TypeError, ShopeeError) as exc:
            raise ShopeeError(f"{path / CONFIG_FILE}: not a fold's config ({exc})") from None
        return cls(path, meta, config)

    # --- what the record says ----------------------------------------------------------------
    @property
    def exp(self) -> str:
        return str(self.meta.get("exp", self.path.parent.name))

    @property
    def fold(self) -> Fold:
        fold = self.meta.get("fold", FULL_FOLD if self.path.name == FULL_FOLD else self.path.name[4:])
        return FULL_FOLD if fold == FULL_FOLD else int(fold)

    @property
    def is_full(self) -> bool:
        """Trained on every train row (``--fold full``): no out-of-fold predictions."""
        return self.fold == FULL_FOLD

    @property
    def name(self) -> str:
        """``exp003/fold0`` (``exp003/full``)."""
        return f"{self.exp}/{fold_name(self.fold)}"

    @property
    def debug(self) -> bool:
        return bool(self.meta.get("debug", False))

    @property
    def n_classes(self) -> int:
        return int(self.meta["n_classes"])

    @property
    def data_dir(self) -> str:
        """The directory the fold was trained from (for messages; the fingerprint is the identity)."""
        data = self.meta.get("data")
        return str(data.get("dir", "?") if isinstance(data, Mapping) else data)

    @property
    def data(self) -> DataFingerprint:
        """The data this fold was trained on, by content.

        Folds trained before fingerprints were recorded hold only a path: the fingerprint is
        computed from that directory while it is still there (``upgrade`` writes it down).
        """
        if self._data is None:
            data = self.meta.get("data")
            if isinstance(data, Mapping) and "train_sha256" in data:
                self._data = DataFingerprint.from_dict(dict(data))
            else:
                directory = Path(str(data))
                if not (directory / "train.csv").is_file():
                    raise ShopeeError(
                        f"{self.path / CONFIG_FILE}: trained before data fingerprints were recorded, and "
                        f"its data {directory} is gone; train the fold again"
                    )
                self._data = fingerprint_of_dir(directory, self.config.n_folds)
        return self._data

    @property
    def code_digest(self) -> CodeDigest | None:
        """The digest of the embedding-shaping code that trained the fold (``shopee.codedigest``);
        None for a fold trained before digests were kept."""
        recorded = self.meta.get("code_digest")
        if recorded is None:
            return None
        try:
            return CodeDigest.from_dict(recorded)
        except ValueError as exc:
            raise ShopeeError(f"{self.path / CONFIG_FILE}: code_digest: {exc}") from None

    @property
    def is_legacy(self) -> bool:
        data = self.meta.get("data")
        return not (isinstance(data, Mapping) and "train_sha256" in data)

    def upgrade(self) -> bool:
        """Write the data fingerprint into a legacy record's ``config.json``; True if it did."""
        if not self.is_legacy:
            return False
        fingerprint = self.data
        self.meta = {**self.meta, "data": {"dir": self.data_dir, **fingerprint.to_dict()}}
        write_json(self.path / CONFIG_FILE, self.meta)
        return True

    @cached_property
    def metrics(self) -> dict[str, Any]:
        return _read_json(self.path / METRICS_FILE)

    @property
    def selection_gain(self) -> float | None:
        """What choosing the kept epoch on this fold's own validation rows (early stopping) added
        to its CV F1: the kept epoch's F1 less the last trained epoch's, the fold a fixed schedule
        of the same run would have kept (0 when the last is kept; None without per-epoch F1s)."""
        scored = {e["epoch"]: e["cv_f1"] for e in self.metrics.get("epochs", []) if "cv_f1" in e}
        if not scored:
            return None
        kept = self.metrics.get("best_epoch", max(scored))
        return float(scored[kept] - scored[max(scored)]) if kept in scored else None

    @property
    def finished(self) -> bool:
        return is_finished(self.path)

    @property
    def kinds(self) -> list[str]:
        """Embedding kinds the model produces (and, for a training output, the OOF arrays)."""
        if (self.path / METRICS_FILE).is_file():
            return list(self.metrics.get("kinds", embedding_kinds(self.config)))
        return embedding_kinds(self.config)

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.metrics["summary"])

    @property
    def text_key(self) -> str:
        """What the fold's tokenizer and text config are resolved from (``text_weights`` or name)."""
        return self.config.text_weights or self.config.text_model

    @property
    def loader_key(self) -> tuple[Any, ...]:
        """Folds with equal keys read identical batches (same image transform, same tokens)."""
        cfg = self.config
        image = (cfg.image_model, cfg.image_size) if cfg.image_model else None
        text = (self.text_key, cfg.max_len) if cfg.text_model else None
        if cfg.text_model == TFIDF_TEXT_MODEL:  # its inputs come from this fold's own vocabulary
            text = (cfg.text_model, str(self.path))
        return image, text

    def require(self, names: tuple[str, ...] = MODEL_FILES, why: str = "") -> FoldRecord:
        for name in names:
            if not (self.path / name).is_file():
                raise ShopeeError(f"{self.path}: no {name}{'; ' + why if why else ''}")
        return self

    # --- out-of-fold predictions ---------------------------------------------------------------
    def oof_index(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / INDEX_FILE)

    def oof(self, kind: str, rows: int | None = None) -> np.ndarray:
        """``oof_<kind>.npy`` as float32, checked: ``rows`` rows (when given), all finite."""
        return self._array(oof_file(kind), rows, "the index")

    def _array(self, name: str, rows: int | None, index: str) -> np.ndarray:
        path = self.path / name
        array = np.load(path).astype(np.float32, copy=False)
        if rows is not None and len(array) != rows:
            raise ShopeeError(f"{path}: {len(array)} rows for {rows} in {index}")
        if not np.isfinite(array).all():
            raise ShopeeError(f"{path}: holds NaN or inf")
        return array

    @property
    def has_dense(self) -> bool:
        """Whether the fold stored its model's embeddings of its training rows (every kind)."""
        return (self.path / DENSE_INDEX_FILE).is_file() and all(
            (self.path / dense_file(kind)).is_file() for kind in self.kinds
        )

    def dense_index(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / DENSE_INDEX_FILE)

    def dense(self, kind: str, rows: int | None = None) -> np.ndarray:
        """``dense_<kind>.npy`` (stored float16) as float32, checked like ``oof``."""
        return self._array(dense_file(kind), rows, DENSE_INDEX_FILE)

    # --- the model -------------------------------------------------------------------------------
    def build_model(
        self, device: torch.device | str = "cpu", text_dirs: Mapping[str, str | Path] | None = None
    ) -> ShopeeModel:
        """The trained model in eval mode, from ``config.json`` and ``model.safetensors`` alone.

        No hub access: encoders are built from their configs and the weights come from the
        checkpoint. ``text_dirs`` maps ``text_key`` to a directory holding the text model's
        config and tokenizer files (a kernel bundles them); without an entry the text model is
        resolved as in training.
        """
        import safetensors.torch

        self.require(MODEL_FILES, "the model cannot be rebuilt")
        weights = self.path / MODEL_FILE
        state = safetensors.torch.load_file(str(weights), device="cpu")
        # a slim (inference) checkpoint has no margin heads: build the model without them
        model = self._skeleton(text_dirs, with_heads=any(key.startswith(HEAD_PREFIX) for key in state))
        missing, unexpected = model.load_state_dict(state, strict=False)  # casts fp16 tensors up
        if missing or unexpected:
            raise ShopeeError(
                f"{weights}: does not fit its config ({len(missing)} missing, "
                f"{len(unexpected)} unexpected tensors, first {(missing or unexpected)[0]!r})"
            )
        return model.to(device).eval()

    def _skeleton(self, text_dirs: Mapping[str, str | Path] | None, with_heads: bool) -> ShopeeModel:
        """The fold's architecture, randomly initialised, nothing read from a hub."""
        import dataclasses

        from shopee.models import ShopeeModel

        cfg = self.config
        build = dataclasses.replace(cfg, image_pretrained=False, text_pretrained=False)
        if cfg.text_model and self.text_key in (text_dirs or {}):
            build = dataclasses.replace(build, text_weights=str(text_dirs[self.text_key]))  # type: ignore[index]
        return ShopeeModel(build, self.n_classes, with_heads=with_heads)

    def buffer_keys(self) -> set[str]:
        """The checkpoint keys that are buffers, not parameters (BatchNorm statistics, the TF-IDF
        encoder's vocabulary, IDF weights and PCA): built on the meta device, so no memory."""
        import torch

        with torch.device("meta"):
            model = self._skeleton(None, with_heads=False)
        return {name for name, _ in model.named_buffers()}


# --- writing ------------------------------------------------------------------------------------


def write_inference_weights(
    source: Path, target: Path, weights: str = "fp16", buffers: Collection[str] = ()
) -> None:
    """``source``'s ``model.safetensors`` for inference only into ``target``: without the margin
    heads and, with ``weights="fp16"``, its large floating parameters in float16 (small ones, such
    as biases, keep float32: they weigh nothing and fp16 would round them). ``buffers`` (the keys
    of ``FoldRecord.buffer_keys``) keep their own dtype: they are not weights but fitted
    statistics (the TF-IDF encoder's IDF and PCA), which fp16 would change."""
    import safetensors.torch

    if weights not in WEIGHT_FORMATS:
        raise ShopeeError(f"--weights {weights}: use one of {', '.join(WEIGHT_FORMATS)}")
    state = safetensors.torch.load_file(str(source / MODEL_FILE), device="cpu")
    save_inference_weights(state, target / MODEL_FILE, weights, buffers)


def save_inference_weights(
    state: Mapping[str, torch.Tensor], path: Path, weights: str = "fp16", buffers: Collection[str] = ()
) -> None:
    """``state`` (a model's state dict) written to ``path`` as ``write_inference_weights`` writes
    it: no margin heads, large floating parameters in float16 unless ``weights="fp32"``."""
    import safetensors.torch
    import torch

    slim = {}
    for key, tensor in state.items():
        if key.startswith(HEAD_PREFIX):
            continue
        tensor = tensor.detach().cpu()
        if (
            weights == "fp16"
            and key not in buffers
            and tensor.is_floating_point()
            and tensor.numel() >= FP16_MIN_ELEMENTS
        ):
            tensor = tensor.to(torch.float16)
        slim[key] = tensor.contiguous()
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(slim, str(tmp), metadata={"shopee": f"inference {weights}"})


def save_array(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def save_index(path: Path, index: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        index.to_parquet(tmp, index=False)


def write_fold(
    work: Path,
    *,
    meta: Mapping[str, Any],
    index: pd.DataFrame,
    embeddings: Mapping[str, np.ndarray],
    metrics: Mapping[str, Any],
    dense_index: pd.DataFrame | None = None,
    dense: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Everything but the weights and the log into ``work`` (the fold's ``.partial`` folder):
    ``config.json`` (``meta``), the OOF index and arrays, the dense ones when given,
    ``metrics.json`` with ``finished`` and ``kinds`` added. ``metrics.json`` goes last: a fold is
    finished only once it is written."""
    index = index[["posting_id", "label_group", "fold"]].reset_index(drop=True)
    save_index(work / INDEX_FILE, index)
    for kind, array in embeddings.items():
        if len(array) != len(index):
            raise ValueError(f"{kind}: {len(array)} embeddings for {len(index)} rows")
        save_array(work / oof_file(kind), np.asarray(array, dtype=np.float32))
    if dense is not None and dense_index is not None:
        dense_index = dense_index[["posting_id", "label_group"]].reset_index(drop=True)
        save_index(work / DENSE_INDEX_FILE, dense_index)
        for kind, array in dense.items():
            if len(array) != len(dense_index):
                raise ValueError(f"dense {kind}: {len(array)} embeddings for {len(dense_index)} rows")
            save_array(work / dense_file(kind), np.asarray(array, dtype=np.float16))
    write_json(work / CONFIG_FILE, dict(meta))
    write_json(work / METRICS_FILE, {**metrics, "finished": True, "kinds": list(embeddings)})


def write_full(work: Path, *, meta: Mapping[str, Any], metrics: Mapping[str, Any], kinds: list[str]) -> None:
    """A full-data run's ``config.json`` and ``metrics.json`` (last: finished once written)."""
    write_json(work / CONFIG_FILE, dict(meta))
    write_json(work / METRICS_FILE, {**metrics, "finished": True, "full_data": True, "kinds": kinds})
