"""Kaggle's metadata files for a kernel and its dataset, and the naming rules they must obey.

Kaggle derives a notebook's URL slug from its title (lower case, every run of other characters
turned into one hyphen); ``kaggle kernels push`` warns when the title does not resolve to the
``id`` it is given, so the default title is made from the slug. Limits: a kernel title of at least
5 characters, a dataset title of 6 to 50, slugs of 3 to 50 lower-case letters, digits and hyphens.

The accelerator is ``machine_shape``: without it a GPU kernel gets a P100, on which Kaggle's 2026
image (torch 2.10, CUDA 12.8, no sm_60 kernels) says CUDA is available and then fails at the first
CUDA operation. ``NvidiaTeslaT4`` is "GPU T4 x2", Kaggle's default GPU.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from shopee.constants import COMPETITION
from shopee.errors import ShopeeError

DATASET_SUFFIX = "-dataset"
ACCELERATORS = {  # --accelerator -> what it is
    "NvidiaTeslaT4": "GPU T4 x2 (two 16 GB T4s, sm_75: fp16 tensor cores, no bf16)",
    "NvidiaL4": "GPU L4 (24 GB, sm_89: bf16)",
    "none": "CPU only",
}
RETIRED_ACCELERATORS = {
    "NvidiaTeslaP100": "Kaggle's 2026 image (torch 2.10, CUDA 12.8) has no kernels for the P100 (sm_60): "
    "CUDA reports itself available and the first GPU operation fails; use NvidiaTeslaT4",
}


def check_accelerator(accelerator: str) -> str:
    if accelerator in RETIRED_ACCELERATORS:
        raise ShopeeError(f"--accelerator {accelerator}: {RETIRED_ACCELERATORS[accelerator]}")
    if accelerator not in ACCELERATORS:
        raise ShopeeError(f"--accelerator {accelerator}: use one of {', '.join(ACCELERATORS)}")
    return accelerator


_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def kaggle_slug(title: str) -> str:
    """The slug Kaggle makes of a title."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def check_slug(slug: str, what: str = "--name") -> str:
    if not 3 <= len(slug) <= 50 or not _SLUG.fullmatch(slug):
        raise ShopeeError(
            f"{what} {slug!r}: a Kaggle slug is 3 to 50 lower-case letters, digits and single hyphens"
            f" (got {len(slug)} characters)"
        )
    return slug


def check_title(title: str, low: int, high: int | None, what: str) -> str:
    n = len(title.strip())
    if n < low or (high is not None and n > high):
        limits = f"{low} to {high}" if high is not None else f"at least {low}"
        raise ShopeeError(f"{what} {title!r}: Kaggle wants {limits} characters (got {n})")
    return title.strip()


def default_title(slug: str) -> str:
    """``shopee-v1`` -> ``Shopee V1`` (which Kaggle turns back into ``shopee-v1``)."""
    return " ".join(word.capitalize() for word in slug.split("-"))


def kernel_title(slug: str, title: str | None) -> str:
    title = check_title(title if title is not None else default_title(slug), 5, 50, "kernel title")
    if kaggle_slug(title) != slug:
        raise ShopeeError(
            f"kernel title {title!r}: Kaggle would make it the slug {kaggle_slug(title)!r}, not {slug!r}; "
            f"choose a title that reads as the slug (e.g. {default_title(slug)!r})"
        )
    return title


def dataset_title(title: str) -> str:
    """The kernel title + `` Dataset`` when that fits in 50 characters, else the kernel title."""
    longer = f"{title} Dataset"
    return check_title(longer if len(longer) <= 50 else title, 6, 50, "dataset title")


def kaggle_user(user: str | None) -> str:
    """``--user``, else ``$KAGGLE_USERNAME``, else the username in the Kaggle API's kaggle.json."""
    if not user:
        user = os.environ.get("KAGGLE_USERNAME", "")
    if not user:
        config = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")) / "kaggle.json"
        try:
            user = str(json.loads(config.read_text()).get("username", ""))
        except (OSError, ValueError, AttributeError):
            user = ""
    if not user:
        raise ShopeeError("no Kaggle user name: pass --user NAME (or set KAGGLE_USERNAME)")
    if not _USER.fullmatch(user):
        raise ShopeeError(f"--user {user!r}: not a Kaggle user name (letters, digits, '-' and '_')")
    return user


def dataset_upload_command(folder: str | Path) -> str:
    """The Kaggle CLI command that uploads a dataset folder: ``--dir-mode zip``, or the CLI skips
    its subfolders (the package, the models)."""
    return f"kaggle datasets create -p {folder} --dir-mode zip"


def kernel_push_command(folder: str | Path) -> str:
    return f"kaggle kernels push -p {folder}"


def dataset_metadata(user: str, slug: str, title: str) -> dict[str, Any]:
    dataset_id = f"{user}/{check_slug(slug + DATASET_SUFFIX, 'dataset slug (--name + -dataset)')}"
    return {
        "title": dataset_title(title),
        "id": dataset_id,
        "licenses": [{"name": "CC0-1.0"}],
    }


def kernel_metadata(
    user: str, slug: str, title: str, *, accelerator: str = "NvidiaTeslaT4", private: bool = True
) -> dict[str, Any]:
    gpu = check_accelerator(accelerator) != "none"
    meta = {
        "id": f"{user}/{check_slug(slug)}",
        "title": kernel_title(slug, title),
        "code_file": f"{slug}.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": private,
        "enable_gpu": gpu,
        "enable_tpu": False,
        "enable_internet": False,  # the Kaggle CLI's own default is true; a submission must be offline
        "dataset_sources": [f"{user}/{slug}{DATASET_SUFFIX}"],
        "competition_sources": [COMPETITION],
        "kernel_sources": [],
        "model_sources": [],
    }
    if gpu:
        meta["machine_shape"] = accelerator  # without it Kaggle hands out a P100
    return meta
