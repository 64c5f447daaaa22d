"""Training, matching and submission pipeline for Kaggle product-matching competitions."""

__version__ = "0.1.0"
