"""The command line of an experiment file: ``python exp/exp001.py --fold 0 --data DIR``.

An experiment file is a ``Config`` and a call::

    CFG = Config(...)
    if __name__ == "__main__":
        run(CFG, __file__)

The experiment's name is the file's stem. The last line printed is one JSON object:
``{"exp", "fold", "cv_f1", "kind", "threshold", "seconds"}`` (for ``--fold all``: the mean CV F1
over the folds, with ``"fold": "all"`` and each fold's line before it; for ``--fold full``:
``cv_f1`` null and the epochs trained).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from shopee.config import Config, check_fold
from shopee.constants import FULL_FOLD
from shopee.errors import ShopeeError, exit_code


def build_parser(exp: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python exp/{exp}.py", description=f"Train experiment {exp}.")
    parser.add_argument(
        "--fold",
        required=True,
        help="fold number, 'all' (every fold), or 'full' (every train row, no validation: a model a "
        "kernel can ship instead of the fold models)",
    )
    parser.add_argument(
        "--data",
        default=None,
        help="competition directory or Kaggle input root [$SHOPEE_DATA, then /kaggle/input]",
    )
    parser.add_argument("--output", default="output", help="output root [%(default)s]")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="smoke run: a few batches per stage, tiny images, one epoch per stage",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted fold from its last epoch"
    )
    parser.add_argument("--overwrite", action="store_true", help="train a finished fold again")
    parser.add_argument(
        "--slim-weights",
        action="store_true",
        help="a finished fold keeps float16 inference weights without its margin heads (what a "
        "kernel ships; a third of the disk)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (repeatable), e.g. --set epochs=3",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--zero-shot",
        action="store_true",
        help="train nothing: score the pretrained encoders on the fold (with --fold all: "
        "on the whole train split at once)",
    )
    return parser


def _folds(spec: str, n_folds: int) -> list[int | str]:
    if spec == "all":
        return list(range(n_folds))
    if spec == FULL_FOLD:
        return [FULL_FOLD]
    try:
        fold = int(spec)
    except ValueError:
        raise ShopeeError(f"--fold {spec!r}: expected a fold number, 'all' or '{FULL_FOLD}'") from None
    return [check_fold(fold, n_folds)]


def run(cfg: Config, exp_file: str, argv: Sequence[str] | None = None) -> int:
    """Parse the command line, train the requested folds, print one JSON line per fold."""
    exp = Path(exp_file).stem
    args = build_parser(exp).parse_args(argv)
    return exit_code(lambda: _run(cfg, exp, exp_file, args), "interrupted (continue with --resume)")


def _run(cfg: Config, exp: str, exp_file: str, args: argparse.Namespace) -> None:
    from shopee.data import find_data_dir
    from shopee.train import zero_shot

    cfg = cfg.with_overrides(args.set) if args.set else cfg.validate()
    if args.print_config:
        print(cfg.to_json())
        return
    folds = _folds(args.fold, cfg.n_folds)
    data_dir = find_data_dir(args.data)
    if args.zero_shot:
        if args.fold == FULL_FOLD:
            raise ShopeeError(f"--zero-shot scores a fold or the whole split ('all'), not '{FULL_FOLD}'")
        fold = None if args.fold == "all" else folds[0]
        print(json.dumps(zero_shot(cfg, exp, fold, data_dir, debug=args.debug)), flush=True)
        return
    results = []
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun, one result line, from rank 0
    for fold in folds:
        result = _train_one(cfg, exp, exp_file, fold, data_dir, args)
        results.append(result)
        if main:
            print(json.dumps(result), flush=True)
    if len(folds) > 1 and main:
        kinds = [r["kind"] for r in results]
        summary = {
            "exp": exp,
            "fold": "all",
            "cv_f1": sum(r["cv_f1"] for r in results) / len(results),
            "kind": max(set(kinds), key=kinds.count),
            "threshold": sum(r["threshold"] for r in results) / len(results),
            "seconds": round(sum(r["seconds"] for r in results), 1),
        }
        print(json.dumps(summary), flush=True)


def _train_one(
    cfg: Config, exp: str, exp_file: str, fold: int | str, data_dir: Path, args: argparse.Namespace
) -> dict:
    """One fold; a distributed run whose other process died ends in one error line."""
    import torch.distributed

    from shopee.outputs import partial_dir
    from shopee.tracking import end_active
    from shopee.train import train_fold

    try:
        return train_fold(
            cfg,
            exp,
            fold,
            data_dir,
            Path(args.output),
            debug=args.debug,
            resume=args.resume,
            overwrite=args.overwrite,
            slim_weights=args.slim_weights,
            code_dir=Path(exp_file).resolve().parent,
        )
    except BaseException as exc:
        end_active(failed=True)  # an MLflow run left open is marked failed
        if not isinstance(exc, RuntimeError):  # torch.distributed.DistError is one too
            raise
        if not torch.distributed.is_initialized() or not _peer_failure(exc):
            raise
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun's stop signal: the line below says it all
        rank = torch.distributed.get_rank()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ShopeeError(
            f"rank {rank}: another process of this distributed run stopped ({first[:160]}); fold {fold} "
            f"stays unfinished in {partial_dir(args.output, exp, fold)} (continue with --resume)"
        ) from None


PEER_FAILURE_WORDS = ("gloo", "nccl", "connection", "c10d", "processgroup", "timed out", "timeout")


def _peer_failure(exc: RuntimeError) -> bool:
    """Whether a collective failed because another process is gone (gloo and NCCL raise plain
    RuntimeErrors that say so)."""
    import torch.distributed

    text = str(exc).lower()
    return isinstance(exc, torch.distributed.DistError) or any(word in text for word in PEER_FAILURE_WORDS)


def load_experiment(spec: str, overrides: Sequence[str] = ()) -> tuple[str, Config]:
    """An experiment's name and ``CFG`` from ``exp001``, ``exp/exp001.py`` or any path to one,
    with the ``--set key=value`` ``overrides`` applied."""
    import importlib.util

    path = Path(spec)
    if not path.suffix:
        path = Path("exp") / f"{spec}.py"
    if not path.is_file():
        raise ShopeeError(f"{path}: no such experiment file")
    module_spec = importlib.util.spec_from_file_location(f"_shopee_exp_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - an experiment file is user code
        raise ShopeeError(f"{path}: failed to load ({type(exc).__name__}: {exc})") from None
    cfg = getattr(module, "CFG", None)
    if not isinstance(cfg, Config):
        raise ShopeeError(f"{path}: defines no CFG = Config(...)")
    return path.stem, cfg.with_overrides(overrides) if overrides else cfg
