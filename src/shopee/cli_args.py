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
