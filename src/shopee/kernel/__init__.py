"""The offline Kaggle submission: a notebook folder and its dataset folder, and a local runner.

``build_kernel`` writes both folders from a tuned ensemble; ``run_kernel`` executes the notebook
here the way Kaggle would; ``open_bundle`` is what the notebook uses to read its dataset.
"""

from shopee.kernel.build import Kernel, build_kernel
from shopee.kernel.bundle import Bundle, open_bundle
from shopee.kernel.local import run_kernel

__all__ = ["Bundle", "Kernel", "build_kernel", "open_bundle", "run_kernel"]
