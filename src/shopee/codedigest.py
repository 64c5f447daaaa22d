"""The digest of the code that shapes a fold's embeddings, recorded when the fold is trained and
checked wherever a fold is used.

A fold's ``model.safetensors`` and ``config.json`` are not the whole model: the code that builds
the architecture from the config and feeds it rows is too. A fold trained before a change to
pooling or a neck still loads (same tensors) and then embeds differently from its out-of-fold
arrays, so thresholds tuned on those arrays no longer fit. Training records this digest in the
fold's ``config.json`` (``code_digest``: a sha256 over the files, and one per file so that a
refusal can name them); ``kaggle pull``, ``optimize-ensemble`` and ``build-kernel`` compare it with
this checkout's (``check_code``) and refuse a fold trained by other code unless
``--allow-code-change``.

The files covered (paths relative to the package) are those that decide what a model's embeddings
are, given its weights and its config:

- ``models/*.py``: the encoders (which timm / Hugging Face module, which features), pooling,
  necks, fusion, the TF-IDF encoder;
- ``dataset.py``: how a row becomes the model's input (image resize and normalization,
  tokenization);
- ``data.py``: how titles are read and decoded (escape text) and images opened;
- ``embed.py``: batching, the forward pass at inference and the L2 normalization;
- ``pretrained.py``: it builds the encoders (which timm or transformers module, in which dtype) and
  loads the tokenizer. Most of it finds pretrained files, which a trained fold does not need, so it
  also changes in ways that cannot matter; the refusal names it and the user judges.

Left out, and why:

- ``models/heads.py`` and ``models/contrastive.py``: the training losses; the margin heads are
  dropped at match time, so they change how a model is trained, not what trained weights embed;
- ``augment.py``, ``train.py``, ``optim.py``, ``sampling.py``: training only;
- ``config.py``: ``config.json`` stores every field resolved, so a default changed later never
  reaches an old fold; a new field changes embeddings only through code that reads it, which is
  covered above;
- ``runtime.py``: device and precision (fp16 on a GPU) move embeddings by rounding, not by meaning;
- ``match/`` and the tuning modules: they consume embeddings and are tuned afresh on them.

Only file bytes are hashed, sorted by relative path: nothing is normalized, so a comment change in
a covered file counts as a change (the refusal names the file; ``--allow-code-change`` passes it).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shopee.errors import ShopeeError

if TYPE_CHECKING:
    from shopee.outputs import FoldRecord

PACKAGE_ROOT = Path(__file__).resolve().parent  # the checkout's package; tests point it elsewhere
# the covered files: patterns under the package, less the training-only ones
SHAPING_FILES = ("models/*.py", "dataset.py", "data.py", "embed.py", "pretrained.py")
TRAINING_ONLY = frozenset({"models/heads.py", "models/contrastive.py"})
ALLOW_FLAG = "--allow-code-change"


@dataclass(frozen=True)
class CodeDigest:
    """sha256 of the shaping files together (``sha256``) and of each one (relative path -> sha256)."""

    sha256: str
    files: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "files": dict(self.files)}

    @classmethod
    def from_dict(cls, data: Any) -> CodeDigest:
        """The digest a ``config.json`` records; ``ValueError`` when it is not one."""
        if not isinstance(data, Mapping) or not isinstance(data.get("files"), Mapping):
            raise ValueError("expected {sha256, files}")
        files = {str(path): str(digest) for path, digest in data["files"].items()}
        return cls(str(data.get("sha256", "")), files)

    def differing(self, other: CodeDigest) -> list[str]:
        """The files whose bytes differ, or that one side has and the other lacks."""
        if self.sha256 == other.sha256:
            return []
        paths = set(self.files) | set(other.files)
        return sorted(p for p in paths if self.files.get(p) != other.files.get(p))


def shaping_files(root: Path | None = None) -> list[Path]:
    """The covered files under ``root`` (the package), sorted by relative path."""
    root = PACKAGE_ROOT if root is None else Path(root)
    found = {path for pattern in SHAPING_FILES for path in root.glob(pattern) if path.is_file()}
    return sorted(
        (p for p in found if p.relative_to(root).as_posix() not in TRAINING_ONLY),
        key=lambda p: p.relative_to(root).as_posix(),
    )


def code_digest(root: Path | None = None) -> CodeDigest:
    """The digest of the covered files as they are now under ``root`` (this checkout's package)."""
    root = PACKAGE_ROOT if root is None else Path(root)
    files = {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in shaping_files(root)
    }
    combined = hashlib.sha256("".join(f"{p}\0{d}\n" for p, d in files.items()).encode()).hexdigest()
    return CodeDigest(combined, files)


class CodeChanged(ShopeeError):
    """A fold trained by other code than this checkout's; ``reason`` is the message without the fold."""

    def __init__(self, where: str, files: list[str]) -> None:
        verb = "differs" if len(files) == 1 else "differ"
        self.files = files
        self.reason = (
            f"trained by other code ({', '.join(files)} {verb} from this checkout); "
            f"pass {ALLOW_FLAG} to use it anyway"
        )
        super().__init__(f"{where}: {self.reason}")


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


def check_code(
    record: FoldRecord, allow: bool, where: str | None = None, warn: Callable[[str], None] = _warn
) -> list[str]:
    """The one check of a fold's code: the covered files that differ from this checkout's.

    ``CodeChanged`` (one line naming ``where``, by default the fold's folder, and the files) when
    some differ and not ``allow``; with ``allow`` they are returned and ``warn`` says so. A fold
    that records no digest (trained before digests were kept) passes with a warning."""
    where = where or str(record.path)
    recorded = record.code_digest
    if recorded is None:
        warn(f"{where}: records no code digest (trained before digests were kept): not checked")
        return []
    files = recorded.differing(code_digest())
    if files and not allow:
        raise CodeChanged(where, files)
    if files:
        warn(f"{where}: trained by other code ({', '.join(files)}); used anyway ({ALLOW_FLAG})")
    return files


def fold_key(record: FoldRecord) -> str:
    """``exp003:0`` (``exp003:full``): how an ensemble file names a fold."""
    return f"{record.exp}:{record.fold}"


def check_records(records: Iterable[FoldRecord], allow: bool) -> dict[str, list[str]]:
    """``check_code`` on every record, all before any is used; the folds used although other code
    trained them (``fold_key`` -> the files that differ), for the ensemble file or the manifest."""
    changes = {fold_key(record): check_code(record, allow) for record in records}
    return {key: files for key, files in changes.items() if files}


def merge_changes(*maps: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Several ``check_records`` results as one: per fold, every file any of them names."""
    merged: dict[str, set[str]] = {}
    for changes in maps:
        for key, files in changes.items():
            merged.setdefault(key, set()).update(files)
    return {key: sorted(files) for key, files in sorted(merged.items())}
