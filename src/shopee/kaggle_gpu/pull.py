"""Folds trained on Kaggle, brought home: verified, then installed where local training puts them.

``pull`` reads a version's output as ``kaggle kernels output`` lays it out (``output/<exp>/fold<k>/``,
``output/<exp>/fold<k>.partial/``, ``output/shopee-train-run.json``, other files) and installs each
requested fold that is finished into ``<output>/<exp>/fold<k>/`` (a full-data run into
``<output>/<exp>/full/``, checked the same way), only once it is shown to be what local training of
the same experiment would have written: every output there (``is_finished``), no half-written file,
the config equal to the local experiment file's with the run's ``--set`` overrides, the data
fingerprint equal to the local ``train.csv``'s, and the code that shaped its embeddings this
checkout's (``shopee.codedigest``; ``allow_code_change`` lets a difference through). A fold that
fails a check is refused with one line naming the difference; nothing is half-installed (each
fold is copied beside its target, checked, then renamed into place).

A second pull of the same output changes nothing: folds are compared file by file (size and
sha256). A local fold that differs from the download is kept unless ``overwrite``.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shopee.atomic import atomic_dir
from shopee.config import config_difference
from shopee.constants import FULL_FOLD
from shopee.errors import ShopeeError
from shopee.folds import DataFingerprint
from shopee.kaggle_gpu.training import RUN_RECORD

if TYPE_CHECKING:
    from shopee.outputs import Fold

LEFTOVERS = ("*.tmp", "*.kaggle-partial")  # an atomic write or a download that did not complete
_EXP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

# what happened to each requested fold
INSTALLED, REPLACED, UNCHANGED, KEPT, MISSING, REFUSED = (
    "installed",
    "replaced",
    "unchanged",
    "kept",
    "missing",
    "refused",
)


def _fold(value: Any) -> Fold:
    """A fold of a run record: a number, or ``full`` for the full-data run."""
    return FULL_FOLD if value == FULL_FOLD else int(value)


@dataclass(frozen=True)
class RunRecord:
    """``output/shopee-train-run.json``: what the training notebook was asked for and what finished
    (fold numbers, and ``full`` for a full-data run)."""

    exp: str
    folds: list[Fold]
    finished: list[Fold]
    unfinished: dict[str, str]
    overrides: list[str]
    debug: bool

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        try:
            data = json.loads(path.read_text())
            record = cls(
                exp=str(data["exp"]),
                folds=[_fold(f) for f in data["folds"]],
                finished=[_fold(f) for f in data.get("finished", [])],
                unfinished={str(k): str(v) for k, v in dict(data.get("unfinished", {})).items()},
                overrides=[str(s) for s in data.get("overrides", [])],
                debug=bool(data.get("debug", False)),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ShopeeError(f"{path}: not a training run record ({type(exc).__name__}: {exc})") from None
        if not _EXP_NAME.fullmatch(record.exp):
            raise ShopeeError(f"{path}: exp {record.exp!r} is not an experiment name")
        return record


@dataclass(frozen=True)
class FoldResult:
    fold: Fold
    state: str  # INSTALLED, REPLACED, UNCHANGED, KEPT, MISSING or REFUSED
    detail: str

    def line(self, exp: str) -> str:
        from shopee.outputs import fold_name

        return f"{exp} {fold_name(self.fold)}: {self.state}" + (f": {self.detail}" if self.detail else "")


def output_root(downloaded: Path) -> Path:
    """The folder holding the run record: ``downloaded/output`` (as downloaded) or ``downloaded``
    itself (the output folder given directly)."""
    for root in (downloaded / "output", downloaded):
        if (root / RUN_RECORD).is_file():
            return root
    if not downloaded.is_dir():
        raise ShopeeError(f"{downloaded}: no such folder")
    raise ShopeeError(
        f"{downloaded}: no output/{RUN_RECORD} (the notebook did not reach its end: see "
        "python -m shopee kaggle status OWNER/SLUG); nothing installed"
    )


def file_digests(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folder``: relative path -> (size, sha256)."""
    from shopee.kernel.bundle import sha256

    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, sha256(p)) for p in files}


def data_difference(expected: DataFingerprint, found: DataFingerprint) -> str:
    if found.train_sha256 != expected.train_sha256 or found.rows != expected.rows:
        return f"trained on another train.csv ({found.short()}; here {expected.short()})"
    if found.folds_sha256 != expected.folds_sha256 or found.n_folds != expected.n_folds:
        return f"trained on another fold split ({found.short()}; here {expected.short()})"
    return ""


def check_fold(
    source: Path,
    exp: str,
    fold: Fold,
    expected_config: Mapping[str, Any],
    expected_data: DataFingerprint,
    debug: bool,
    where: str,
    *,
    allow_code_change: bool = False,
    target: str = "",
) -> str:
    """Why the downloaded fold ``source`` must not be installed ("" when it may). The code check
    (``check_code``) names the fold by ``target``, where it would be installed."""
    from shopee.codedigest import CodeChanged, check_code
    from shopee.outputs import FoldRecord, is_finished

    leftovers = sorted(
        p.relative_to(source).as_posix() for pattern in LEFTOVERS for p in source.rglob(pattern)
    )
    if leftovers:
        return f"a half-written file in the download ({leftovers[0]})"
    if not is_finished(source):
        return "incomplete outputs in the download (no finished metrics.json or a file missing)"
    try:
        record = FoldRecord.open(source)
        if record.exp != exp or record.fold != fold:
            return f"its config.json says {record.exp} fold {record.fold}"
        if record.debug != debug:
            return f"a {'debug' if record.debug else 'full'} run, the run record says debug={debug}"
        difference = config_difference(expected_config, record.config.identity(), where="the download")
        if difference:
            return f"config differs from {where}: {difference}"
        check_code(record, allow_code_change, target or None)
        data = record.data
    except CodeChanged as exc:
        return exc.reason
    except ShopeeError as exc:
        return str(exc)
    return data_difference(expected_data, data)


def _missing_reason(root: Path, exp: str, fold: Fold, run: RunRecord) -> str:
    from shopee.outputs import partial_dir

    reason = run.unfinished.get(str(fold), "")
    if not reason:
        reason = "unfinished" if partial_dir(root, exp, fold).is_dir() else "not in the download"
    return reason


def install_fold(source: Path, target: Path, digests: Mapping[str, tuple[int, str]]) -> None:
    """Copy ``source`` beside ``target``, check the copy against ``digests``, rename it into place."""
    with atomic_dir(target, overwrite=True) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        if file_digests(tmp) != digests:
            raise ShopeeError(f"{source}: the copy into {target.parent} does not match the download")


def pull_fold(
    root: Path,
    output: Path,
    run: RunRecord,
    fold: Fold,
    expected_config: Mapping[str, Any],
    expected_data: DataFingerprint,
    where: str,
    overwrite: bool,
    allow_code_change: bool = False,
) -> FoldResult:
    from shopee.outputs import fold_dir

    source, target = fold_dir(root, run.exp, fold), fold_dir(output, run.exp, fold)
    if not source.is_dir():
        return FoldResult(fold, MISSING, _missing_reason(root, run.exp, fold, run))
    refusal = check_fold(
        source,
        run.exp,
        fold,
        expected_config,
        expected_data,
        run.debug,
        where,
        allow_code_change=allow_code_change,
        target=str(target),
    )
    if refusal:
        return FoldResult(fold, REFUSED, refusal)
    digests = file_digests(source)
    existed = target.exists()
    if existed:
        if target.is_dir() and file_digests(target) == digests:
            return FoldResult(fold, UNCHANGED, f"{target} already holds it")
        if not overwrite:
            return FoldResult(fold, KEPT, f"{target} differs from the download (--overwrite replaces it)")
    install_fold(source, target, digests)
    return FoldResult(fold, REPLACED if existed else INSTALLED, f"{target}{_cv_f1(target)}")


def _cv_f1(path: Path) -> str:
    try:
        summary = json.loads((path / "metrics.json").read_text())["summary"]
        return f" (CV F1 {float(summary['cv_f1']):.4f})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def pull(
    downloaded: Path,
    output: Path,
    data_dir: Path,
    exp_file_dir: Path = Path("exp"),
    overwrite: bool = False,
    allow_code_change: bool = False,
) -> dict[str, Any]:
    """Install the finished, verified folds of a training kernel's downloaded output
    (``allow_code_change``: also folds trained by other code than this checkout's).

    Returns ``{"exp", "output", "folds": {fold: {"state", "detail"}}, "installed", "replaced",
    "unchanged", "kept", "missing", "refused", "ignored", "overrides", "debug", "changed"}`` (fold
    lists; for ``missing`` and ``refused`` a reason per fold; ``ignored``: fold folders the run did
    not request); ``describe`` turns it into lines for people. Refused and kept folds are reported,
    not raised: the command turns them into its error line."""
    from shopee.folds import fingerprint_of_dir
    from shopee.runner import load_experiment
    from shopee.train import effective_config

    root = output_root(Path(downloaded))
    run = RunRecord.read(root / RUN_RECORD)
    exp_file = Path(exp_file_dir) / f"{run.exp}.py"
    name, cfg = load_experiment(str(exp_file), run.overrides)
    cfg = cfg.validate()
    expected_config = effective_config(cfg, run.debug).identity()
    expected_data = fingerprint_of_dir(data_dir, cfg.n_folds)
    where = f"{exp_file} with overrides {run.overrides}" if run.overrides else str(exp_file)
    results = [
        pull_fold(
            root, Path(output), run, fold, expected_config, expected_data, where, overwrite, allow_code_change
        )
        for fold in _in_order(run.folds)
    ]
    return summarize(name, Path(output), results, run, _not_requested(root, run))


def _in_order(folds: Sequence[Fold]) -> list[Fold]:
    """The folds by number, then the full-data run."""
    numbers = sorted({f for f in folds if f != FULL_FOLD})
    return [*numbers, *([FULL_FOLD] if FULL_FOLD in folds else [])]


def _not_requested(root: Path, run: RunRecord) -> list[str]:
    """Fold folders in the download the run did not ask for (a previous version's, restored)."""
    from shopee.outputs import fold_name

    exp_dir = root / run.exp
    if not exp_dir.is_dir():
        return []
    asked = {fold_name(f) for f in run.folds}
    found = [*exp_dir.glob("fold*"), *exp_dir.glob(f"{FULL_FOLD}*")]
    return sorted(p.name for p in found if p.is_dir() and p.name.split(".")[0] not in asked)


def summarize(
    exp: str, output: Path, results: Sequence[FoldResult], run: RunRecord, ignored: Sequence[str] = ()
) -> dict[str, Any]:
    by_state: dict[str, list[FoldResult]] = {}
    for result in results:
        by_state.setdefault(result.state, []).append(result)

    def folds(state: str) -> list[Fold]:
        return [r.fold for r in by_state.get(state, [])]

    def reasons(state: str) -> dict[str, str]:
        return {str(r.fold): r.detail for r in by_state.get(state, [])}

    return {
        "exp": exp,
        "output": str(output / exp),
        "folds": {str(r.fold): {"state": r.state, "detail": r.detail} for r in results},
        "installed": folds(INSTALLED),
        "replaced": folds(REPLACED),
        "unchanged": folds(UNCHANGED),
        "kept": folds(KEPT),
        "missing": reasons(MISSING),
        "refused": reasons(REFUSED),
        "ignored": list(ignored),
        "overrides": run.overrides,
        "debug": run.debug,
        "changed": bool(folds(INSTALLED) or folds(REPLACED)),
    }


def describe(summary: Mapping[str, Any]) -> list[str]:
    """One line per requested fold, then what it adds up to."""
    exp = summary["exp"]
    lines = [
        FoldResult(_fold(fold), info["state"], info["detail"]).line(exp)
        for fold, info in summary["folds"].items()
    ]
    if summary["ignored"]:
        lines.append(f"{exp}: not requested by this run, left out: {', '.join(summary['ignored'])}")
    if not summary["changed"]:
        lines.append(f"nothing changed in {summary['output']}")
    return lines
