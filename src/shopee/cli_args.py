"""Arguments several commands share (the main command line and the benchmarks')."""

from __future__ import annotations

import argparse

from shopee.constants import BLEND_CANDIDATES

DATA_HELP = "competition directory or a Kaggle input root holding it [$SHOPEE_DATA, then /kaggle/input]"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def add_backend(parser: argparse.ArgumentParser, default: str = "torch") -> None:
    parser.add_argument(
        "--backend",
        choices=("torch", "faiss", "cuml", "auto"),
        default=default,
        help="kNN backend (auto: cuml on CUDA, else faiss when installed, else torch) [%(default)s]",
    )


def add_exact_blending(parser: argparse.ArgumentParser, when: str = "") -> None:
    """``--exact-blending``: the search's blended spaces over every row (params without
    ``blend_candidates``), not among each row's nearest in the plain space."""
    parser.add_argument(
        "--exact-blending",
        action="store_true",
        help=f"{when}search a blended space over every row, not among each row's {BLEND_CANDIDATES} nearest "
        "in the plain space (slower; the rule then does the same in predict)",
    )


def add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")


def add_tta(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tta",
        choices=("none", "flip"),
        default="none",
        type=str.lower,
        help="test-time augmentation: flip also embeds mirrored images and averages [%(default)s]",
    )


def add_models(parser: argparse.ArgumentParser) -> None:
    from shopee.constants import MODEL_CHOICES

    parser.add_argument(
        "--models",
        choices=MODEL_CHOICES,
        default="folds",
        help="embed with the ensemble's fold models, or with each experiment's full-data model "
        "(python exp/EXP.py --fold full; the thresholds are the folds' carried over) [%(default)s]",
    )


def add_allow_code_change(parser: argparse.ArgumentParser) -> None:
    """``--allow-code-change``, defined once: ``kaggle pull``, ``optimize-ensemble`` and (through
    ``add_kernel_options``) ``build-kernel`` and ``kaggle submit`` refuse folds trained by other
    embedding-shaping code than this checkout's without it (``shopee.codedigest``)."""
    from shopee.codedigest import ALLOW_FLAG

    parser.add_argument(
        ALLOW_FLAG,
        action="store_true",
        help="use folds trained by other embedding-shaping code than this checkout's (models/, dataset.py, "
        "data.py, embed.py, pretrained.py); the ensemble file and the kernel's manifest record which",
    )


def add_kernel_options(parser: argparse.ArgumentParser) -> None:
    """What ``build_kernel`` is told besides the ensemble and the slug: one definition, so that
    ``build-kernel`` and ``kaggle submit`` accept the same options (``kernel_options`` reads them)."""
    from shopee.constants import PREDICT_IMAGE_POLICIES
    from shopee.outputs import WEIGHT_FORMATS

    parser.add_argument("--user", default=None, help="Kaggle user [$KAGGLE_USERNAME, kaggle.json]")
    parser.add_argument("--title", default=None, help="notebook title; must read as the slug [from --name]")
    parser.add_argument("--out", default="kernels", help="where the two folders go [%(default)s]")
    parser.add_argument(
        "--output", default=None, help="experiments' output root [the folder above ensembles/]"
    )
    parser.add_argument(
        "--accelerator",
        default="NvidiaTeslaT4",
        metavar="{NvidiaTeslaT4,NvidiaL4,none}",
        help="Kaggle machine_shape: NvidiaTeslaT4 is GPU T4 x2; none runs on CPU; the P100 is refused "
        "(Kaggle's 2026 torch has no kernels for it) [%(default)s]",
    )
    parser.add_argument("--public", action="store_true", help="make the notebook public [private]")
    add_tta(parser)
    parser.add_argument(
        "--image-policy",
        choices=PREDICT_IMAGE_POLICIES,
        default="blank",
        help="a test image that will not open [%(default)s: the submission stays complete]",
    )
    parser.add_argument(
        "--cv-rows", type=positive_int, default=None, help="train rows scored in CV mode [all of train]"
    )
    parser.add_argument(
        "--wheel", action="append", default=[], metavar="FILE", help="a wheel to install offline (repeatable)"
    )
    parser.add_argument(
        "--weights",
        choices=WEIGHT_FORMATS,
        default="fp16",
        help="fold weights in the bundle, inference only (no margin head): fp16 halves them [%(default)s]",
    )
    add_models(parser)
    parser.add_argument(
        "--allow-over-time",
        action="store_true",
        help="build even when the estimated runtime on 70,000 rows (T4 x2) exceeds Kaggle's 2 hours",
    )
    add_allow_code_change(parser)
    parser.add_argument("--strict", action="store_true", help="refuse to build from uncommitted changes")
    parser.add_argument("--overwrite", action="store_true", help="replace folders holding another kernel")
    add_backend(parser)


def kernel_options(args: argparse.Namespace) -> dict:
    """``build_kernel``'s keyword arguments from the options ``add_kernel_options`` defined."""
    from pathlib import Path

    return {
        "user": args.user,
        "out": Path(args.out),
        "output": Path(args.output) if args.output else None,
        "title": args.title,
        "accelerator": args.accelerator,
        "private": not args.public,
        "tta": None if args.tta == "none" else args.tta,
        "image_policy": args.image_policy,
        "backend": args.backend,
        "cv_rows": args.cv_rows,
        "wheels": [Path(w) for w in args.wheel],
        "strict": args.strict,
        "overwrite": args.overwrite,
        "weights": args.weights,
        "models": args.models,
        "allow_over_time": args.allow_over_time,
        "allow_code_change": args.allow_code_change,
    }
