"""Training, matching and submission pipeline for Kaggle product-matching competitions.

Experiment files use ``from shopee import Config, run``.
"""

from shopee.config import Config
from shopee.runner import run

__version__ = "0.1.0"
__all__ = ["Config", "run"]
