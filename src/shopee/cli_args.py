"""Arguments several commands share (the main command line and the benchmarks')."""

from __future__ import annotations

import argparse

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


def add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
