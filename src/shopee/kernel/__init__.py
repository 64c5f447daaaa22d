"""The offline Kaggle submission: a notebook folder and its dataset folder, and a local runner.

``build_kernel`` writes both folders from a tuned ensemble; ``run_kernel`` executes the notebook
here the way Kaggle would; ``open_bundle`` is what the notebook uses to read its dataset. The
builder and the runner (nbformat, nbclient) load on first use: the notebook imports only the
bundle reader, on whatever the Kaggle image has.
"""

from __future__ import annotations

from typing import Any

from shopee.kernel.bundle import Bundle, open_bundle

__all__ = ["Bundle", "Kernel", "build_kernel", "open_bundle", "run_kernel"]


def __getattr__(name: str) -> Any:
    if name in ("Kernel", "build_kernel"):
        from shopee.kernel import build

        return getattr(build, name)
    if name == "run_kernel":
        from shopee.kernel.local import run_kernel

        return run_kernel
    raise AttributeError(f"module 'shopee.kernel' has no attribute {name!r}")
